"""The classic U-Net of the TGS Salt seed (Ronneberger et al., 2015, at base width 16).

For a 128x128x1 input and the defaults: contraction blocks of two 3x3 convolutions then 2x2
max-pooling, 16 -> 32 -> 64 -> 128 channels, an 8x8x256 bottleneck; expansion by 2x2 transposed
convolutions, concatenation with the encoder map of the same level, two 3x3 convolutions; a 1x1
convolution to one logit per pixel (sigmoid at inference). Any input size works: the input is
padded to a multiple of 2**depth and the output cropped back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.models.blocks import SCSE, ConvBlock
from unetlab.models.registry import register_model


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad bottom/right so H and W are multiples of `multiple`; return the original (H, W)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (height, width)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 1, base_width: int = 16, depth: int = 4,
                 batch_norm: bool = True, dropout: float = 0.0, scse: bool = False):
        super().__init__()
        if not 1 <= depth <= 7:
            raise ValueError(f"depth must be 1..7, got {depth}")
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoder.append(ConvBlock(channels, width, batch_norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.bottleneck = ConvBlock(widths[-2], widths[-1], batch_norm)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.attention = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsample.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoder.append(ConvBlock(2 * widths[level], widths[level], batch_norm))
            self.attention.append(SCSE(widths[level]) if scse else nn.Identity())
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, 2**self.depth)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.dropout(self.pool(x))
        x = self.bottleneck(x)
        for up, block, attention, skip in zip(self.upsample, self.decoder, self.attention, reversed(skips)):
            x = attention(block(torch.cat([up(x), skip], dim=1)))
            x = self.dropout(x)
        return self.head(x)[..., :height, :width]


@register_model("unet")
def unet(in_channels: int = 1, classes: int = 1, base_width: int = 16, depth: int = 4, batch_norm: bool = True,
         dropout: float = 0.0, scse: bool = False) -> UNet:
    return UNet(in_channels, classes, base_width, depth, batch_norm, dropout, scse)
