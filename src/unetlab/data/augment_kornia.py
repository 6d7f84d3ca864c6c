"""Batched, on-device augmentation built on kornia, with presets per task.

    from unetlab.data.augment_kornia import PRESETS, build_augmentation
    augment = build_augmentation(PRESETS["seismic"], ignore_index=None)
    images, masks = augment(images, masks, generator)       # tensors in, tensors out, same device

`AugmentSettings` is a frozen dataclass of plain numbers (a pydantic section can mirror it field by
field; `AugmentSettings.from_mapping` accepts such a section's `model_dump()`, lists for tuples).
Every transform is off at 0 / None. The pipeline, in order:

    horizontal flip, vertical flip              (p each)
    affine: rotate, shift, scale, shear         (applied to every sample when any is on; ranges hold identity)
    random resized crop                         (crop_scale, crop_ratio; crop_size or the input size)
    brightness (additive), contrast (multiplicative), gamma,
    saturation, hue, rgb_shift                  (colour: 3-channel RGB only)
    gaussian blur (blur_p, blur_sigma), gaussian noise (noise_p, noise_std)

Masks
    kornia 0.9's `AugmentationSequential(..., data_keys=["input", "mask"])` resamples the "mask" key
    with NEAREST in every geometric step (flip, affine, resized crop) and returns it in its own
    dtype: float 0/1 masks stay 0/1, int64 class masks keep exactly their values (integer labels go
    through float32, exact up to 2**24). Intensity steps do not touch masks. Both are checked in
    tests/data/test_augment_kornia.py.

Pixels from outside the image (rotation, shift, zoom out, shear)
    Images are padded by reflection (`padding="reflection"`, the default, as in
    `unetlab.data.augment.BatchAugment`; `padding="zeros"` is the other choice): seismic
    reflectors continue across the border instead of ending at a black wedge. Masks:
    - `ignore_index=None` (binary tasks): the mask is padded by reflection like the image, so the
      label of a reflected pixel is the label of the pixel it mirrors and image and mask agree;
    - `ignore_index=k`: an all-ones validity map is warped with the same parameters by a twin
      pipeline whose affine pads with zeros (nearest resampling, kornia's parameter replay), and
      the mask is set to `k` wherever the validity is 0. The loss then skips those pixels.

Reproducibility
    kornia draws its parameters (and the noise) from torch's global RNG. Each call takes one
    63-bit seed from `generator` (or from the global RNG when `generator` is None), then runs the
    pipeline inside `torch.random.fork_rng` after `torch.manual_seed(seed)`: the same generator
    state gives the same result (on one device type and kornia version), and the caller's global
    RNG state is left as it was.

Precision
    The pipeline runs in float32 with autocast disabled (a bf16 training loop may call it inside
    autocast); images come back in their input dtype, clipped to [0, 1] when an intensity step is on.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "AugmentSettings",
    "PRESETS",
    "KorniaAugment",
    "build_augmentation",
    "settings_for",
    "augment_preview",
]

_PAIRS = ("scale", "crop_scale", "crop_ratio", "crop_size", "gamma", "blur_sigma")


@dataclass(frozen=True)
class AugmentSettings:
    """Every augmentation knob; 0 / None turns a transform off. Ranges are (low, high)."""

    hflip: float = 0.0  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip (seismic: 0, depth has a direction)
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    shift: float = 0.0  # max translation as a share of the side, each axis
    scale: tuple[float, float] | None = None  # zoom factor range, e.g. (0.9, 1.1)
    shear: float = 0.0  # degrees, uniform in [-shear, shear] on each axis
    padding: Literal["reflection", "zeros"] = "reflection"  # what images show outside the source
    crop_scale: tuple[float, float] | None = None  # random resized crop: area share range; None = off
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect ratio range
    crop_size: tuple[int, int] | None = None  # its output (H, W); None = the input size
    brightness: float = 0.0  # additive offset in [-brightness, brightness]
    contrast: float = 0.0  # multiplicative gain in [1 - contrast, 1 + contrast]
    gamma: tuple[float, float] | None = None  # gamma range, e.g. (0.8, 1.25)
    saturation: float = 0.0  # RGB only: factor in [1 - saturation, 1 + saturation]
    hue: float = 0.0  # RGB only: shift in [-hue, hue] (share of the colour circle, <= 0.5)
    rgb_shift: float = 0.0  # RGB only: per-channel additive shift in [-rgb_shift, rgb_shift]
    blur_p: float = 0.0  # probability of a gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # its sigma range in pixels
    noise_p: float = 0.0  # probability of additive gaussian noise
    noise_std: float = 0.0  # its standard deviation (images in [0, 1])

    def __post_init__(self) -> None:
        # YAML / pydantic hand over lists; keep the dataclass hashable and comparable.
        for name in _PAIRS:
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2:
                    raise ValueError(f"augment.{name} must be a pair (low, high), got {value!r}")
                cast = int if name == "crop_size" else float
                object.__setattr__(self, name, (cast(value[0]), cast(value[1])))
        for name in ("hflip", "vflip", "blur_p", "noise_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("rotate", "shift", "shear", "brightness", "contrast", "saturation", "hue", "rgb_shift",
                     "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.shift > 0.5:
            raise ValueError(f"augment.shift is a share of the side in [0, 0.5], got {self.shift}")
        if self.contrast >= 1.0 or self.saturation >= 1.0:
            raise ValueError("augment.contrast and augment.saturation must be < 1 (a factor 1 +- value)")
        if self.hue > 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        if self.padding not in ("reflection", "zeros"):
            raise ValueError(f"augment.padding must be 'reflection' or 'zeros', got {self.padding!r}")
        for name in ("scale", "crop_scale", "crop_ratio", "gamma", "blur_sigma"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1]:
                raise ValueError(f"augment.{name} must satisfy 0 < low <= high, got {value!r}")
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ValueError(f"augment.crop_size is an (H, W) in pixels, got {self.crop_size!r}")
        if self.crop_scale is not None and self.crop_scale[1] > 1.0:
            raise ValueError(f"augment.crop_scale is an area share in (0, 1], got {self.crop_scale!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "AugmentSettings":
        """From a dict (e.g. a pydantic section's `model_dump()`); unknown keys are refused by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown augment settings {unknown}; known: {sorted(names)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def geometric(self) -> bool:
        return self.flips or self.affine or self.crop_scale is not None

    @property
    def flips(self) -> bool:
        return self.hflip > 0 or self.vflip > 0

    @property
    def affine(self) -> bool:
        return self.rotate > 0 or self.shift > 0 or self.shear > 0 or (
            self.scale is not None and self.scale != (1.0, 1.0))

    @property
    def colour(self) -> bool:
        return self.saturation > 0 or self.hue > 0 or self.rgb_shift > 0

    @property
    def intensity(self) -> bool:
        return (self.brightness > 0 or self.contrast > 0 or self.gamma is not None or self.colour
                or (self.blur_p > 0) or (self.noise_p > 0 and self.noise_std > 0))

    @property
    def identity(self) -> bool:
        return not (self.geometric or self.intensity)


PRESETS: dict[str, AugmentSettings] = {
    # Seismic sections: depth has a direction (no vertical flip), amplitude is not colour (none);
    # small shifts and zooms, mild gain changes and a little noise.
    "seismic": AugmentSettings(
        hflip=0.5, vflip=0.0, shift=0.1, scale=(0.9, 1.1), brightness=0.1, contrast=0.1,
        noise_p=0.3, noise_std=0.02,
    ),
    # Photographs: the full set (no vertical flip: scenes have a sky and a ground).
    "photographic": AugmentSettings(
        hflip=0.5, vflip=0.0, rotate=15.0, shift=0.1, scale=(0.8, 1.2), shear=5.0,
        crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3), crop_size=None,
        brightness=0.2, contrast=0.2, gamma=(0.8, 1.25), saturation=0.3, hue=0.05, rgb_shift=0.05,
        blur_p=0.2, blur_sigma=(0.1, 1.5), noise_p=0.2, noise_std=0.03,
    ),
    "none": AugmentSettings(),
}


def settings_for(preset: str, **overrides: Any) -> AugmentSettings:
    """A preset by name with some fields replaced: `settings_for("seismic", vflip=0.5)`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides) if overrides else PRESETS[preset]


def _pipeline(s: AugmentSettings, size: tuple[int, int], padding: str):
    """The kornia AugmentationSequential for settings `s` and input size (H, W)."""
    import kornia.augmentation as K

    steps: list[torch.nn.Module] = []
    if s.hflip > 0:
        steps.append(K.RandomHorizontalFlip(p=s.hflip))
    if s.vflip > 0:
        steps.append(K.RandomVerticalFlip(p=s.vflip))
    if s.affine:
        steps.append(K.RandomAffine(
            degrees=s.rotate,
            translate=(s.shift, s.shift) if s.shift > 0 else None,
            scale=s.scale if s.scale is not None and s.scale != (1.0, 1.0) else None,
            shear=(-s.shear, s.shear, -s.shear, s.shear) if s.shear > 0 else None,
            padding_mode=padding, p=1.0,
        ))
    if s.crop_scale is not None:
        # align_corners=False: kornia's default (True) resizes the image on a grid half a pixel off
        # the one its nearest mask resize uses, which misaligns masks by up to half an output pixel
        steps.append(K.RandomResizedCrop(s.crop_size or size, scale=s.crop_scale, ratio=s.crop_ratio,
                                         align_corners=False, p=1.0))
    if s.brightness > 0:
        steps.append(K.RandomBrightness((1.0 - s.brightness, 1.0 + s.brightness), p=1.0))
    if s.contrast > 0:
        steps.append(K.RandomContrast((1.0 - s.contrast, 1.0 + s.contrast), p=1.0))
    if s.gamma is not None:
        steps.append(K.RandomGamma(s.gamma, p=1.0))
    if s.saturation > 0:
        steps.append(K.RandomSaturation((1.0 - s.saturation, 1.0 + s.saturation), p=1.0))
    if s.hue > 0:
        steps.append(K.RandomHue((-s.hue, s.hue), p=1.0))
    if s.rgb_shift > 0:
        r = s.rgb_shift
        steps.append(K.RandomRGBShift(r, r, r, p=1.0))
    if s.blur_p > 0:
        k = 2 * math.ceil(3 * s.blur_sigma[1]) + 1
        steps.append(K.RandomGaussianBlur((k, k), s.blur_sigma, p=s.blur_p))
    if s.noise_p > 0 and s.noise_std > 0:
        steps.append(K.RandomGaussianNoise(mean=0.0, std=s.noise_std, p=s.noise_p))
    return K.AugmentationSequential(*steps, data_keys=["input", "mask"])


class KorniaAugment:
    """Callable `(images, masks, generator) -> (images, masks)`; see the module docstring."""

    def __init__(self, settings: AugmentSettings, ignore_index: int | None = None):
        self.settings = settings
        self.ignore_index = ignore_index
        self._cache: dict[tuple[int, int], tuple[Any, Any]] = {}

    @property
    def geometric(self) -> bool:
        return self.settings.geometric

    @property
    def identity(self) -> bool:
        return self.settings.identity

    def _pipelines(self, size: tuple[int, int]):
        if size not in self._cache:
            main = _pipeline(self.settings, size, self.settings.padding)
            # the twin replays main's parameters on a validity map, padding with zeros
            twin = (_pipeline(self.settings, size, "zeros")
                    if self.ignore_index is not None and self.settings.affine else None)
            self._cache[size] = (main, twin)
        return self._cache[size]

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images float (N, C, H, W) in [0, 1]; masks (N, 1, H, W) float 0/1 or int64 class indices."""
        if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"expected images (N, C, H, W) and masks (N, 1, H, W), got {tuple(images.shape)} "
                             f"and {tuple(masks.shape)}")
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} differ in batch or size")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
        s = self.settings
        if s.colour and images.shape[1] != 3:
            raise ValueError(f"saturation, hue and rgb_shift need 3-channel RGB images, got {images.shape[1]} "
                             "channel(s); set them to 0 (the 'seismic' preset has none)")
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
        if s.identity or images.shape[0] == 0:
            return images, masks
        main, twin = self._pipelines((int(images.shape[-2]), int(images.shape[-1])))
        device = images.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"), \
                torch.autocast(device_type=device.type, enabled=False):
            torch.manual_seed(seed)
            out_i, out_m = main(images.float(), masks)
            if twin is not None:
                ones = torch.ones(masks.shape, dtype=torch.float32, device=device)
                valid = twin(ones, params=main._params, data_keys=["mask"])
                out_m = out_m.masked_fill(valid == 0, self.ignore_index)
        if s.intensity:
            out_i = out_i.clamp(0.0, 1.0)  # not in place: kornia may hand back the input
        return out_i.to(images.dtype), out_m.to(masks.dtype)


def build_augmentation(settings: AugmentSettings, ignore_index: int | None = None) -> KorniaAugment:
    """The batched augmentation for `settings`; `ignore_index` marks pixels that came from outside."""
    if not isinstance(settings, AugmentSettings):
        raise TypeError(f"settings must be an AugmentSettings, got {type(settings).__name__}")
    return KorniaAugment(settings, ignore_index)


def augment_preview(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    settings: AugmentSettings,
    n: int = 8,
    seed: int = 0,
    ignore_index: int | None = None,
    ncols: int = 4,
) -> Path:
    """Write a PNG grid of `n` augmented (image, mask) pairs, mask boundaries drawn on the images.

    images: uint8 (H, W) grey or (H, W, 3) RGB; masks: (H, W) bool / 0-1 / class indices (non-zero,
    non-ignore pixels are outlined). Sample k is an augmentation of image k % len(images), so a short
    list shows several draws of each image. Deterministic given `seed`.
    """
    from unetlab.viz import save_sample_grid

    images, masks = list(images), list(masks)
    if not images:
        raise ValueError("augment_preview needs at least one image")
    if len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    augment = build_augmentation(settings, ignore_index)
    generator = torch.Generator().manual_seed(seed)
    out_images, out_masks, labels = [], [], []
    for k in range(n):
        i = k % len(images)
        img = np.asarray(images[i])
        if img.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8, got {img.dtype}")
        x = torch.from_numpy(img.astype(np.float32) / 255.0)
        x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
        m = torch.from_numpy(np.asarray(masks[i]).astype(np.int64))[None, None]
        ai, am = augment(x, m, generator)
        arr = (ai[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        mk = am[0, 0].numpy()
        fg = mk != 0 if ignore_index is None else (mk != 0) & (mk != ignore_index)
        out_images.append(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        out_masks.append(fg)
        labels.append(f"image {i}  draw {k // len(images) + 1}")
    return save_sample_grid(path, out_images, out_masks, labels=labels, ncols=ncols)
