"""Tests for the multiclass metrics of unetlab.metrics: sklearn agreement on the valid pixels,
hand-computed cases (absent classes, ignore labels, float targets), streaming and merging."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from unetlab.metrics import (
    BinarySegmentationMetrics,
    MulticlassSegmentationMetrics,
    multiclass_confusion,
    multiclass_scores,
    tag_safe_name,
)

SUMMARY_KEYS = ("pixel_accuracy", "mean_accuracy", "miou", "mean_dice", "fw_iou")


# --------------------------------------------------------------------------- helpers


def random_batch(seed: int, n: int = 4, h: int = 9, w: int = 11, c: int = 5, p_valid: float = 0.7):
    """pred/target (N, H, W) int64 with class c-1 never in the truth (only predicted) and class c-2
    in neither; a random valid mask; target holds 255 at invalid pixels."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c - 2, (n, h, w), generator=g)
    pred = torch.randint(0, c - 2, (n, h, w), generator=g)
    pred[torch.rand(n, h, w, generator=g) < 0.1] = c - 1  # only predicted
    agree = torch.rand(n, h, w, generator=g) < 0.5
    pred = torch.where(agree, target, pred)
    valid = torch.rand(n, h, w, generator=g) < p_valid
    target = torch.where(valid, target, torch.full_like(target, 255))
    return pred, target, valid


def sk_reference(y_true: np.ndarray, y_pred: np.ndarray, c: int) -> dict[str, object]:
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true", "A single label was found": expected here
        warnings.simplefilter("ignore")
        return _sk_reference(y_true, y_pred, c)


def _sk_reference(y_true: np.ndarray, y_pred: np.ndarray, c: int) -> dict[str, object]:
    labels = list(range(c))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    truth = cm.sum(axis=1)
    # jaccard_score's zero_division is 0 or 1 only: mark the 0/0 classes (in neither) NaN ourselves
    undefined = (truth + cm.sum(axis=0)) == 0
    iou = skm.jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    iou = np.where(undefined, np.nan, iou)
    dice = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    balanced = skm.balanced_accuracy_score(y_true, y_pred)
    present = truth > 0
    return {
        "confusion": cm,
        "iou": iou,
        "pixel_accuracy": skm.accuracy_score(y_true, y_pred),
        "mean_accuracy": balanced,
        "miou": float(np.nanmean(iou)),
        "mean_dice": float(np.nanmean(dice)),
        "fw_iou": float((truth[present] * iou[present]).sum() / truth.sum()),
    }


def assert_scores_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key in want:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


def run(pred, target, c, valid=None, names=None) -> dict[str, float]:
    m = MulticlassSegmentationMetrics(c, names)
    m.update(pred, target, valid)
    return m.compute()


# --------------------------------------------------------------------------- sklearn agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_data_matches_sklearn_on_the_valid_pixels(seed):
    c = 6
    pred, target, valid = random_batch(seed, c=c)
    y_true, y_pred = target[valid].numpy(), pred[valid].numpy()
    ref = sk_reference(y_true, y_pred, c)

    conf = multiclass_confusion(pred, target, c, valid)
    assert conf.dtype == torch.int64 and conf.shape == (c, c)
    np.testing.assert_array_equal(conf.numpy(), ref["confusion"])
    assert int(conf.sum()) == int(valid.sum())  # ignored pixels count nowhere

    got = run(pred, target, c, valid)
    for key in SUMMARY_KEYS:
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key
    per_class = np.array([got[f"iou/class{k}"] for k in range(c)])
    np.testing.assert_allclose(per_class, ref["iou"], rtol=1e-12, equal_nan=True)
    assert math.isnan(got[f"iou/class{c - 2}"])  # in neither truth nor prediction
    assert got[f"iou/class{c - 1}"] == 0.0  # only predicted: 0, and counted in miou


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 6),
    n=st.integers(1, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    split=st.integers(0, 3),
)
def test_property_sklearn_streaming_and_merge_agree(c, n, h, w, seed, split):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, h, w), generator=g)
    pred = torch.randint(0, c, (n, h, w), generator=g)
    valid = torch.rand(n, h, w, generator=g) < 0.8
    whole = MulticlassSegmentationMetrics(c)
    whole.update(pred, target, valid)
    if not valid.any():
        assert all(math.isnan(v) for v in whole.compute().values())
        return
    ref = sk_reference(target[valid].numpy(), pred[valid].numpy(), c)
    np.testing.assert_array_equal(whole.confusion().numpy(), ref["confusion"])
    got = whole.compute()
    for key in SUMMARY_KEYS:
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key

    k = min(split, n)
    a, b = MulticlassSegmentationMetrics(c), MulticlassSegmentationMetrics(c)
    a.update(pred[:k], target[:k], valid[:k])
    b.update(pred[k:], target[k:], valid[k:])
    a.merge_state(b.state())
    assert torch.equal(a.state(), whole.state())
    assert a.compute() == pytest.approx(got, nan_ok=True)


# --------------------------------------------------------------------------- hand-computed cases


def test_perfect_prediction_scores_one_and_absent_class_is_nan():
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    got = run(target.clone(), target, 4, names=["Sky", "Building", "Road", "Car"])
    for key in SUMMARY_KEYS:
        assert got[key] == 1.0, key
    assert got["iou/sky"] == got["iou/building"] == got["iou/road"] == 1.0
    assert math.isnan(got["iou/car"])  # class 3 is neither in truth nor predicted


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_means():
    # 3 classes; class 2 never appears. truth 0 0 1 1, pred 0 1 1 1.
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    got = run(pred, target, 3)
    iou0, iou1 = 1 / 2, 2 / 3
    dice0, dice1 = 2 * 1 / (2 + 1), 2 * 2 / (2 + 3)
    assert got["pixel_accuracy"] == pytest.approx(3 / 4)
    assert got["mean_accuracy"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert got["miou"] == pytest.approx((iou0 + iou1) / 2)  # not /3: class 2 is undefined
    assert got["mean_dice"] == pytest.approx((dice0 + dice1) / 2)
    assert got["fw_iou"] == pytest.approx(2 / 4 * iou0 + 2 / 4 * iou1)
    assert math.isnan(got["iou/class2"])


def test_class_only_predicted_has_iou_zero_and_counts_in_miou_but_not_mean_accuracy():
    # truth all class 0; one pixel predicted class 1 (never in the truth)
    target = torch.tensor([[[0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 0, 0, 1]]])
    got = run(pred, target, 2)
    assert got["iou/class0"] == pytest.approx(3 / 4)
    assert got["iou/class1"] == 0.0
    assert got["miou"] == pytest.approx((3 / 4 + 0.0) / 2)
    assert got["mean_dice"] == pytest.approx((2 * 3 / (4 + 3) + 0.0) / 2)
    assert got["mean_accuracy"] == pytest.approx(3 / 4)  # recall over classes present in the truth
    assert got["fw_iou"] == pytest.approx(3 / 4)  # class 1 weighs 0 (no truth pixels)
    assert got["pixel_accuracy"] == pytest.approx(3 / 4)


def test_all_pixels_ignored_gives_nan_and_no_images_raises():
    m = MulticlassSegmentationMetrics(3)
    with pytest.raises(RuntimeError, match="no images"):
        m.compute()
    target = torch.full((2, 3, 3), 255, dtype=torch.uint8)
    m.update(torch.zeros(2, 3, 3, dtype=torch.int64), target, valid=target != 255)
    got = m.compute()
    assert len(m) == 2
    assert set(got) == set(SUMMARY_KEYS) | {f"iou/class{k}" for k in range(3)}
    assert all(math.isnan(v) for v in got.values())
    assert torch.equal(m.confusion(), torch.zeros(3, 3, dtype=torch.int64))


def test_ignore_value_255_at_invalid_pixels_counts_nowhere_and_is_an_error_when_valid():
    target = torch.tensor([[[0, 1, 255], [2, 255, 1]]], dtype=torch.uint8)
    pred = torch.tensor([[[0, 1, 2], [2, 0, 0]]])
    valid = target != 255
    conf = multiclass_confusion(pred, target, 3, valid)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert torch.equal(conf, expected)
    # the same pixels without a valid mask: 255 is not a class
    with pytest.raises(ValueError, match="value 255"):
        multiclass_confusion(pred, target, 3)
    m = MulticlassSegmentationMetrics(3)
    m.update(pred, target)  # no sync in update: raised when the numbers are asked for
    for ask in (m.compute, m.confusion, m.state):
        with pytest.raises(ValueError, match="value 255"):
            ask()
    m.reset()
    m.update(pred, target, valid)
    assert torch.equal(m.confusion(), expected)


def test_camvid_ignore_label_11_with_valid_mask():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 12, (2, 6, 7), generator=g)  # 11 = Unlabelled
    pred = torch.randint(0, 11, (2, 6, 7), generator=g)
    valid = target != 11
    m = MulticlassSegmentationMetrics(11)
    m.update(pred, target, valid)
    ref = sk_reference(target[valid].numpy(), pred[valid].numpy(), 11)
    np.testing.assert_array_equal(m.confusion().numpy(), ref["confusion"])
    with pytest.raises(ValueError, match="value 11 .* not a class in 0..10"):
        multiclass_confusion(pred, target, 11)


def test_negative_and_out_of_range_predictions_and_check_false():
    target = torch.tensor([[[0, 1, 2]]])
    with pytest.raises(ValueError, match="target: value -1"):
        multiclass_confusion(target, torch.tensor([[[0, -1, 2]]]), 3)
    with pytest.raises(ValueError, match="pred: value 3"):
        multiclass_confusion(torch.tensor([[[0, 3, 2]]]), target, 3)
    # ...unless the pixel is ignored
    conf = multiclass_confusion(torch.tensor([[[0, 3, 2]]]), target, 3, valid=torch.tensor([[[1, 0, 1]]]))
    assert torch.equal(conf, torch.diag(torch.tensor([1, 0, 1])))
    # check=False: no sync, the bad pixel is simply left out
    conf = multiclass_confusion(torch.tensor([[[0, 3, 2]]]), target, 3, check=False)
    assert torch.equal(conf, torch.diag(torch.tensor([1, 0, 1])))


def test_float_targets_from_augmentation_are_rounded():
    pred = torch.tensor([[[0, 1, 2, 2]]])
    target = torch.tensor([[[0.0, 0.9999999, 2.0000001, 1.0]]])
    conf = multiclass_confusion(pred, target, 3)
    assert torch.equal(conf, multiclass_confusion(pred, torch.tensor([[[0, 1, 2, 1]]]), 3))
    assert conf[2, 2] == 1 and conf[1, 2] == 1
    # float16 / float64 and a (N, 1, H, W) float target
    assert torch.equal(multiclass_confusion(pred, target.half()[:, None], 3), conf)
    assert torch.equal(multiclass_confusion(pred, target.double(), 3), conf)
    # interpolated labels are not class indices
    with pytest.raises(ValueError, match="nearest"):
        multiclass_confusion(pred, torch.tensor([[[0.0, 1.5, 2.0, 1.0]]]), 3)
    # NaN or 255.0 at ignored pixels is fine; NaN at a valid pixel is not
    bad = torch.tensor([[[0.0, float("nan"), 255.0, 1.0]]])
    valid = torch.tensor([[[True, False, False, True]]])
    assert int(multiclass_confusion(pred, bad, 3, valid).sum()) == 2
    with pytest.raises(ValueError, match="NaN"):
        multiclass_confusion(pred, bad, 3)


# --------------------------------------------------------------------------- inputs


def test_float_scores_are_argmaxed_and_int_bool_inputs_are_indices():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (3, 1, 5, 6), generator=g)  # (N, 1, H, W) target
    by_scores = run(logits, target, 4)
    assert by_scores == pytest.approx(run(logits.argmax(1), target, 4), nan_ok=True)
    assert by_scores == pytest.approx(run(logits.softmax(1), target, 4), nan_ok=True)
    assert by_scores == pytest.approx(run(logits.argmax(1, keepdim=True).to(torch.int32), target, 4), nan_ok=True)

    # bool = classes 0/1; a 2-class problem agrees with the binary metrics' pixel accuracy and IoU
    pred_b = torch.rand(2, 7, 7, generator=g) > 0.5
    true_b = torch.rand(2, 7, 7, generator=g) > 0.5
    multi = run(pred_b, true_b, 2)
    binary = BinarySegmentationMetrics()
    binary.update(pred_b, true_b)
    ref = binary.compute()
    assert multi["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"])
    assert multi["iou/class1"] == pytest.approx(ref["iou"])
    assert multi == pytest.approx(run(pred_b.long(), true_b.float(), 2))
    # valid given as 0/1 integers or floats
    valid = torch.rand(2, 7, 7, generator=g) > 0.3
    assert run(pred_b, true_b, 2, valid) == pytest.approx(run(pred_b, true_b, 2, valid.float()), nan_ok=True)
    assert run(pred_b, true_b, 2, valid) == pytest.approx(run(pred_b, true_b, 2, valid.to(torch.uint8)), nan_ok=True)


def test_bad_inputs_are_refused():
    m = MulticlassSegmentationMetrics(3)
    target = torch.zeros(2, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m.update(torch.rand(2, 4, 4), target)  # float without a class axis
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m.update(torch.rand(2, 2, 4, 4), target)  # wrong number of classes
    with pytest.raises(ValueError, match="one channel"):
        m.update(torch.zeros(2, 3, 4, 4, dtype=torch.int64), target)  # one-hot ints
    with pytest.raises(ValueError, match="shapes differ"):
        m.update(torch.zeros(2, 4, 5, dtype=torch.int64), target)
    with pytest.raises(ValueError, match="valid and pred shapes differ"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.int64), target, valid=torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="argmax"):
        multiclass_confusion(torch.rand(2, 4, 4), target, 3)
    with pytest.raises(TypeError):
        m.update([[0]], target)
    assert len(m) == 0  # nothing half-added
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            MulticlassSegmentationMetrics(bad)


# --------------------------------------------------------------------------- streaming and state


def test_streaming_over_batches_equals_one_pass_and_merge_of_halves_equals_whole():
    c = 6
    pred, target, valid = random_batch(7, n=8, c=c)
    whole = MulticlassSegmentationMetrics(c)
    whole.update(pred, target, valid)

    streamed = MulticlassSegmentationMetrics(c)
    for s in range(0, 8, 3):
        streamed.update(pred[s : s + 3], target[s : s + 3], valid[s : s + 3])
    assert len(streamed) == len(whole) == 8
    assert torch.equal(streamed.confusion(), whole.confusion())
    assert streamed.compute() == pytest.approx(whole.compute(), nan_ok=True)

    first, second = MulticlassSegmentationMetrics(c), MulticlassSegmentationMetrics(c)
    first.update(pred[:5], target[:5], valid[:5])
    second.update(pred[5:], target[5:], valid[5:])
    merged = MulticlassSegmentationMetrics(c)
    merged.merge_state(first.state())
    merged.merge_state(second.state())
    assert len(merged) == 8
    assert torch.equal(merged.state(), whole.state())
    # states add: summing them (what all_reduce(SUM) does) or loading a stack gives the whole
    assert torch.equal(first.state() + second.state(), whole.state())
    loaded = MulticlassSegmentationMetrics(c)
    loaded.update(pred, target, valid)  # replaced, not added to
    loaded.load_state(torch.stack([first.state(), second.state()]))
    assert torch.equal(loaded.state(), whole.state())
    assert loaded.compute() == pytest.approx(whole.compute(), nan_ok=True)
    # and updating after a load keeps accumulating
    loaded.update(pred[:1], target[:1], valid[:1])
    assert len(loaded) == 9


def test_state_format_copy_semantics_and_reset():
    m = MulticlassSegmentationMetrics(3)
    assert m.state().tolist() == [0] * 10  # nothing yet: zeros, 0 images
    target = torch.tensor([[[0, 1], [2, 2]]])
    pred = torch.tensor([[[0, 2], [2, 2]]])
    m.update(pred, target)
    m.update(pred, target)
    s = m.state()
    assert s.dtype == torch.int64 and s.shape == (3 * 3 + 1,)
    assert s[:9].reshape(3, 3).tolist() == [[2, 0, 0], [0, 0, 2], [0, 0, 4]]  # rows truth, cols pred
    assert int(s[9]) == 2  # images
    s.zero_()
    m.confusion().zero_()
    assert int(m.confusion().sum()) == 8  # copies
    with pytest.raises(ValueError, match=r"\(10,\)"):
        m.load_state(torch.zeros(9, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        m.merge_state(torch.zeros(10))
    with pytest.raises(ValueError, match="negative"):
        m.merge_state(torch.tensor([-1] + [0] * 9))
    m.reset()
    assert len(m) == 0
    with pytest.raises(RuntimeError):
        m.compute()


def test_out_of_range_poisons_the_accumulator_until_reset():
    m = MulticlassSegmentationMetrics(2)
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 7]]]))
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))  # a good batch does not hide it
    with pytest.raises(ValueError, match="value 7"):
        m.compute()
    m.reset()
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    assert m.compute()["miou"] == 1.0


# --------------------------------------------------------------------------- names


def test_class_names_become_tag_safe_keys():
    got = run(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 3,
              names=["Sky", "Sign Symbol", "potted plant/indoor"])
    assert [k for k in got if k.startswith("iou/")] == ["iou/sky", "iou/sign_symbol", "iou/potted_plant_indoor"]
    assert tag_safe_name("  Road  Marking ") == "road_marking"
    assert tag_safe_name("tv-monitor.v2") == "tv-monitor.v2"
    with pytest.raises(ValueError, match="2 names for 3 classes"):
        MulticlassSegmentationMetrics(3, ["a", "b"])
    with pytest.raises(ValueError, match="both become"):
        MulticlassSegmentationMetrics(2, ["Car", "car"])
    # multiclass_scores straight from a saved matrix
    scores = multiclass_scores(torch.tensor([[3, 1], [0, 4]]), ["bg", "fg"])
    assert scores["iou/fg"] == pytest.approx(4 / 5) and scores["iou/bg"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="square"):
        multiclass_scores(torch.zeros(2, 3, dtype=torch.long))
