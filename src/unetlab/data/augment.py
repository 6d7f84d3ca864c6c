"""Batched augmentation on the training device: tensors in, tensors out, no per-image Python.

`augment.preset` names the pipeline: `builtin` (this module's BatchAugment, driven by the
augment.* fields: flips, shift/zoom, brightness/contrast; the measured TGS recipe uses it) or one
of the kornia presets of `augment_kornia` (`seismic`, `photographic`, `none`).
`build_batch_augment` hides the difference from the trainer, ignored pixels included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unetlab.config import AugmentConfig


class BatchAugment:
    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def geometric(self) -> bool:
        return self.cfg.shift > 0 or self.cfg.scale > 0

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images float (N, C, H, W), masks float 0/1 (N, 1, H, W) on the same device."""
        cfg, n, device = self.cfg, images.shape[0], images.device

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device="cpu").to(device)

        if cfg.hflip:
            flip = uniform(n) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
        if cfg.vflip:
            flip = uniform(n) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-2), images)
            masks = torch.where(flip[:, None, None, None], masks.flip(-2), masks)
        if self.geometric:
            zoom = 1.0 + (uniform(n) * 2 - 1) * cfg.scale
            shift = (uniform(n, 2) * 2 - 1) * cfg.shift * 2  # affine_grid coordinates span 2 per side
            theta = torch.zeros(n, 2, 3, device=device)
            theta[:, 0, 0] = 1.0 / zoom
            theta[:, 1, 1] = 1.0 / zoom
            theta[:, :, 2] = shift
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="reflection", align_corners=False)
        if cfg.brightness > 0 or cfg.contrast > 0:
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            gain = 1.0 + (uniform(n, 1, 1, 1) * 2 - 1) * cfg.contrast
            offset = (uniform(n, 1, 1, 1) * 2 - 1) * cfg.brightness
            images = (images - mean) * gain + mean + offset
        return images, masks


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


def build_batch_augment(cfg: AugmentConfig):
    """`augment(images, masks, valid, generator) -> (images, masks, valid)`; valid may be None."""
    if cfg.preset == "builtin":
        builtin = BatchAugment(cfg)

        def run_builtin(images, masks, valid, generator):
            if valid is None:
                images, masks = builtin(images, masks, generator)
                return images, masks, None
            # The valid map rides along as a second mask channel through the same transforms.
            images, both = builtin(images, torch.cat([masks, valid.float()], dim=1), generator)
            return images, both[:, :1], both[:, 1:] > 0.5

        return run_builtin
    from unetlab.data.augment_kornia import PRESETS, build_augmentation

    plain = build_augmentation(PRESETS[cfg.preset], ignore_index=None)
    with_ignore = build_augmentation(PRESETS[cfg.preset], ignore_index=IGNORED)

    def run_kornia(images, masks, valid, generator):
        if valid is None:
            images, masks = plain(images, masks, generator)
            return images, masks, None
        labels = torch.where(valid.bool(), masks, torch.full_like(masks, IGNORED)).long()
        images, labels = with_ignore(images, labels, generator)  # pixels from outside become IGNORED too
        ignored = labels == IGNORED
        return images, torch.where(ignored, torch.zeros_like(labels), labels).float(), ~ignored

    return run_kornia
