"""Tests for model-input sizing (pad / resize), batched augmentation and the tensor conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetlab.config import AugmentConfig
from unetlab.data.augment import augment_settings, build_batch_augment
from unetlab.data.sizing import Sizing
from unetlab.data.tensors import channel_stats, images_to_tensor, masks_to_tensor, normalize

OFF = dict(preset="none", hflip=False, vflip=False, shift=0.0, scale=0.0, brightness=0.0, contrast=0.0, noise=0.0)


def BatchAugment(cfg: AugmentConfig):  # noqa: N802 - the trainer's augmentation, without an ignore map
    run = build_batch_augment(cfg)
    return lambda images, masks, generator=None: run(images, masks, None, generator)[:2]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def blob_masks(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Binary masks of a few random rectangles (N, 1, side, side): large regions, as salt is."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 1, side, side), np.float32)
    for k in range(n):
        for _ in range(3):
            r0, c0 = rng.integers(0, side - 8, 2)
            h, w = rng.integers(6, side // 2, 2)
            masks[k, 0, r0:r0 + h, c0:c0 + w] = 1.0
    return torch.from_numpy(masks)


# ----------------------------------------------------------------------------- Sizing


def test_sizing_rejects_unknown_mode():
    with pytest.raises(ValueError, match="crop"):
        Sizing("crop", 128)


def test_pad_101_to_128_and_restore_exactly():
    sizing = Sizing("pad", 128)
    x = rand(2, 1, 101, 101)
    padded = sizing.images(x)
    assert padded.shape == (2, 1, 128, 128)
    restored = sizing.restore(padded, 101, 101)
    assert restored.shape == x.shape
    assert torch.equal(restored, x)


def test_pad_is_centred_reflect_padding():
    sizing = Sizing("pad", 128)
    x = rand(1, 1, 101, 101, seed=1)
    padded = sizing.images(x)
    # 27 pixels to add: 13 before, 14 after (on both axes)
    expected = np.pad(x.numpy()[0, 0], ((13, 14), (13, 14)), mode="reflect")
    np.testing.assert_array_equal(padded.numpy()[0, 0], expected)
    assert torch.equal(padded[0, 0, 13:114, 13:114], x[0, 0])
    # reflect (not symmetric, not zeros): the row above the image mirrors row 1
    assert torch.equal(padded[0, 0, 12, 13:114], x[0, 0, 1])


def test_pad_non_square_and_multi_channel():
    sizing = Sizing("pad", 64)
    x = rand(3, 2, 40, 57)
    padded = sizing.images(x)
    assert padded.shape == (3, 2, 64, 64)
    assert torch.equal(sizing.restore(padded, 40, 57), x)


def test_pad_masks_stay_binary_and_restore():
    sizing = Sizing("pad", 128)
    m = blob_masks(2, 101)
    padded = sizing.masks(m)
    assert padded.shape == (2, 1, 128, 128)
    assert set(padded.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sizing.restore(padded, 101, 101), m)


def test_pad_already_at_size_is_identity():
    sizing = Sizing("pad", 32)
    x = rand(1, 1, 32, 32)
    assert torch.equal(sizing.images(x), x)
    assert torch.equal(sizing.restore(x, 32, 32), x)


@pytest.mark.parametrize("shape", [(5, 5), (1, 1), (3, 100), (64, 2)])
def test_pad_tiny_inputs_fall_back_to_replicate(shape):
    sizing = Sizing("pad", 128)
    x = rand(2, 1, *shape, seed=3)
    padded = sizing.images(x)
    assert padded.shape == (2, 1, 128, 128)
    assert torch.equal(sizing.restore(padded, *shape), x)
    assert torch.isfinite(padded).all()
    # every padded value is one of the input's values (replicate / reflect never invent values)
    assert torch.isin(padded, x).all()
    m = (x > 0.5).float()
    assert set(sizing.masks(m).unique().tolist()) <= {0.0, 1.0}


def test_resize_shapes_round_trip():
    sizing = Sizing("resize", 128)
    x = rand(2, 1, 101, 101)
    up = sizing.images(x)
    assert up.shape == (2, 1, 128, 128)
    back = sizing.restore(up, 101, 101)
    assert back.shape == x.shape
    # smooth content survives the round trip nearly unchanged
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 101), torch.linspace(0, 1, 101), indexing="ij")
    smooth = (0.5 + 0.4 * torch.sin(3 * yy) * torch.cos(2 * xx))[None, None]
    assert (sizing.restore(sizing.images(smooth), 101, 101) - smooth).abs().max() < 0.02


def test_resize_masks_nearest_keeps_binary():
    sizing = Sizing("resize", 128)
    m = blob_masks(2, 101)
    up = sizing.masks(m)
    assert up.shape == (2, 1, 128, 128)
    assert set(up.unique().tolist()) <= {0.0, 1.0}
    assert abs(up.mean().item() - m.mean().item()) < 0.02


# ----------------------------------------------------------------------------- build_batch_augment


def test_augment_all_off_returns_inputs_unchanged():
    aug = BatchAugment(AugmentConfig(**OFF))
    images, masks = rand(4, 1, 16, 16), blob_masks(4, 16)
    out_i, out_m = aug(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out_i, images) and torch.equal(out_m, masks)
    assert augment_settings(AugmentConfig(**OFF)).identity


def test_augment_hflip_only_flips_whole_samples_together():
    aug = BatchAugment(AugmentConfig(**{**OFF, "hflip": True}))
    images, masks = rand(32, 1, 8, 8), blob_masks(32, 16)[:, :, :8, :8]
    out_i, out_m = aug(images, masks, torch.Generator().manual_seed(0))
    flipped = []
    for k in range(32):
        if torch.equal(out_i[k], images[k]):
            assert torch.equal(out_m[k], masks[k])
            flipped.append(False)
        else:
            assert torch.equal(out_i[k], images[k].flip(-1))
            assert torch.equal(out_m[k], masks[k].flip(-1))
            flipped.append(True)
    assert 0 < sum(flipped) < 32  # each sample flips with probability 1/2


def test_augment_vflip():
    aug = BatchAugment(AugmentConfig(**{**OFF, "vflip": True}))
    images = rand(32, 1, 8, 8)
    out_i, out_m = aug(images, images.clone(), torch.Generator().manual_seed(1))
    assert torch.equal(out_i, out_m)
    n_flipped = sum(torch.equal(out_i[k], images[k].flip(-2)) for k in range(32))
    assert 0 < n_flipped < 32


@pytest.mark.parametrize("options", [
    {"hflip": True},
    {"hflip": True, "shift": 0.1},
    {"hflip": True, "scale": 0.2},
    {"hflip": True, "vflip": True, "shift": 0.2, "scale": 0.2},
])
def test_augment_keeps_image_and_mask_aligned(options):
    """An image equal to its mask stays (nearly) equal to it after any geometric augmentation."""
    aug = BatchAugment(AugmentConfig(**{**OFF, **options}))
    masks = blob_masks(8, 48, seed=2)
    out_i, out_m = aug(masks.clone(), masks, torch.Generator().manual_seed(5))
    assert out_i.shape == masks.shape and out_m.shape == masks.shape
    agreement = ((out_i > 0.5) == (out_m > 0.5)).float().mean().item()
    assert agreement > 0.99
    if options.get("shift") or options.get("scale"):
        assert not torch.equal(out_m, masks)  # the geometry did change


@pytest.mark.parametrize("options", [{"shift": 0.2, "scale": 0.3}, {"hflip": True, "scale": 0.5}])
def test_augment_masks_stay_binary(options):
    aug = BatchAugment(AugmentConfig(**{**OFF, **options}))
    masks = blob_masks(6, 32, seed=4)
    _, out_m = aug(rand(6, 1, 32, 32), masks, torch.Generator().manual_seed(2))
    assert set(out_m.unique().tolist()) <= {0.0, 1.0}
    assert out_m.dtype == masks.dtype


def test_augment_brightness_contrast_only_change_images():
    aug = BatchAugment(AugmentConfig(**{**OFF, "brightness": 0.2, "contrast": 0.3}))
    images, masks = rand(4, 1, 16, 16), blob_masks(4, 16)
    out_i, out_m = aug(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out_m, masks)
    assert not torch.equal(out_i, images)
    # per sample: a monotone map of the pixel values (gain and offset, clipped to [0, 1])
    assert 0.0 <= out_i.min().item() and out_i.max().item() <= 1.0
    for k in range(4):
        order = images[k].flatten().argsort()
        y = out_i[k].flatten()[order]
        assert (y[1:] - y[:-1] >= -1e-6).all()


def test_augment_deterministic_with_same_generator_seed():
    aug = BatchAugment(AugmentConfig(hflip=True, vflip=True, shift=0.1, scale=0.1, brightness=0.1, contrast=0.1))
    images, masks = rand(4, 1, 24, 24), blob_masks(4, 24)
    a = aug(images, masks, torch.Generator().manual_seed(123))
    b = aug(images, masks, torch.Generator().manual_seed(123))
    c = aug(images, masks, torch.Generator().manual_seed(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_does_not_modify_inputs():
    aug = BatchAugment(AugmentConfig(hflip=True, shift=0.1, scale=0.1, brightness=0.1, contrast=0.1))
    images, masks = rand(4, 1, 24, 24), blob_masks(4, 24)
    images_copy, masks_copy = images.clone(), masks.clone()
    aug(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(images, images_copy) and torch.equal(masks, masks_copy)


def test_augment_multi_channel_images():
    aug = BatchAugment(AugmentConfig(hflip=True, shift=0.1, scale=0.1))
    out_i, out_m = aug(rand(3, 3, 16, 16), blob_masks(3, 16), torch.Generator().manual_seed(0))
    assert out_i.shape == (3, 3, 16, 16) and out_m.shape == (3, 1, 16, 16)


# ----------------------------------------------------------------------------- tensors


def test_images_to_tensor_grey_and_colour():
    grey = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    t = images_to_tensor(grey)
    assert t.shape == (1, 1, 2, 2) and t.dtype == torch.float32
    torch.testing.assert_close(t[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    colour = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    tc = images_to_tensor(colour)
    assert tc.shape == (2, 3, 3, 4)
    torch.testing.assert_close(tc[1, 2], torch.from_numpy(colour[1, :, :, 2] / 255.0).float())


def test_masks_to_tensor():
    masks = np.array([[[True, False], [False, True]]])
    t = masks_to_tensor(masks)
    assert t.shape == (1, 1, 2, 2) and t.dtype == torch.float32
    assert t.tolist() == [[[[1.0, 0.0], [0.0, 1.0]]]]


def test_channel_stats_grey_against_numpy():
    images = np.random.default_rng(0).integers(0, 256, (5, 9, 7), dtype=np.uint8)
    mean, std = channel_stats(images)
    assert len(mean) == 1 and len(std) == 1
    assert mean[0] == pytest.approx(images.mean() / 255.0, rel=1e-12)
    assert std[0] == pytest.approx(images.std() / 255.0, rel=1e-12)


def test_channel_stats_colour_against_numpy():
    images = np.random.default_rng(1).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(axis=0) / 255.0, rtol=1e-12)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(axis=0) / 255.0, rtol=1e-12)


def test_channel_stats_constant_images_get_unit_std():
    mean, std = channel_stats(np.full((3, 4, 4), 51, np.uint8))
    assert mean[0] == pytest.approx(0.2) and std == [1.0]


def test_normalize():
    images = np.random.default_rng(2).integers(0, 256, (6, 10, 10), dtype=np.uint8)
    mean, std = channel_stats(images)
    x = normalize(images_to_tensor(images), mean, std)
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1.0) < 1e-4
    y = normalize(torch.ones(1, 2, 1, 1), [0.5, 0.25], [0.5, 0.25])
    assert y.flatten().tolist() == [1.0, 3.0]


def _centroid(m: torch.Tensor) -> torch.Tensor:
    """(row, col) centroid of each (1, H, W) mask in a batch."""
    n, _, h, w = m.shape
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    mass = m.sum(dim=(1, 2, 3))
    return torch.stack([(m[:, 0] * rows).sum(dim=(1, 2)) / mass, (m[:, 0] * cols).sum(dim=(1, 2)) / mass], 1)


def test_augment_shift_is_a_share_of_the_side():
    """shift=0.2 moves content by at most 20% of the side on each axis (and uses most of that range)."""
    side, share = 64, 0.2
    aug = BatchAugment(AugmentConfig(**{**OFF, "shift": share}))
    masks = torch.zeros(64, 1, side, side)
    masks[:, :, 28:36, 28:36] = 1.0  # a centred square: stays inside the frame for any allowed shift
    _, out = aug(masks.clone(), masks, torch.Generator().manual_seed(0))
    # a translation keeps the area (nearest sampling: up to one row/column of 8 pixels each way)
    assert ((out.sum(dim=(1, 2, 3)) - 64.0).abs() <= 16.0).all()
    moved = (_centroid(out) - _centroid(masks)).abs()
    assert moved.max().item() <= share * side + 1.0
    assert moved.max().item() >= 0.5 * share * side


def test_augment_scale_zooms_within_range():
    side, scale = 64, 0.3
    aug = BatchAugment(AugmentConfig(**{**OFF, "scale": scale}))
    masks = torch.zeros(32, 1, side, side)
    masks[:, :, 24:40, 24:40] = 1.0  # centred 16x16 square
    _, out = aug(masks.clone(), masks, torch.Generator().manual_seed(0))
    area = out.sum(dim=(1, 2, 3)) / 256.0
    assert area.min().item() >= (1 - scale) ** 2 * 0.8 and area.max().item() <= (1 + scale) ** 2 * 1.2
    assert area.max().item() > 1.1 and area.min().item() < 0.9  # both zoom in and zoom out occur
    torch.testing.assert_close(_centroid(out), _centroid(masks), atol=1.0, rtol=0)  # zoom about the centre
