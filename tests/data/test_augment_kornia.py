"""Tests for the kornia-based batched augmentation (unetlab.data.augment_kornia)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("kornia")

from unetlab.data.augment_kornia import (  # noqa: E402
    PRESETS,
    AugmentSettings,
    KorniaAugment,
    augment_preview,
    build_augmentation,
    settings_for,
)

IGNORE = 255


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=gen(seed))


def blob_masks(n: int, side: int, seed: int = 0, classes: tuple[int, ...] = (1,)) -> torch.Tensor:
    """int64 (N, 1, side, side) masks of a few random rectangles labelled with `classes`."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 1, side, side), np.int64)
    for k in range(n):
        for j in range(3):
            r0, c0 = rng.integers(0, side - 8, 2)
            h, w = rng.integers(6, side // 2, 2)
            masks[k, 0, r0:r0 + h, c0:c0 + w] = classes[j % len(classes)]
    return torch.from_numpy(masks)


GEOMETRIC = {
    "hflip": AugmentSettings(hflip=1.0),
    "vflip": AugmentSettings(vflip=1.0),
    "rotate": AugmentSettings(rotate=30.0),
    "shift": AugmentSettings(shift=0.2),
    "scale": AugmentSettings(scale=(0.7, 1.3)),
    "shear": AugmentSettings(shear=10.0),
    "crop": AugmentSettings(crop_scale=(0.3, 1.0)),
    "crop_resized": AugmentSettings(crop_scale=(0.3, 1.0), crop_size=(80, 72)),
    "all": AugmentSettings(hflip=0.5, vflip=0.5, rotate=20.0, shift=0.1, scale=(0.8, 1.2), shear=5.0,
                           crop_scale=(0.5, 1.0)),
    "photographic": PRESETS["photographic"],
    "seismic": PRESETS["seismic"],
}


# ----------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("name", list(GEOMETRIC))
@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_masks_stay_aligned_with_images(name, ignore_index):
    """An image equal to its binary mask stays equal to it (> 99 %) after augmentation, and every
    disagreement lies on a mask boundary.

    A single warp keeps them exactly aligned (bilinear > 0.5 picks the pixel nearest picks), but an
    affine followed by a resized crop resamples twice: the nearest-resampled mask rounds the
    intermediate edge half a pixel one way or the other, then the crop enlarges that; so edge pixels
    can disagree (0.4-0.6 % of the pixels of these 96-px masks; about twice that at 48 px).
    """
    settings = GEOMETRIC[name]
    masks = blob_masks(8, 96, seed=2)
    channels = 3 if settings.colour else 1
    images = masks.float().expand(-1, channels, -1, -1).contiguous()
    if settings.intensity:  # intensity steps would move the 0.5 threshold; this test is about geometry
        settings = AugmentSettings(**{k: v for k, v in settings.to_dict().items()
                                      if k in ("hflip", "vflip", "rotate", "shift", "scale", "shear",
                                               "crop_scale", "crop_ratio", "crop_size", "padding")})
    out_i, out_m = build_augmentation(settings, ignore_index)(images, masks, gen(5))
    valid = out_m != IGNORE
    assert valid.float().mean() > 0.5
    disagree = ((out_i[:, :1] > 0.5) != (out_m == 1)) & valid
    assert 1.0 - disagree.float().sum().item() / valid.sum().item() > 0.99
    m = out_m.float()
    p = torch.nn.functional.pad(m, (1, 1, 1, 1), mode="replicate")
    edge = (p[..., :-2, 1:-1] != m) | (p[..., 2:, 1:-1] != m) | (p[..., 1:-1, :-2] != m) | (p[..., 1:-1, 2:] != m)
    assert not (disagree & ~edge).any()
    assert not torch.equal(out_m, masks) if out_m.shape == masks.shape else True  # the geometry changed


def test_float_binary_masks_stay_binary_and_float():
    masks = blob_masks(8, 32, seed=4).float()
    aug = build_augmentation(GEOMETRIC["all"], None)
    _, out_m = aug(rand(8, 1, 32, 32), masks, gen(2))
    assert out_m.dtype == torch.float32
    assert set(out_m.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_integer_class_masks_keep_only_their_values(ignore_index):
    masks = blob_masks(12, 40, seed=3, classes=(3, 7, 12))
    aug = build_augmentation(PRESETS["photographic"], ignore_index)
    _, out_m = aug(rand(12, 3, 40, 40), masks, gen(1))
    assert out_m.dtype == torch.int64
    allowed = {0, 3, 7, 12} | ({ignore_index} if ignore_index is not None else set())
    assert set(out_m.unique().tolist()) <= allowed
    if ignore_index is not None:
        assert (out_m == ignore_index).any()  # rotation / zoom-out brought in outside pixels


# ----------------------------------------------------------------------------- ignore_index


def _affine_params(aug: KorniaAugment, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    main, _ = aug._pipelines(size)
    return next(p.data for p in main._params if p.name.startswith("RandomAffine"))


def test_ignore_index_exactly_where_pixels_came_from_outside():
    """Rotation of a full image: pixels whose source lies outside the frame, and only those, are ignore."""
    n, side = 16, 64
    aug = build_augmentation(AugmentSettings(rotate=45.0), IGNORE)
    masks = torch.ones(n, 1, side, side, dtype=torch.int64)
    _, out_m = aug(rand(n, 1, side, side), masks, gen(0))
    angles = _affine_params(aug, (side, side))["angle"].float()
    assert angles.abs().max() > 30  # the draw covers large rotations
    c = (side - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(side) - c, torch.arange(side) - c, indexing="ij")
    for k in range(n):
        t = math.radians(angles[k].item())
        # source of each output pixel: the inverse rotation about the centre (either sense: the
        # outside region of a square is symmetric under reflection about its diagonals and axes)
        sx = math.cos(t) * xs + math.sin(t) * ys
        sy = -math.sin(t) * xs + math.cos(t) * ys
        margin = torch.maximum(sx.abs(), sy.abs()) - (c + 0.5)  # > 0: outside the frame
        ignore = out_m[k, 0] == IGNORE
        clear = margin.abs() > 1.0  # pixels within a pixel of the frame edge may round either way
        assert torch.equal(ignore[clear], (margin > 0)[clear]), f"sample {k}, angle {angles[k]:.1f}"
        assert (out_m[k, 0][~ignore] == 1).all()
        if abs(angles[k]) > 10:
            corners = out_m[k, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
            assert (corners == IGNORE).all()
        assert out_m[k, 0, side // 2, side // 2] == 1


def test_without_ignore_index_outside_pixels_are_reflected():
    masks = blob_masks(8, 48, seed=6)
    aug = build_augmentation(AugmentSettings(rotate=45.0, scale=(0.6, 0.8)), None)
    out_i, out_m = aug(rand(8, 1, 48, 48), masks, gen(0))
    assert set(out_m.unique().tolist()) <= {0, 1}
    # reflection: the corners of a zoomed-out image hold image content, not zeros
    assert out_i[:, :, 0, 0].abs().sum() > 0


# ----------------------------------------------------------------------------- intensity, identity


def test_intensity_transforms_leave_masks_unchanged():
    settings = AugmentSettings(brightness=0.2, contrast=0.3, gamma=(0.7, 1.4), saturation=0.3, hue=0.1,
                               rgb_shift=0.1, blur_p=1.0, blur_sigma=(0.5, 1.5), noise_p=1.0, noise_std=0.05)
    assert not settings.geometric
    images, masks = rand(6, 3, 32, 32), blob_masks(6, 32, classes=(1, 2))
    for ignore_index in (None, IGNORE):
        out_i, out_m = build_augmentation(settings, ignore_index)(images, masks, gen(0))
        assert torch.equal(out_m, masks)
        assert not torch.equal(out_i, images)
        assert out_i.min() >= 0 and out_i.max() <= 1


def test_none_preset_is_identity():
    aug = build_augmentation(PRESETS["none"], IGNORE)
    assert aug.identity and not aug.geometric
    images, masks = rand(4, 3, 16, 16), blob_masks(4, 16)
    out_i, out_m = aug(images, masks, gen(0))
    assert torch.equal(out_i, images) and torch.equal(out_m, masks)


def test_seismic_preset_never_flips_vertically_but_does_flip_horizontally():
    n, side = 64, 32
    rows = torch.linspace(0, 1, side)[:, None].expand(side, side)
    images = (0.2 + 0.6 * rows)[None, None].repeat(n, 1, 1, 1)  # brighter with depth
    images[:, :, :, : side // 4] += 0.1  # and a brighter left edge
    masks = torch.zeros(n, 1, side, side, dtype=torch.int64)
    masks[:, :, side // 2:] = 1  # salt below
    masks[:, :, side // 2:, : side // 4] = 2

    def depth_order(settings):
        out_i, out_m = build_augmentation(settings, None)(images, masks, gen(3))
        top, bottom = out_i[:, 0, :8].mean(dim=(1, 2)), out_i[:, 0, -8:].mean(dim=(1, 2))
        mask_top = (out_m[:, 0, :8] != 0).float().mean(dim=(1, 2))
        left = (out_m[:, 0, -8:, :4] == 2).float().mean(dim=(1, 2))
        return top < bottom, mask_top < 0.5, left > 0.5

    img_ok, mask_ok, left = depth_order(PRESETS["seismic"])
    assert img_ok.all() and mask_ok.all()
    assert 0 < int(left.sum()) < n  # horizontal flips happen, to some samples
    # the check can see a vertical flip
    img_ok, mask_ok, _ = depth_order(settings_for("seismic", vflip=0.5))
    assert not img_ok.all() and not mask_ok.all()


# ----------------------------------------------------------------------------- reproducibility


def test_deterministic_with_the_same_seed_and_different_with_another():
    aug = build_augmentation(PRESETS["photographic"], IGNORE)
    images, masks = rand(4, 3, 32, 32), blob_masks(4, 32)
    a = aug(images, masks, gen(123))
    b = aug(images, masks, gen(123))
    c = aug(images, masks, gen(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    # a fresh pipeline object gives the same result too
    d = build_augmentation(PRESETS["photographic"], IGNORE)(images, masks, gen(123))
    assert torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])


def test_generator_advances_and_global_rng_is_untouched():
    aug = build_augmentation(PRESETS["seismic"], None)
    images, masks = rand(4, 1, 24, 24), blob_masks(4, 24)
    g = gen(7)
    state = torch.random.get_rng_state()
    first = aug(images, masks, g)
    second = aug(images, masks, g)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(first[0], second[0])  # successive batches differ
    # without a generator the global RNG drives it, and seeding that reproduces it
    torch.manual_seed(11)
    x = aug(images, masks)
    torch.manual_seed(11)
    y = aug(images, masks)
    assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


# ----------------------------------------------------------------------------- shapes, dtypes, devices


def test_shapes_preserved_and_crop_size_sets_both():
    images, masks = rand(5, 3, 40, 36), blob_masks(5, 40)[..., :36]
    out_i, out_m = build_augmentation(PRESETS["photographic"], IGNORE)(images, masks, gen(0))
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    settings = settings_for("photographic", crop_size=(24, 20))
    out_i, out_m = build_augmentation(settings, IGNORE)(images, masks, gen(0))
    assert out_i.shape == (5, 3, 24, 20) and out_m.shape == (5, 1, 24, 20)


def test_does_not_modify_inputs():
    aug = build_augmentation(PRESETS["photographic"], IGNORE)
    images, masks = rand(4, 3, 24, 24), blob_masks(4, 24)
    ic, mc = images.clone(), masks.clone()
    aug(images, masks, gen(0))
    assert torch.equal(images, ic) and torch.equal(masks, mc)


def test_runs_in_float32_inside_autocast():
    aug = build_augmentation(PRESETS["seismic"], None)
    images, masks = rand(4, 1, 32, 32), blob_masks(4, 32).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_i, out_m = aug(images, masks, gen(0))
    ref_i, ref_m = aug(images, masks, gen(0))
    assert out_i.dtype == torch.float32 and out_m.dtype == torch.float32
    assert torch.equal(out_i, ref_i) and torch.equal(out_m, ref_m)


def test_colour_settings_need_rgb():
    aug = build_augmentation(PRESETS["photographic"], None)
    with pytest.raises(ValueError, match="RGB"):
        aug(rand(2, 1, 16, 16), blob_masks(2, 16), gen(0))


def test_settings_validation_and_mapping():
    s = AugmentSettings.from_mapping({"hflip": 0.5, "scale": [0.9, 1.1], "crop_size": [32, 32]})
    assert s.scale == (0.9, 1.1) and s.crop_size == (32, 32)
    assert AugmentSettings.from_mapping(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown augment settings"):
        AugmentSettings.from_mapping({"hflipp": 0.5})
    with pytest.raises(ValueError, match="probability"):
        AugmentSettings(vflip=2.0)
    with pytest.raises(ValueError, match="preset"):
        settings_for("medical")
    assert PRESETS["seismic"].vflip == 0 and not PRESETS["seismic"].colour


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")
def test_cuda_matches_device_and_is_deterministic():
    aug = build_augmentation(PRESETS["photographic"], IGNORE)
    images, masks = rand(8, 3, 64, 64).cuda(), blob_masks(8, 64).cuda()
    a = aug(images, masks, gen(1))
    b = aug(images, masks, gen(1))
    assert a[0].device.type == "cuda" and a[1].device.type == "cuda"
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 1, IGNORE}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        c = aug(images, masks, gen(1))
    assert c[0].dtype == torch.float32


# ----------------------------------------------------------------------------- preview


def test_augment_preview_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    masks = [np.asarray(m[0]) for m in blob_masks(3, 40).numpy()]
    out = augment_preview(tmp_path / "sub" / "preview.png", images, masks, PRESETS["photographic"], n=6, seed=1)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grey = [rng.integers(0, 256, (32, 32), dtype=np.uint8)]
    out2 = augment_preview(tmp_path / "grey.png", grey, [np.ones((32, 32), bool)], PRESETS["seismic"], n=2)
    assert out2.is_file()
