"""Batched augmentation on the training device: tensors in, tensors out, no per-image Python.

One engine: the kornia presets of `augment_kornia` (`seismic`, `photographic`, `none`), with the
config's common fields (`augment.hflip`, `shift`, ...) overriding the preset's values.
`build_batch_augment` carries ignored pixels through (as a label that pixels from outside the image
take too) and returns them as a `valid` map; `random_crop` cuts training windows of large images.
"""

from __future__ import annotations

import dataclasses

import torch

from unetlab.config import AugmentConfig


def random_crop(images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None, size: int,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A random `size` x `size` window of each image (its own offset), the same window of its masks."""
    height, width = images.shape[-2:]
    if size > height or size > width:
        raise ValueError(f"augment.crop={size} is larger than the images ({width}x{height}); "
                         f"use at most {min(height, width)}")
    n = images.shape[0]
    tops = torch.randint(0, height - size + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (n,), generator=generator).tolist()

    def cut(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[k, :, t : t + size, l : l + size] for k, (t, l) in enumerate(zip(tops, lefts))])

    return cut(images), cut(masks), None if valid is None else cut(valid)


IGNORED = 255  # label of ignored pixels while a mask travels through a kornia preset (above any class index)


def augment_settings(cfg: AugmentConfig):
    """The preset named by `cfg.preset` with the fields `cfg` sets (not None) replaced."""
    from unetlab.data.augment_kornia import PRESETS

    overrides: dict[str, object] = {}
    if cfg.hflip is not None:
        overrides["hflip"] = 0.5 if cfg.hflip else 0.0
    if cfg.vflip is not None:
        overrides["vflip"] = 0.5 if cfg.vflip else 0.0
    if cfg.shift is not None:
        overrides["shift"] = cfg.shift
    if cfg.scale is not None:
        overrides["scale"] = (1.0 - cfg.scale, 1.0 + cfg.scale) if cfg.scale > 0 else None
    for name in ("brightness", "contrast"):
        if getattr(cfg, name) is not None:
            overrides[name] = getattr(cfg, name)
    if cfg.noise is not None:
        overrides["noise_std"] = cfg.noise
        overrides["noise_p"] = PRESETS[cfg.preset].noise_p or 0.3 if cfg.noise > 0 else 0.0
    return dataclasses.replace(PRESETS[cfg.preset], **overrides)


def build_batch_augment(cfg: AugmentConfig):
    """`augment(images, masks, valid, generator) -> (images, masks, valid)`; valid may be None."""
    from unetlab.data.augment_kornia import build_augmentation

    settings = augment_settings(cfg)
    plain = build_augmentation(settings, ignore_index=None)
    with_ignore = build_augmentation(settings, ignore_index=IGNORED)

    def run(images, masks, valid, generator):
        if valid is None:
            images, masks = plain(images, masks, generator)
            return images, masks, None
        labels = torch.where(valid.bool(), masks, torch.full_like(masks, IGNORED)).long()
        images, labels = with_ignore(images, labels, generator)  # pixels from outside become IGNORED too
        ignored = labels == IGNORED
        return images, torch.where(ignored, torch.zeros_like(labels), labels).float(), ~ignored

    return run
