"""Tests for unetlab.data.stats: streaming moments, class pixel counts, class weights, coverage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unetlab.data.stats import (
    RunningMoments,
    class_coverage,
    class_pixel_counts,
    class_pixel_counts_per_image,
    class_weights,
    coverage,
)
from unetlab.data.tensors import channel_stats, images_to_tensor

# ----------------------------------------------------------------------------- RunningMoments


def reference(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """numpy mean/std of all pixels concatenated, in [0, 1] units for uint8."""
    flat = []
    for image in images:
        image = image[..., None] if image.ndim == 2 else image
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        flat.append(image.reshape(-1, image.shape[-1]).astype(np.float64) / scale)
    flat = np.concatenate(flat)
    return flat.mean(axis=0), flat.std(axis=0)


def test_mixed_sizes_uint8_grey_matches_numpy():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(101, 101), (7, 13), (128, 64), (1, 1)]]
    moments = RunningMoments()
    moments.update(images[:2]).update(images[2]).update([images[3]])
    mean, std = reference(images)
    np.testing.assert_allclose(moments.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(moments.std, std, rtol=1e-12)
    assert moments.count == sum(image.size for image in images)
    assert moments.channels == 1 and moments.mean.shape == (1,)


def test_mixed_sizes_rgb_float_matches_numpy():
    rng = np.random.default_rng(1)
    images = [rng.normal(3.0, 2.0, size=(h, w, 3)) for h, w in [(10, 20), (33, 5), (64, 64)]]
    moments = RunningMoments()
    for image in images:
        moments.update(image)
    mean, std = reference(images)
    np.testing.assert_allclose(moments.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(moments.std, std, rtol=1e-12)


def test_uint8_is_divided_by_255_float_is_not():
    image = np.full((4, 4), 255, dtype=np.uint8)
    assert RunningMoments().update(image).mean[0] == 1.0
    assert RunningMoments().update(image.astype(np.float32)).mean[0] == 255.0


def test_stack_and_tensor_agree_with_channel_stats():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, size=(6, 21, 17), dtype=np.uint8)
    expected = channel_stats(grey)
    from_stack = RunningMoments().update(grey, stacked=True)
    from_tensor = RunningMoments().update(images_to_tensor(grey))       # float32 (N, 1, H, W) in [0, 1]
    from_uint8_tensor = RunningMoments().update(torch.from_numpy(grey)[:, None])
    for moments, tol in [(from_stack, 1e-12), (from_tensor, 1e-7), (from_uint8_tensor, 1e-12)]:
        mean, std = moments.normalization()
        np.testing.assert_allclose(mean, expected[0], rtol=tol)
        np.testing.assert_allclose(std, expected[1], rtol=tol)
    rgb = rng.integers(0, 256, size=(3, 9, 11, 3), dtype=np.uint8)   # 4-d numpy: (N, H, W, C)
    mean, std = RunningMoments().update(rgb).normalization()
    np.testing.assert_allclose(mean, channel_stats(rgb)[0], rtol=1e-12)
    np.testing.assert_allclose(std, channel_stats(rgb)[1], rtol=1e-12)


def test_tensor_bf16_and_list_of_tensors():
    x = torch.rand(2, 3, 8, 8).to(torch.bfloat16)
    reference_moments = RunningMoments().update(x.double().permute(0, 2, 3, 1).numpy())
    moments = RunningMoments().update([x[:1], x[1:]])
    np.testing.assert_allclose(moments.mean, reference_moments.mean, rtol=1e-12)
    np.testing.assert_allclose(moments.std, reference_moments.std, rtol=1e-12)


def test_3d_array_without_stacked_is_one_hwc_image():
    images = np.zeros((5, 4, 4), dtype=np.uint8)
    assert RunningMoments().update(images).channels == 4
    assert RunningMoments().update(images, stacked=True).channels == 1


def test_constant_image_std_is_exactly_zero_and_safe_std_is_one():
    for value in [0, 1, 37, 200, 255]:
        moments = RunningMoments()
        moments.update(np.full((101, 101), value, dtype=np.uint8))
        moments.update([np.full((3, 50), value, dtype=np.uint8)])
        assert moments.mean[0] == value / 255.0
        assert moments.std[0] == 0.0
        assert moments.safe_std()[0] == 1.0
        assert channel_stats(np.full((2, 5, 5), value, dtype=np.uint8))[1] == [1.0]
    # one constant channel among varying ones: only that channel is guarded
    image = np.stack([np.full((8, 8), 0.5), np.arange(64.0).reshape(8, 8)], axis=-1)
    moments = RunningMoments().update(image)
    assert moments.std[0] == 0.0 and moments.safe_std()[0] == 1.0
    assert moments.safe_std()[1] == pytest.approx(np.arange(64.0).std())


def test_tiny_but_nonzero_std_is_guarded_like_channel_stats():
    image = np.zeros((10, 10))
    image[0, 0] = 1e-6  # std ~1e-7 < 1e-6
    moments = RunningMoments().update(image)
    assert 0 < moments.std[0] < 1e-6 and moments.safe_std()[0] == 1.0


def test_large_offset_is_numerically_stable():
    """Naive sum-of-squares loses everything here; shifted sums / Chan's update do not."""
    rng = np.random.default_rng(3)
    images = [1e8 + rng.random((16, 16)) for _ in range(20)]
    moments = RunningMoments()
    for image in images:
        moments.update(image)
    mean, std = reference(images)
    np.testing.assert_allclose(moments.std, std, rtol=1e-6)
    np.testing.assert_allclose(moments.mean, mean, rtol=1e-15)


def test_empty_accumulator_and_empty_images():
    moments = RunningMoments()
    assert moments.count == 0
    with pytest.raises(ValueError, match="no pixels"):
        _ = moments.mean
    moments.update([np.zeros((0, 5), dtype=np.uint8)])
    assert moments.count == 0
    moments.merge(RunningMoments())
    assert moments.count == 0
    moments.update(np.array([[255]], dtype=np.uint8))
    assert moments.mean[0] == 1.0 and moments.std[0] == 0.0


def test_refusals():
    moments = RunningMoments().update(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="1 channel"):
        moments.update(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="channel"):
        moments.merge(RunningMoments().update(np.zeros((2, 2))))
    with pytest.raises(ValueError, match="int16"):
        RunningMoments().update(np.zeros((4, 4), dtype=np.int16))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RunningMoments().update(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="got shape"):
        RunningMoments().update(np.zeros(5))
    with pytest.raises(TypeError):
        RunningMoments().update(3.0)
    with pytest.raises(TypeError):
        RunningMoments().merge("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        RunningMoments(channels=0)
    with pytest.raises(ValueError, match="2 channel"):
        RunningMoments(channels=3).update(np.zeros((2, 2, 2)))


image_shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(image_shapes, min_size=1, max_size=12),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["uint8", "float"]),
    st.integers(1, 3),
)
def test_batching_and_merge_order_do_not_matter(shapes, seed, kind, channels):
    rng = np.random.default_rng(seed)
    if kind == "uint8":
        images = [rng.integers(0, 256, size=(*shape, channels), dtype=np.uint8) for shape in shapes]
    else:
        images = [rng.normal(rng.normal(0, 100), rng.uniform(0.01, 10), size=(*shape, channels)) for shape in shapes]
    mean, std = reference(images)

    # random cut into batches, one accumulator per batch (shards), merged in a random order
    cuts = np.sort(rng.choice(np.arange(1, len(images) + 1), size=rng.integers(0, len(images) + 1), replace=True))
    batches = np.split(np.arange(len(images)), cuts)
    shards = [RunningMoments().update([images[i] for i in batch]) for batch in batches]
    merged = RunningMoments()
    for j in rng.permutation(len(shards)):
        merged.merge(shards[j])

    single = RunningMoments()
    for batch in batches:
        single.update([images[i] for i in batch])

    for moments in (merged, single):
        assert moments.count == sum(image.shape[0] * image.shape[1] for image in images)
        np.testing.assert_allclose(moments.mean, mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(moments.std, std, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- class pixel counts


MASKS = [
    np.array([[0, 0, 1],
              [2, 2, 255]]),            # 2x0, 1x1, 2x2, 1 ignored
    np.array([[0, 0, 0, 0]]),           # only background, another size
    np.array([[1, 1], [1, 0], [255, 255]], dtype=np.uint8),
]


def test_class_pixel_counts_by_hand():
    np.testing.assert_array_equal(class_pixel_counts(MASKS, 4, ignore_index=255), [7, 4, 2, 0])
    per_image = class_pixel_counts_per_image(MASKS, 4, ignore_index=255)
    np.testing.assert_array_equal(per_image, [[2, 1, 2, 0], [4, 0, 0, 0], [1, 3, 0, 0]])
    assert per_image.dtype == np.int64 and class_pixel_counts(MASKS, 4, 255).dtype == np.int64
    # a generator works (streams), bool masks are classes 0/1
    counts = class_pixel_counts((m for m in [np.array([[True, False, False]])]), 2)
    np.testing.assert_array_equal(counts, [2, 1])
    assert class_pixel_counts_per_image([], 3).shape == (0, 3)
    np.testing.assert_array_equal(class_pixel_counts([], 3), [0, 0, 0])


def test_ignore_index_inside_the_class_range():
    mask = np.array([[0, 0, 1, 2]])
    np.testing.assert_array_equal(class_pixel_counts([mask], 3, ignore_index=0), [0, 1, 1])


@pytest.mark.parametrize("bad, value", [(np.array([[0, 5]]), 5), (np.array([[0, -1]]), -1),
                                        (np.array([[0, 255]]), 255)])
def test_class_pixel_counts_out_of_range_names_the_value(bad, value):
    with pytest.raises(ValueError, match=rf"mask 1: class value {value} is outside \[0, 3\)"):
        class_pixel_counts([np.zeros((2, 2), dtype=int), bad], 3)
    with pytest.raises(ValueError, match=f"class value {value}"):
        class_pixel_counts_per_image([bad], 3, ignore_index=7)


def test_class_pixel_counts_refuses_float_masks_and_bad_num_classes():
    with pytest.raises(ValueError, match="integer class indices"):
        class_pixel_counts([np.zeros((2, 2))], 2)
    with pytest.raises(ValueError, match="num_classes"):
        class_pixel_counts([np.zeros((2, 2), dtype=int)], 0)


# ----------------------------------------------------------------------------- class weights


def test_inverse_weights_by_hand():
    counts = np.array([6, 3, 1])      # total 10, K 3: w = 10/18, 10/9, 10/3
    expected = np.array([10 / 18, 10 / 9, 10 / 3])
    np.testing.assert_allclose(class_weights(counts, "inverse", normalize=False), expected)
    # with every class present these already have pixel-weighted mean 1: normalising changes nothing
    np.testing.assert_allclose(class_weights(counts, "inverse"), expected)
    assert (counts * class_weights(counts, "inverse")).sum() / counts.sum() == pytest.approx(1.0)


def test_inverse_weights_absent_class_and_ignore_index():
    # from MASKS (255 ignored): counts [7, 4, 2, 0], total 13, class 3 absent
    counts = class_pixel_counts(MASKS, 4, ignore_index=255)
    with pytest.warns(UserWarning, match=r"\[3\]"):
        raw = class_weights(counts, "inverse", normalize=False)
    np.testing.assert_allclose(raw, [13 / 28, 13 / 16, 13 / 8, 0.0])          # total / (K * n_c), K = 4
    with pytest.warns(UserWarning):
        weights = class_weights(counts, "inverse")
    np.testing.assert_allclose(weights, [13 / 21, 13 / 12, 13 / 6, 0.0])      # total / (P * n_c), P = 3
    assert (counts * weights).sum() / counts.sum() == pytest.approx(1.0)
    # per-image counts give the same inverse weights as their totals
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(class_weights(class_pixel_counts_per_image(MASKS, 4, 255), "inverse"), weights)


def test_median_frequency_weights_by_hand():
    # per-image labelled pixels: 5, 4, 4 (ignored pixels not counted)
    per_image = class_pixel_counts_per_image(MASKS, 4, ignore_index=255)
    # class 0: present in all three images: 7 / 13;  class 1: images 0 and 2: 4 / 9;
    # class 2: image 0 only: 2 / 5;                  class 3: absent -> weight 0
    freq = np.array([7 / 13, 4 / 9, 2 / 5])
    median = 4 / 9
    with pytest.warns(UserWarning, match=r"\[3\]"):
        raw = class_weights(per_image, "median", normalize=False)
    np.testing.assert_allclose(raw, [*(median / freq), 0.0])
    np.testing.assert_allclose(raw[:3], [52 / 63, 1.0, 10 / 9])
    with pytest.warns(UserWarning):
        weights = class_weights(per_image, "median")
    totals = per_image.sum(axis=0)
    assert (totals * weights).sum() / totals.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights / weights[1], raw / raw[1])            # same ratios


def test_median_frequency_differs_from_plain_frequency():
    """A class present in few images is frequent *where present*: it gets less weight than 1/total suggests."""
    per_image = np.array([[90, 10, 0], [100, 0, 0], [50, 0, 50]])
    raw = class_weights(per_image, "median", normalize=False)
    freq = np.array([240 / 300, 10 / 100, 50 / 100])    # class 2 only counts image 2's 100 pixels
    np.testing.assert_allclose(raw, np.median(freq) / freq)
    assert raw[2] == pytest.approx(1.0) and raw[1] == pytest.approx(5.0)


def test_none_weights_and_refusals():
    np.testing.assert_array_equal(class_weights(np.array([5, 0, 1]), "none"), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="per-image counts"):
        class_weights(np.array([5, 3]), "median")
    with pytest.raises(ValueError, match="unknown class weighting method 'bogus'"):
        class_weights(np.array([5, 3]), "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_weights(np.array([0, 0]), "inverse")
    with pytest.raises(ValueError, match="negative"):
        class_weights(np.array([3, -1]), "inverse")
    with pytest.raises(ValueError, match="shape"):
        class_weights(np.zeros((2, 2, 2)), "inverse")


def test_no_warning_when_every_class_is_present():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_weights(np.array([[3, 1], [2, 2]]), "median")
        class_weights(np.array([3, 1]), "inverse")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1000), min_size=3, max_size=3), min_size=1, max_size=10),
       st.sampled_from(["inverse", "median"]))
def test_normalised_weights_have_pixel_weighted_mean_one(rows, method):
    per_image = np.array(rows)
    totals = per_image.sum(axis=0)
    if totals.sum() == 0:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = class_weights(per_image, method)
    assert (weights >= 0).all()
    np.testing.assert_array_equal(weights == 0, totals == 0)
    assert (totals * weights).sum() / totals.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- coverage


def test_coverage_helpers():
    mask = np.array([[0, 1, 2, 255]])
    assert coverage(mask) == 0.75
    assert coverage(mask, ignore_index=255) == pytest.approx(2 / 3)
    assert coverage(np.array([[True, False], [False, False]])) == 0.25
    assert coverage(np.full((2, 2), 255), ignore_index=255) == 0.0
    np.testing.assert_allclose(class_coverage(mask, 3, ignore_index=255), [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(class_coverage(np.full((2, 2), 255), 3, ignore_index=255), [0, 0, 0])
