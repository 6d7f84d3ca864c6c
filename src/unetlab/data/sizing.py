"""Bringing images to the model's input size and predictions back to the original size.

`pad` reflect-pads (101 -> 128 for TGS: the model sees every original pixel unchanged; the
best Kaggle solutions did this), `resize` interpolates (the seed's Keras kernel did this),
`native` keeps each image's own size (the models pad to a multiple of their stride and crop back;
large images then train on random crops, `augment.crop`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Sizing:
    def __init__(self, mode: str, size: int):
        if mode not in ("pad", "resize", "native"):
            raise ValueError(f"sizing mode must be 'pad', 'resize' or 'native', got {mode!r}")
        self.mode, self.size = mode, size

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        dh, dw = max(self.size - height, 0), max(self.size - width, 0)
        return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2  # left, right, top, bottom

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads(*x.shape[-2:])
        if not any(pads):
            return x
        # Reflect needs the pad to be smaller than the side; fall back to replicate for tiny inputs.
        fits = pads[0] < x.shape[-1] and pads[1] < x.shape[-1] and pads[2] < x.shape[-2] and pads[3] < x.shape[-2]
        return F.pad(x, pads, mode="reflect" if fits else "replicate")

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (N, C, H, W) -> model input size."""
        if self.mode == "native":
            return x
        if self.mode == "pad":
            return self._pad(x)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def masks(self, m: torch.Tensor) -> torch.Tensor:
        """Float 0/1 masks (N, 1, H, W) -> model input size, kept binary."""
        if self.mode == "native":
            return m
        if self.mode == "pad":
            return self._pad(m)
        return F.interpolate(m, size=(self.size, self.size), mode="nearest")

    def restore(self, y: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Model-size outputs (N, C, S, S) -> the original (N, C, height, width)."""
        if self.mode == "native":
            return y
        if self.mode == "pad":
            left, _, top, _ = self._pads(height, width)
            return y[..., top : top + height, left : left + width]
        return F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
