"""Building blocks shared by the U-Net family.

Every option a model offers by name is a small named piece in one of the tables below (`NORMS`,
`BLOCKS`, ...); `choose` looks a name up and refuses an unknown one with a `ValueError` that names
the option and lists the allowed values.
"""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

import torch
import torch.nn as nn

T = TypeVar("T")


def choose(option: str, value: object, table: Mapping[object, T]) -> T:
    """`table[value]`, or a ValueError naming `option` and its allowed values."""
    try:
        return table[value]  # type: ignore[index]
    except (KeyError, TypeError):  # TypeError: an unhashable value such as a list
        allowed = ", ".join(repr(key) for key in table)
        raise ValueError(f"{option} must be one of {allowed}; got {value!r}") from None


# ----------------------------------------------------------------------------- normalisation


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups (at most `max_groups`, at least 2 channels each) dividing `channels`."""
    # At least 2 channels per group: one channel per group would be instance norm, which fails on 1x1 maps.
    groups = max((g for g in range(1, min(max_groups, channels // 2) + 1) if channels % g == 0), default=1)
    return nn.GroupNorm(groups, channels)


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """Per-image, per-channel normalisation with a learned scale and shift.

    It needs more than one pixel per channel: keep the bottleneck larger than 1x1.
    """
    return nn.InstanceNorm2d(channels, affine=True)


# name -> factory(channels), or None for no normalisation layer at all (the convolutions get a bias).
NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "batch": nn.BatchNorm2d,
    "group": group_norm,
    "instance": instance_norm,
    "none": None,
}


def norm_layers(norm: str, channels: int) -> list[nn.Module]:
    """The normalisation layer for `channels` as a list: empty for "none", so no index is spent on it."""
    factory = choose("norm", norm, NORMS)
    return [] if factory is None else [factory(channels)]


def conv_norm_relu(in_channels: int, out_channels: int, kernel: int, norm: str, stride: int = 1,
                   padding: int | None = None) -> list[nn.Module]:
    """[conv, norm, ReLU]; the convolution has a bias only without normalisation (a norm's shift replaces it)."""
    padding = kernel // 2 if padding is None else padding
    norms = norm_layers(norm, out_channels)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=not norms)
    return [conv, *norms, nn.ReLU(inplace=True)]


# ----------------------------------------------------------------------------- convolution blocks


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional normalisation and ReLU (the seed's "plain" block).

    With a norm the layers are indexed 0 conv, 1 norm, 2 ReLU, 3 conv, 4 norm, 5 ReLU; without one
    0 conv, 1 ReLU, 2 conv, 3 ReLU: the seed's state-dict keys for batch_norm=True / False.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(*conv_norm_relu(in_channels, out_channels, 3, norm),
                         *conv_norm_relu(out_channels, out_channels, 3, norm))
        self.in_channels, self.out_channels = in_channels, out_channels


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al., 2016): relu(body(x) + shortcut(x)).

    body = conv-norm-ReLU-conv-norm. The shortcut is the identity where the channel count stays the
    same and a 1x1 convolution (+ norm) projecting to `out_channels` only where it changes.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        second = conv_norm_relu(out_channels, out_channels, 3, norm)[:-1]  # no ReLU before the sum
        self.body = nn.Sequential(*conv_norm_relu(in_channels, out_channels, 3, norm), *second)
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(*conv_norm_relu(in_channels, out_channels, 1, norm)[:-1])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


# name -> block(in_channels, out_channels, norm)
BLOCKS: dict[str, Callable[[int, int, str], nn.Module]] = {"plain": ConvBlock, "residual": ResidualBlock}


# ----------------------------------------------------------------------------- resampling


class StridedDown(nn.Sequential):
    """A learned 2x downsampling: a stride-2 convolution keeping the channel count, then norm and ReLU.

    kernel 3: 3x3, padding 1 (overlapping windows); kernel 2: 2x2, padding 0 (the windows of a 2x2 pool).
    """

    def __init__(self, channels: int, kernel: int = 3, norm: str = "batch"):
        padding = choose("strided_kernel", kernel, {3: 1, 2: 0})
        super().__init__(*conv_norm_relu(channels, channels, kernel, norm, stride=2, padding=padding))


class BilinearUp(nn.Sequential):
    """2x bilinear upsampling, then a 3x3 convolution to `out_channels`, norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         *conv_norm_relu(in_channels, out_channels, 3, norm))


# ----------------------------------------------------------------------------- attention


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation (Roy et al., 2018), used by top TGS solutions."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_gate(x) + x * self.spatial_gate(x)
