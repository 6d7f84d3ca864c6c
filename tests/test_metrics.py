"""Tests for unetlab.metrics: hand-computed TGS cases, sklearn agreement, streaming, sweeps."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm

from unetlab.metrics import (
    TGS_IOU_THRESHOLDS,
    BinarySegmentationMetrics,
    binary_counts,
    drop_small_predictions,
    image_iou,
    micro_scores,
    scores_over_thresholds,
    tgs_image_scores,
)

MICRO_KEYS = ("pixel_accuracy", "iou", "dice", "precision", "recall")
ALL_KEYS = set(MICRO_KEYS) | {"tgs_map", "mean_image_iou"}
PCTS = [50 + 5 * i for i in range(10)]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- helpers


def make_pair(tp: int, fp: int, fn: int, tn: int, *, h: int | None = None, seed: int = 0):
    """One image (1, H, W) with exactly these counts, pixels in random positions."""
    n = tp + fp + fn + tn
    if h is None:
        h = 1
    assert n % h == 0
    w = n // h
    pred = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn, dtype=bool)
    true = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn, dtype=bool)
    perm = np.random.default_rng(seed).permutation(n)
    return (
        torch.from_numpy(pred[perm].reshape(1, h, w)),
        torch.from_numpy(true[perm].reshape(1, h, w)),
    )


def tgs_reference(tp: int, fp: int, fn: int) -> Fraction:
    """Kaggle TGS score with exact fractions, written independently of the module."""
    if tp + fn == 0:  # empty truth
        return Fraction(1) if fp == 0 else Fraction(0)
    if tp + fp == 0:  # empty prediction, salt in truth
        return Fraction(0)
    iou = Fraction(tp, tp + fp + fn)
    return Fraction(sum(iou > Fraction(k, 100) for k in PCTS), 10)


def sk_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Micro pixel metrics via sklearn, with the module's documented 0/0 conventions."""
    y_p = pred.reshape(-1).astype(int)
    y_t = true.reshape(-1).astype(int)
    no_truth = y_t.sum() == 0
    kw = dict(labels=[0, 1], pos_label=1, average="binary")
    return {
        "pixel_accuracy": skm.accuracy_score(y_t, y_p),
        "precision": skm.precision_score(y_t, y_p, zero_division=1.0 if no_truth else 0.0, **kw),
        "recall": skm.recall_score(y_t, y_p, zero_division=1.0, **kw),
        "dice": skm.f1_score(y_t, y_p, zero_division=1.0, **kw),
        "iou": skm.jaccard_score(y_t, y_p, zero_division=1.0, **kw),
    }


def run_metrics(pred, true, **kw) -> dict[str, float]:
    m = BinarySegmentationMetrics()
    m.update(pred, true, **kw)
    return m.compute()


# --------------------------------------------------------------------------- constants / counts


def test_tgs_thresholds_exact():
    assert len(TGS_IOU_THRESHOLDS) == 10
    assert TGS_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_binary_counts_hand():
    pred = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    true = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 1]]], dtype=torch.bool)
    c = binary_counts(pred, true)
    assert c.dtype == torch.int64
    assert c.tolist() == [[1, 1, 1, 1], [0, 0, 1, 3]]


def test_binary_counts_shapes_and_dtypes():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(3, 5, 7, generator=g) > 0.5
    true = torch.rand(3, 5, 7, generator=g) > 0.4
    ref = binary_counts(pred, true)
    assert ref.shape == (3, 4)
    assert (ref.sum(1) == 35).all()
    assert torch.equal(binary_counts(pred[:, None], true[:, None]), ref)
    assert torch.equal(binary_counts(pred[:, None], true), ref)
    assert torch.equal(binary_counts(pred.to(torch.uint8), true.float()), ref)  # 0/1 masks
    assert torch.equal(binary_counts(pred.long() * 255, true.int()), ref)  # non-zero = salt


@pytest.mark.parametrize(
    "pred_shape,true_shape",
    [((2, 4, 4), (2, 4, 5)), ((2, 2, 4, 4), (2, 2, 4, 4)), ((4, 4), (4, 4)), ((2, 0, 4), (2, 0, 4))],
)
def test_binary_counts_rejects_bad_shapes(pred_shape, true_shape):
    with pytest.raises(ValueError):
        binary_counts(torch.zeros(pred_shape, dtype=torch.bool), torch.zeros(true_shape, dtype=torch.bool))


# --------------------------------------------------------------------------- TGS metric by hand


@pytest.mark.parametrize(
    "tp,fp,fn,expected",
    [
        (0, 0, 0, 1.0),  # empty truth, empty prediction
        (0, 5, 0, 0.0),  # empty truth, salt predicted
        (0, 1, 0, 0.0),  # ... even a single pixel
        (0, 0, 5, 0.0),  # salt in truth, nothing predicted
        (7, 0, 0, 1.0),  # perfect
        (5, 3, 2, 0.0),  # IoU exactly 0.5 -> not above 0.5
        (1, 1, 0, 0.0),  # IoU 1/2
        (51, 30, 19, 0.1),  # IoU 0.51 -> above 0.50 only
        (96, 2, 2, 1.0),  # IoU 0.96 -> above all 10
        (95, 3, 2, 0.9),  # IoU exactly 0.95 -> not above 0.95
        (4, 6, 0, 0.0),  # IoU 0.4
        (3, 1, 0, 0.5),  # IoU 0.75 -> above 0.50..0.70
    ],
)
def test_tgs_hand_cases(tp, fp, fn, expected):
    tn = 3
    pred, true = make_pair(tp, fp, fn, tn)
    counts = binary_counts(pred, true)
    assert counts.tolist() == [[tp, fp, fn, tn]]
    score = tgs_image_scores(counts)
    assert score.shape == (1,)
    assert score.item() == pytest.approx(expected, abs=1e-7)
    assert float(tgs_reference(tp, fp, fn)) == pytest.approx(expected)
    assert run_metrics(pred, true)["tgs_map"] == pytest.approx(expected)


@pytest.mark.parametrize("i,pct", list(enumerate(PCTS)))
def test_tgs_each_threshold_exact_above_below(i, pct):
    # IoU exactly pct/100: tp / 20 with tp = pct / 5 -> thresholds strictly below: the first i.
    tp = pct // 5
    fp = (20 - tp) // 2
    exact = make_pair(tp, fp, 20 - tp - fp, 4, h=4)
    # just above / below: (10*pct +- 1) / 1000, in a 32x32 image
    up = make_pair(10 * pct + 1, 500 - 5 * pct, 500 - 5 * pct - 1, 24, h=32, seed=1)
    down = make_pair(10 * pct - 1, 500 - 5 * pct, 500 - 5 * pct + 1, 24, h=32, seed=2)
    got = [tgs_image_scores(binary_counts(*pair)).item() for pair in (exact, up, down)]
    assert got == pytest.approx([i / 10, (i + 1) / 10, i / 10], abs=1e-7)
    # also when the fractions are not in lowest terms with larger unions
    c = torch.tensor([[pct * 7, 0, (100 - pct) * 7, 0], [pct * 7 + 1, 0, (100 - pct) * 7, 0]])
    assert tgs_image_scores(c).tolist() == pytest.approx([i / 10, (i + 1) / 10])


def test_tgs_exhaustive_small_unions_match_fractions():
    rows = [(tp, u - tp, 0) for u in range(1, 201) for tp in range(u + 1)]
    rows += [(tp, 0, u - tp) for u in range(1, 201) for tp in range(u + 1)]
    c = torch.tensor([[tp, fp, fn, 0] for tp, fp, fn in rows], dtype=torch.int64)
    hits = (tgs_image_scores(c, dtype=torch.float64) * 10).round().long().tolist()
    expected = [int(tgs_reference(*r) * 10) for r in rows]
    assert hits == expected


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**6)
        ),
        min_size=1,
        max_size=8,
    )
)
def test_tgs_matches_fraction_reference_large_counts(rows):
    c = torch.tensor(rows, dtype=torch.int64)
    got = tgs_image_scores(c, dtype=torch.float64).tolist()
    assert got == pytest.approx([float(tgs_reference(tp, fp, fn)) for tp, fp, fn, _ in rows])


def test_tgs_map_and_mean_image_iou_hand():
    # images: perfect (1, iou 1), empty/empty (1, iou 1), iou 0.5 (0, 0.5), iou 0.75 (0.5, 0.75), missed (0, 0)
    specs = [(4, 0, 0, 12), (0, 0, 0, 16), (4, 2, 2, 8), (6, 1, 1, 8), (0, 0, 3, 13)]
    pairs = [make_pair(*s, h=4, seed=k) for k, s in enumerate(specs)]
    pred = torch.cat([p for p, _ in pairs])
    true = torch.cat([t for _, t in pairs])
    m = BinarySegmentationMetrics()
    m.update(pred, true)
    out = m.compute()
    assert out["tgs_map"] == pytest.approx((1 + 1 + 0 + 0.5 + 0) / 5)
    assert out["mean_image_iou"] == pytest.approx((1 + 1 + 0.5 + 0.75 + 0) / 5)
    tp, fp, fn, tn = 14, 3, 6, 57
    assert out["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["precision"] == pytest.approx(tp / (tp + fp))
    assert out["recall"] == pytest.approx(tp / (tp + fn))
    assert out["pixel_accuracy"] == pytest.approx((tp + tn) / 80)
    per = m.per_image()
    assert per["counts"].tolist() == [list(s) for s in specs]
    assert per["tgs_score"].tolist() == pytest.approx([1, 1, 0, 0.5, 0])
    assert per["iou"].tolist() == pytest.approx([1, 1, 0.5, 0.75, 0])
    assert image_iou(per["counts"]).tolist() == pytest.approx([1, 1, 0.5, 0.75, 0])


# --------------------------------------------------------------------------- pixel metrics vs sklearn


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p_pred,p_true", [(0.5, 0.5), (0.1, 0.6), (0.0, 0.3), (0.3, 0.0), (1.0, 0.5), (0.02, 0.02)])
def test_pixel_metrics_match_sklearn_random(seed, p_pred, p_true):
    rng = np.random.default_rng(seed)
    pred = rng.random((3, 9, 11)) < p_pred
    true = rng.random((3, 9, 11)) < p_true
    got = run_metrics(torch.from_numpy(pred), torch.from_numpy(true))
    assert set(got) == ALL_KEYS
    expected = sk_metrics(pred, true)
    for k in MICRO_KEYS:
        assert got[k] == pytest.approx(expected[k], rel=1e-12, abs=1e-12), k


@st.composite
def mask_pairs(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    pred = draw(hnp.arrays(np.bool_, (n, h, w)))
    true = draw(hnp.arrays(np.bool_, (n, h, w)))
    return pred, true


@settings(max_examples=50, deadline=None)
@given(mask_pairs())
def test_pixel_metrics_match_sklearn_hypothesis(pair):
    pred, true = pair
    got = run_metrics(torch.from_numpy(pred), torch.from_numpy(true))
    expected = sk_metrics(pred, true)
    for k in MICRO_KEYS:
        assert got[k] == pytest.approx(expected[k], rel=1e-12, abs=1e-12), k
    assert all(math.isfinite(v) for v in got.values())
    # per-image metrics against the independent references
    ious, tgs = [], []
    for p, t in zip(pred, true):
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        ious.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
        tgs.append(float(tgs_reference(tp, fp, fn)))
    assert got["mean_image_iou"] == pytest.approx(np.mean(ious))
    assert got["tgs_map"] == pytest.approx(np.mean(tgs))


# --------------------------------------------------------------------------- degenerate sets


def test_all_empty_everywhere_is_perfect_and_finite():
    z = torch.zeros(4, 1, 8, 8)
    out = run_metrics(z, z)
    assert out == {k: 1.0 for k in ALL_KEYS}


def test_empty_truth_with_predictions():
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, 0, 0] = True
    out = run_metrics(pred, torch.zeros(2, 4, 4, dtype=torch.bool))
    assert out["precision"] == 0.0 and out["iou"] == 0.0 and out["dice"] == 0.0
    assert out["recall"] == 1.0  # no salt to find
    assert out["pixel_accuracy"] == pytest.approx(31 / 32)
    assert out["tgs_map"] == pytest.approx(0.5)  # image 1 empty/empty
    assert out["mean_image_iou"] == pytest.approx(0.5)


def test_nothing_predicted_with_salt_in_truth():
    true = torch.zeros(1, 4, 4, dtype=torch.bool)
    true[0, :2] = True
    out = run_metrics(torch.zeros(1, 4, 4, dtype=torch.bool), true)
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["iou"] == 0.0 and out["dice"] == 0.0
    assert out["tgs_map"] == 0.0 and out["pixel_accuracy"] == 0.5


def test_micro_scores_batched_conventions():
    total = torch.tensor([[0, 0, 0, 5], [0, 3, 0, 2], [0, 0, 3, 2], [2, 1, 1, 0]])
    s = micro_scores(total)
    assert s["precision"].tolist() == [1.0, 0.0, 0.0, 2 / 3]
    assert s["recall"].tolist() == [1.0, 1.0, 0.0, 2 / 3]
    assert s["iou"].tolist() == [1.0, 0.0, 0.0, 0.5]
    assert s["dice"].tolist() == [1.0, 0.0, 0.0, 2 / 3]


def test_compute_without_data_raises():
    with pytest.raises(RuntimeError):
        BinarySegmentationMetrics().compute()


# --------------------------------------------------------------------------- streaming, shapes, thresholds


def _random_batch(seed, n=10, h=13, w=17):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 1, h, w, generator=g)
    # some images fully empty in truth, some all-background predictions
    true = torch.rand(n, 1, h, w, generator=g) < torch.rand(n, 1, 1, 1, generator=g)
    true[::4] = False
    probs[1::5] *= 0.3
    return probs, true


def test_streaming_equals_one_batch_and_state_roundtrip():
    probs, true = _random_batch(0)
    one = BinarySegmentationMetrics()
    one.update(probs, true)
    stream = BinarySegmentationMetrics()
    for sl in (slice(0, 3), slice(3, 4), slice(4, 10)):
        stream.update(probs[sl], true[sl])
    assert len(stream) == 10
    assert torch.equal(stream.state(), one.state())
    assert stream.compute() == one.compute()

    # merging "processes"
    a, b = BinarySegmentationMetrics(), BinarySegmentationMetrics()
    a.update(probs[:6], true[:6])
    b.update(probs[6:], true[6:])
    merged = BinarySegmentationMetrics()
    merged.load_state(torch.cat([a.state(), b.state()]))
    assert merged.compute() == one.compute()
    a.merge_state(b.state())
    assert a.compute() == one.compute()

    # load_state replaces; reset empties
    merged.load_state(b.state())
    assert len(merged) == 4
    merged.reset()
    assert len(merged) == 0 and merged.state().shape == (0, 4)
    with pytest.raises(ValueError):
        merged.load_state(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError):
        merged.load_state(torch.zeros(3, 4))


def test_channel_axis_squeezed_and_probs_vs_bool():
    probs, true = _random_batch(1)
    ref = run_metrics(probs, true)
    assert run_metrics(probs[:, 0], true[:, 0]) == ref
    assert run_metrics(probs > 0.5, true) == ref
    assert run_metrics(probs, true.float()) == ref
    for thr in (0.2, 0.7):
        got = run_metrics(probs, true, threshold=thr)
        assert got == run_metrics(probs > thr, true)
        m = BinarySegmentationMetrics(threshold=thr)
        m.update(probs, true)
        assert m.compute() == got
    assert run_metrics(probs, true, threshold=0.7) != ref


def test_threshold_is_strict():
    probs = torch.tensor([[[0.5, 0.25, 0.75]]])
    true = torch.tensor([[[True, False, True]]])
    c = BinarySegmentationMetrics()
    c.update(probs, true)  # 0.5 is not > 0.5
    assert c.state().tolist() == [[1, 0, 1, 1]]
    c.reset()
    c.update(probs, true, threshold=0.25)
    assert c.state().tolist() == [[2, 0, 0, 1]]


def test_update_is_sync_free_on_meta_device():
    # any .item()/.tolist()/host copy inside update would raise on meta tensors
    m = BinarySegmentationMetrics()
    probs = torch.empty(2, 1, 8, 8, device="meta")
    true = torch.empty(2, 1, 8, 8, device="meta", dtype=torch.bool)
    m.update(probs, true)
    m.update(probs > 0.5, true)
    st_ = m.state()
    assert st_.device.type == "meta" and st_.shape == (4, 4) and st_.dtype == torch.int64


@pytest.mark.parametrize("device", DEVICES)
def test_device(device):
    probs, true = _random_batch(2)
    ref = run_metrics(probs, true)
    m = BinarySegmentationMetrics()
    m.update(probs.to(device), true.to(device))
    assert m.state().device.type == device
    assert m.compute() == ref
    sw = scores_over_thresholds(probs.to(device), true.to(device), [0.3, 0.5])
    assert sw["iou"][1].item() == ref["iou"]


# --------------------------------------------------------------------------- threshold sweep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_scores_over_thresholds_matches_accumulator(dtype):
    probs, true = _random_batch(3, n=12)
    # quantised probabilities: many pixels exactly on the thresholds (tests the strict >)
    probs = (probs * 20).floor() / 20
    probs = probs.to(dtype)
    probs[0, 0, 0, 0] = float("nan")  # NaN is never > threshold
    thresholds = [0.5, 0.0, 0.05, 0.3, 0.3, 0.35, 0.9, 1.0, 0.123, 0.95, 0.7]  # unsorted, duplicate
    sw = scores_over_thresholds(probs, true, thresholds)
    assert set(sw) == {"threshold", "precision", "recall", "iou", "dice", "tgs_map"}
    assert sw["threshold"].tolist() == thresholds
    for k, v in sw.items():
        assert v.shape == (len(thresholds),) and v.is_floating_point(), k
    for j, thr in enumerate(thresholds):
        ref = run_metrics(probs, true, threshold=thr)
        for k in ("precision", "recall", "iou", "dice", "tgs_map"):
            assert sw[k][j].item() == ref[k], (thr, k)


def test_scores_over_thresholds_101_thresholds_and_chunking(monkeypatch):
    import unetlab.metrics as mm

    probs, true = _random_batch(4, n=7)
    thresholds = [i / 100 for i in range(101)]
    full = scores_over_thresholds(probs, true, thresholds)
    monkeypatch.setattr(mm, "_SWEEP_CHUNK_PIXELS", 13 * 17 * 2)  # 2 images per chunk
    chunked = scores_over_thresholds(probs, true, thresholds)
    for k in full:
        assert torch.equal(full[k], chunked[k]), k
    for j in (0, 37, 50, 100):
        ref = run_metrics(probs, true, threshold=thresholds[j])
        assert full["tgs_map"][j].item() == ref["tgs_map"]
        assert full["iou"][j].item() == ref["iou"]
    # precision/recall curve sanity: recall non-increasing in the threshold
    assert (full["recall"][1:] <= full["recall"][:-1]).all()


def test_scores_over_thresholds_rejects_bad_input():
    probs, true = _random_batch(5, n=2)
    with pytest.raises(TypeError):
        scores_over_thresholds(probs > 0.5, true, [0.5])
    with pytest.raises(ValueError):
        scores_over_thresholds(probs, true, [])
    with pytest.raises(ValueError):
        scores_over_thresholds(probs, true[:, :, :5], [0.5])


# ---- ignored pixels (valid masks)


def test_ignored_pixels_are_in_no_count_matches_sklearn_on_the_valid_pixels():
    from sklearn.metrics import accuracy_score, jaccard_score, precision_score, recall_score

    generator = torch.Generator().manual_seed(7)
    pred = torch.rand(5, 12, 9, generator=generator) > 0.5
    target = torch.rand(5, 12, 9, generator=generator) > 0.6
    valid = torch.rand(5, 12, 9, generator=generator) > 0.3
    metrics = BinarySegmentationMetrics()
    metrics.update(pred, target, valid=valid)
    scores = metrics.compute()
    y_true, y_pred = target[valid].numpy(), pred[valid].numpy()
    assert scores["pixel_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert scores["precision"] == pytest.approx(precision_score(y_true, y_pred))
    assert scores["recall"] == pytest.approx(recall_score(y_true, y_pred))
    assert scores["iou"] == pytest.approx(jaccard_score(y_true, y_pred))
    counts = binary_counts(pred, target, valid)
    assert torch.equal(counts.sum(dim=1), valid.sum(dim=(1, 2)))


def test_all_valid_equals_no_valid_mask_and_shape_mismatch_refused():
    pred = torch.tensor([[[1, 0], [1, 1]]], dtype=torch.bool)
    target = torch.tensor([[[1, 1], [0, 1]]], dtype=torch.bool)
    assert torch.equal(binary_counts(pred, target, torch.ones_like(pred)), binary_counts(pred, target))
    # hand case: ignore the two disagreeing pixels -> tp 2, fp 0, fn 0, tn 0
    valid = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.bool)
    assert binary_counts(pred, target, valid).tolist() == [[2, 0, 0, 0]]
    with pytest.raises(ValueError, match="valid"):
        binary_counts(pred, target, torch.ones(1, 3, 3, dtype=torch.bool))


# --------------------------------------------------------------------------- min area (TGS post-processing)


def test_drop_small_predictions_empties_whole_images_below_the_area():
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred[0, 0, :3] = True   # 3 pixels: below 4, emptied
    pred[1, :2, :2] = True  # exactly 4: kept
    out = drop_small_predictions(pred, 4)
    assert out[0].sum() == 0 and torch.equal(out[1], pred[1]) and out[2].sum() == 0
    assert drop_small_predictions(pred, 0) is pred


def test_min_area_turns_stray_pixels_on_an_empty_image_into_a_perfect_score():
    # Image 0: no salt, 3 stray predicted pixels -> 0 without the rule, 1 with it.
    # Image 1: 4 salt pixels predicted exactly -> 1 without the rule, 0 with min_area 5 (all missed).
    probs = torch.zeros(2, 5, 5)
    truth = torch.zeros(2, 5, 5, dtype=torch.bool)
    probs[0, 0, :3] = 0.9
    probs[1, 2:4, 2:4] = 0.9
    truth[1, 2:4, 2:4] = True
    plain = BinarySegmentationMetrics(0.5)
    plain.update(probs, truth)
    assert plain.per_image()["tgs_score"].tolist() == [0.0, 1.0]
    ruled = BinarySegmentationMetrics(0.5, min_area=4)
    ruled.update(probs, truth)
    assert ruled.per_image()["tgs_score"].tolist() == [1.0, 1.0]
    strict = BinarySegmentationMetrics(0.5, min_area=5)
    strict.update(probs, truth)
    assert strict.per_image()["counts"].tolist() == [[0, 0, 0, 25], [0, 0, 4, 21]]
    assert strict.compute()["recall"] == 0.0
    with pytest.raises(ValueError, match="min_area"):
        BinarySegmentationMetrics(0.5, min_area=-1)


@pytest.mark.parametrize("min_area", [0, 7, 30])
def test_threshold_sweep_with_min_area_matches_sklearn_on_post_processed_masks(min_area):
    gen = torch.Generator().manual_seed(min_area)
    # Blobs of different sizes so that the rule empties some images and not others.
    probs = torch.rand(12, 9, 9, generator=gen) * torch.linspace(0.2, 1.0, 12)[:, None, None]
    truth = torch.rand(12, 9, 9, generator=gen) > 0.7
    truth[:3] = False
    thresholds = [0.3, 0.5, 0.8]
    sweep = scores_over_thresholds(probs, truth, thresholds, min_area)
    for k, threshold in enumerate(thresholds):
        pred = (probs > threshold).numpy()
        small = pred.sum(axis=(1, 2)) < min_area
        pred[small] = False
        y, p = truth.numpy().ravel(), pred.ravel()
        assert sweep["iou"][k].item() == pytest.approx(skm.jaccard_score(y, p, zero_division=1.0))
        # Nothing predicted on a set with salt: precision 0 by this module's convention (sklearn has no such case).
        expected_precision = skm.precision_score(y, p, zero_division=1.0) if p.any() else float(not y.any())
        assert sweep["precision"][k].item() == pytest.approx(expected_precision)
        assert sweep["recall"][k].item() == pytest.approx(skm.recall_score(y, p, zero_division=1.0))
        accumulator = BinarySegmentationMetrics(threshold, min_area)
        accumulator.update(probs, truth)
        assert sweep["tgs_map"][k].item() == pytest.approx(accumulator.compute()["tgs_map"])
