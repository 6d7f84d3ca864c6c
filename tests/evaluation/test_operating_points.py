"""Operating points: the one-pass counts against the per-threshold accumulator, criteria on hand-built sets."""

from __future__ import annotations

import pytest
import torch

from unetlab.errors import UnetlabError
from unetlab.evaluation.operating_points import (OperatingPointSearch, grid_thresholds, parse_criteria,
                                                 parse_criterion, rule_counts, threshold_counts, with_min_area)
from unetlab.metrics import BinarySegmentationMetrics, set_scores


def _random_set(seed: int, n: int = 6, size: int = 17, ignored: bool = True):
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(n, size, size, generator=g) < 0.3
    truth[0] = False  # an empty image
    probs = (0.5 * truth.float() + 0.6 * torch.rand(n, size, size, generator=g)).clamp(0, 1)
    # probabilities exactly on grid thresholds: "p > t" must leave them out at t itself
    probs[1, :4] = torch.tensor(grid_thresholds()[[99, 499, 749, 998]], dtype=torch.float32)[:, None]
    probs[2] = torch.where(torch.rand(size, size, generator=g) < 0.5, probs[2], 0.0)
    valid = torch.rand(n, size, size, generator=g) > 0.2 if ignored else None
    return probs, truth, valid


def _reference(probs, truth, valid, threshold: float, min_area: int = 0, min_component: int = 0):
    metrics = BinarySegmentationMetrics(threshold, min_area, min_component)
    metrics.update(probs, truth, valid=valid)
    return metrics


@pytest.mark.parametrize("ignored", [False, True])
def test_histogram_counts_are_exact_at_every_threshold_and_min_area(ignored):
    probs, truth, valid = _random_set(0, ignored=ignored)
    counts = threshold_counts(probs, truth, valid)  # (999, N, 5), one pass
    thresholds = grid_thresholds()
    assert counts.shape == (999, 6, 5)
    for k in [0, 1, 99, 100, 250, 499, 500, 749, 750, 997, 998]:
        for area in (0, 7, 40):
            reference = _reference(probs, truth, valid, float(thresholds[k]), area)
            assert torch.equal(with_min_area(counts[k], area), reference.state()), (k, area)
            ours = {key: float(v) for key, v in set_scores(with_min_area(counts[k], area)).items()}
            assert ours == reference.compute()


def test_component_counts_are_exact_and_the_same_through_the_search():
    probs, truth, valid = _random_set(1)
    thresholds, components = [0.3, 0.55, 0.8], [0, 2, 3, 6]
    counts = rule_counts(probs, truth, valid, thresholds, components)
    search = OperatingPointSearch(probs, truth, valid)
    for i, threshold in enumerate(thresholds):
        for j, smallest in enumerate(components):
            for area in (0, 9):
                reference = _reference(probs, truth, valid, threshold, area, smallest).state()
                assert torch.equal(with_min_area(counts[i, j], area), reference), (threshold, smallest, area)
        assert torch.equal(search.counts_at([threshold], 3)[0], counts[i, 2])
    assert torch.equal(search.counts_at([0.3])[0], counts[0, 0])  # histograms and labelling agree


def test_set_scores_is_the_accumulators_compute_over_many_thresholds():
    probs, truth, valid = _random_set(2)
    search = OperatingPointSearch(probs, truth, valid)
    curve = search.curve(min_area=5)
    for k in (10, 400, 900):
        reference = _reference(probs, truth, valid, float(curve["threshold"][k]), 5).compute()
        for key, value in reference.items():
            assert curve[key][k] == value, key


@pytest.mark.parametrize("text, canonical", [
    ("max-f1", "max-f1"), ("MAX-TGS", "max-tgs"), ("max-iou", "max-iou"), ("max-fbeta:2", "max-fbeta:2"),
    ("precision @ recall >= 0.90", "precision@recall>=0.9"), ("recall@precision>=1", "recall@precision>=1")])
def test_criteria_parse(text, canonical):
    assert parse_criterion(text).text == canonical


@pytest.mark.parametrize("text, message", [
    ("precision@recall>=1.5", "precision@recall>=1.5: R must lie in (0, 1]"),
    ("recall@precision>=0", "P must lie in (0, 1]"),
    ("precision@recall>=abc", "R must lie in (0, 1]"),
    ("max-fbeta:-1", "B must lie in (0, inf)"),
    ("max-fbeta:nan", "B must lie in"),
    ("precision@precision>=0.5", "unknown criterion"),
    ("best", "unknown criterion; use max-f1, max-iou, max-tgs, max-fbeta:B"),
])
def test_bad_criteria_are_one_line_errors(text, message):
    with pytest.raises(UnetlabError, match="^--choose ") as caught:
        parse_criterion(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _interleaved():
    """One 5x9 image, 8 isolated pixels (never 8-connected): salt at 0.9, 0.7, 0.5, 0.3 and background at 0.8,
    0.6, 0.4, 0.2; every other pixel background at 0. By hand, per threshold range:
    [.8,.9) tp1 fp0 | [.7,.8) tp1 fp1 | [.6,.7) tp2 fp1 | [.5,.6) tp2 fp2 | [.4,.5) tp3 fp2 | [.3,.4) tp3 fp3 |
    [.2,.3) tp4 fp3 | below .2 tp4 fp4."""
    probs = torch.zeros(1, 5, 9)
    truth = torch.zeros(1, 5, 9, dtype=torch.bool)
    spots = [(1, 1), (1, 3), (1, 5), (1, 7), (3, 1), (3, 3), (3, 5), (3, 7)]
    for (y, x), p, salt in zip(spots, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [1, 0] * 4):
        probs[0, y, x], truth[0, y, x] = p, bool(salt)
    return probs, truth


def _choose(probs, truth, *criteria, valid=None):
    return OperatingPointSearch(probs, truth, valid).choose(parse_criteria(criteria))


def test_criteria_on_a_hand_built_trade_off():
    f1, f2, constrained_p, constrained_r, iou = _choose(*_interleaved(), "max-f1", "max-fbeta:2",
                                                        "precision@recall>=0.5", "recall@precision>=0.6", "max-iou")
    # F1 = 2tp / (2tp + fn + fp) is largest, 8/11, for [.2, .3); ties go to the lowest threshold
    assert (f1.threshold, f1.min_area, f1.min_component) == (0.2, 0, 0)
    assert f1.metrics["dice"] == pytest.approx(8 / 11) and iou.threshold == 0.2
    # F2 = 5tp / (5tp + 4fn + fp): 20/23 at [.2, .3)
    assert f2.threshold == 0.2 and f2.metrics["fbeta"] == pytest.approx(20 / 23)
    # recall >= 0.5 needs tp >= 2: best precision 2/3 on [.6, .7)
    assert constrained_p.threshold == 0.6
    assert (constrained_p.metrics["precision"], constrained_p.metrics["recall"]) == pytest.approx((2 / 3, 0.5))
    # precision >= 0.6 (3/5 counts: the bound is inclusive): best recall 3/4 on [.4, .5)
    assert constrained_r.threshold == 0.4
    assert (constrained_r.metrics["precision"], constrained_r.metrics["recall"]) == pytest.approx((0.6, 0.75))


def test_an_unreachable_constraint_says_so():
    probs, truth = _interleaved()
    probs[0, 1, 1] = 0.0005  # a salt pixel below every threshold: recall 1 is out of reach
    point, fine = _choose(probs, truth, "precision@recall>=1", "max-f1")
    assert point.threshold is None and point.metrics == {}
    assert "reaches recall >= 1" in point.unreachable and "highest recall is 0.7500" in point.unreachable
    assert fine.unreachable is None and fine.threshold is not None


def test_speckle_is_removed_by_the_smallest_component_rule():
    """A 4x4 salt body at 0.8 and single-pixel speckle at 0.9: no threshold separates them, components do."""
    probs = torch.full((1, 12, 12), 0.1)
    truth = torch.zeros(1, 12, 12, dtype=torch.bool)
    truth[0, 2:6, 2:6], probs[0, 2:6, 2:6] = True, 0.8
    for y, x in [(9, 9), (9, 1), (1, 10)]:
        probs[0, y, x] = 0.9
    point = _choose(probs, truth, "max-f1")[0]
    assert (point.threshold, point.min_component, point.min_area) == (0.1, 5, 0)  # the smallest K that works
    assert point.metrics["dice"] == 1.0
    reference = _reference(probs, truth, None, point.threshold, point.min_area, point.min_component).compute()
    assert reference["dice"] == 1.0


def test_stray_pixels_on_an_empty_image_are_emptied_by_min_area():
    probs = torch.full((2, 10, 10), 0.05)
    truth = torch.zeros(2, 10, 10, dtype=torch.bool)
    truth[0, 2:8, 2:8], probs[0, 2:8, 2:8] = True, 0.8
    probs[1, 4, 4:6] = 0.9  # two stray pixels, touching: one component of 2, on the image with no salt
    point = _choose(probs, truth, "max-tgs")[0]
    # min_area 5 beats any component rule in the tie order (component rule first, then area, then threshold)
    assert (point.threshold, point.min_area, point.min_component) == (0.05, 5, 0)
    assert point.metrics["tgs_map"] == 1.0


def test_an_all_empty_set_chooses_the_lowest_threshold_that_predicts_nothing():
    g = torch.Generator().manual_seed(3)
    probs = 0.4 * torch.rand(3, 8, 8, generator=g)
    truth = torch.zeros(3, 8, 8, dtype=torch.bool)
    point = _choose(probs, truth, "max-tgs")[0]
    assert point.metrics["tgs_map"] == 1.0 and point.metrics["precision"] == 1.0
    assert point.min_area == 0 and point.min_component == 0
    assert not bool((probs > point.threshold).any()) and bool((probs > point.threshold - 0.001).any())


def test_ignored_pixels_count_only_for_min_area():
    """An ignored bright pixel is no false positive, but it counts towards the image's predicted area."""
    probs = torch.zeros(1, 6, 6)
    truth = torch.zeros(1, 6, 6, dtype=torch.bool)
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    truth[0, 0, :4], probs[0, 0, :4] = True, 0.9  # 4 salt pixels
    probs[0, 5, :2], valid[0, 5, :2] = 0.9, False  # 2 ignored predicted pixels
    counts = threshold_counts(probs, truth, valid)[499, 0].tolist()
    assert counts == [4, 0, 0, 36 - 6, 6]  # tp fp fn tn predicted
    assert with_min_area(threshold_counts(probs, truth, valid)[499:500], 6)[0, 0].tolist() == [4, 0, 0, 30]
    assert with_min_area(threshold_counts(probs, truth, valid)[499:500], 7)[0, 0].tolist() == [0, 0, 4, 30]
    point = _choose(probs, truth, "max-f1", valid=valid)[0]
    assert point.metrics["precision"] == 1.0 and point.metrics["recall"] == 1.0


def test_max_tgs_ties_go_to_the_better_f1():
    """TGS is 1 at every threshold below 0.8 (IoU 100/105 is above 0.95), F1 is 1 only from 0.6 on."""
    probs = torch.zeros(1, 16, 16)
    truth = torch.zeros(1, 16, 16, dtype=torch.bool)
    truth[0, 2:12, 2:12], probs[0, 2:12, 2:12] = True, 0.8
    probs[0, 12, 2:7] = 0.6  # five background pixels along the body's edge
    point = _choose(probs, truth, "max-tgs")[0]
    assert point.threshold == 0.6 and point.metrics["tgs_map"] == 1.0 and point.metrics["dice"] == 1.0
