"""A plain fully convolutional network: same-resolution 3x3 convolutions, no pooling, no decoder.

The design question it answers is "does the encoder-decoder earn its keep?". The first phase of
the photographic-segmentation report used such a stack, 3 -> 30 -> 90 -> 270 -> 810 -> classes
channels, every layer at the input's resolution. Here every hidden layer is

    conv3x3 (dilation d, padding d, so the size is preserved) -> norm -> ReLU [-> Dropout2d]

and a 1x1 convolution maps the last width to `classes` logits per pixel. Nothing is pooled or
strided, so any input size works (1x1 too, except with instance norm) and no padding to a
multiple is needed.

Receptive field: 1 + 2 * sum(dilations) pixels, i.e. 9 px for four undilated layers and 31 px for
dilations (1, 2, 4, 8), against 188 px for the default 4-level U-Net (18, 44, 92 px at depths 1-3;
see `unetlab.models.summary.receptive_field`). Dilations let the FCN's receptive field be matched
to the U-Net's without pooling: e.g. dilations (1, 2, 4, 8, 16, 32, 31) give 1 + 2*94 = 189 px.
That is the field of the convolutions: with norm "group" or "instance" every output also depends
on the whole image through the normalisation statistics (in eval mode too), batch norm in eval mode
does not.

Cost: the original widths are expensive because all of them run at full resolution. Per pixel the
default `fcn` does 9 * (1*30 + 30*90 + 90*270 + 270*810) + 810 = 2,212,380 multiply-accumulates,
so one 128x128 single-channel image costs 2 * 2,212,380 * 128**2 ~= 72.5 GFLOPs per forward pass
(about 18 GFLOPs at 64x64, 290 at 256x256) for 2.21 M parameters: 48 times the 1.51 GFLOPs that
the default U-Net (1.94 M parameters) spends on the same image. `fcn-small` (four layers of 32
channels, 28 k parameters) costs 2 * (9*(1*32 + 3*32*32) + 32) * 128**2 ~= 0.92 GFLOPs at 128x128
and trains on a CPU.

Registered names (`fcn` and its variants: all take the same keywords as `FCN`, only the defaults differ):

* `fcn`: widths (30, 90, 270, 810), no dilation: the report's network;
* `fcn-dilated`: the same widths, dilations (1, 2, 4, 8) (receptive field 31 px);
* `fcn-small`: widths (32, 32, 32, 32), no dilation.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn as nn

from unetlab.models.blocks import NORMS, norm_layers
from unetlab.models.registry import register_model, register_variant

DEFAULT_WIDTHS: tuple[int, ...] = (30, 90, 270, 810)
DILATED: tuple[int, ...] = (1, 2, 4, 8)
SMALL_WIDTHS: tuple[int, ...] = (32, 32, 32, 32)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(option: str, value: object) -> int:
    if not _is_int(value) or int(value) < 1:  # type: ignore[call-overload]
        raise ValueError(f"{option} must be a positive integer, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _int_tuple(option: str, values: object) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{option} must be a non-empty sequence of positive integers, got {values!r}")
    for value in values:
        if not _is_int(value) or int(value) < 1:
            raise ValueError(f"{option} must be a non-empty sequence of positive integers, got {values!r}")
    return tuple(int(value) for value in values)


class FCN(nn.Module):
    """Same-resolution stack of 3x3 convolutions + norm + ReLU, then a 1x1 convolution to `classes`.

    Args:
        in_channels: channels of the input image (1 for seismic, 3 for photographs).
        classes: output logits per pixel.
        widths: output channels of each hidden 3x3 layer, e.g. (30, 90, 270, 810).
        dilations: None (all 1) or one dilation per layer, same length as `widths`; padding equals
            the dilation so the size is preserved. The receptive field is 1 + 2 * sum(dilations).
        norm: "batch" | "group" | "instance" | "none" after each 3x3 convolution (the convolution
            has a bias only with "none"); the layers are the U-Net's (`blocks.NORMS`). Instance
            norm needs more than one pixel (in any mode) and batch norm in training more than one
            value per channel (N*H*W > 1), so a 1x1 image works with "batch" (eval, or a batch of 2+), "group" and "none", not "instance".
        dropout: probability of Dropout2d after each hidden layer (0 = none), in [0, 1).

    Invalid options raise ValueError naming the option (create_model turns it into a ConfigError).
    """

    def __init__(self, in_channels: int = 1, classes: int = 1, widths: Sequence[int] = DEFAULT_WIDTHS,
                 dilations: Sequence[int] | None = None, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        classes = _positive_int("classes", classes)
        widths = _int_tuple("widths", widths)
        if dilations is None:
            dilations = (1,) * len(widths)
        else:
            dilations = _int_tuple("dilations", dilations)
            if len(dilations) != len(widths):
                raise ValueError(f"dilations must have one entry per layer of widths ({len(widths)}), "
                                 f"got {len(dilations)}: {dilations!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        dropout = float(dropout)

        self.in_channels, self.classes = in_channels, classes
        self.widths, self.dilations, self.norm = widths, dilations, norm
        layers: list[nn.Module] = []
        channels = in_channels
        for width, dilation in zip(widths, dilations):
            layers.append(nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation, bias=norm == "none"))
            layers += norm_layers(norm, width)
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, classes, 1)

    @property
    def receptive_field(self) -> int:
        """Side of the receptive field in pixels: 1 + 2 * sum(dilations)."""
        return 1 + 2 * sum(self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("fcn")
def fcn(in_channels: int = 1, classes: int = 1, widths: tuple[int, ...] = DEFAULT_WIDTHS,
        dilations: tuple[int, ...] | None = None, norm: str = "batch", dropout: float = 0.0) -> FCN:
    """The report's plain FCN: 30 -> 90 -> 270 -> 810 channels at full resolution (~72.5 GFLOPs at 128x128)."""
    return FCN(in_channels, classes, widths, dilations, norm, dropout)


# Variants of `fcn` (registry.register_variant): the same keywords, other defaults.
fcn_dilated = register_variant("fcn-dilated", base="fcn", dilations=DILATED)
fcn_small = register_variant("fcn-small", base="fcn", widths=SMALL_WIDTHS)
