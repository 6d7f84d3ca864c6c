"""Tests for the model summary: parameters, GFLOPs per image and the empirical receptive field."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
import torch.nn as nn
from rich.console import Console

from unetlab.models.fcn import FCN
from unetlab.models.registry import create_model, list_models
from unetlab.models.summary import (
    count_flops, count_parameters, format_count, model_table, print_model_table, receptive_field,
)
from unetlab.models.unet import UNet

G = 1e9


# ----------------------------------------------------------------------------- parameters and FLOPs


def test_count_parameters():
    assert count_parameters(nn.Conv2d(1, 16, 3)) == 16 * 9 + 16
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, nn.ReLU(), shared)) == 20  # shared weights once


def test_flops_single_conv():
    assert count_flops(nn.Conv2d(1, 16, 3, padding=1), 1, 128, 128) * G == pytest.approx(2 * 16 * 9 * 128 * 128)


def test_flops_transposed_conv():
    up = nn.ConvTranspose2d(32, 16, 2, stride=2)
    assert count_flops(up, 32, 64, 64) * G == pytest.approx(2 * 32 * 16 * 4 * 64 * 64)
    grouped = nn.ConvTranspose2d(8, 12, 3, stride=2, groups=4)  # each input element feeds 12/4 * 9 weights
    assert count_flops(grouped, 8, 10, 10) * G == pytest.approx(2 * 8 * 10 * 10 * 3 * 9)


def test_flops_stride_groups_dilation():
    strided = nn.Conv2d(8, 4, 3, stride=2, padding=1)  # 32x32 -> 16x16
    assert count_flops(strided, 8, 32, 32) * G == pytest.approx(2 * 4 * 16 * 16 * 8 * 9)
    odd = nn.Conv2d(3, 5, 3, stride=2)  # 37x53 -> 18x26
    assert count_flops(odd, 3, 37, 53) * G == pytest.approx(2 * 5 * 18 * 26 * 3 * 9)
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)
    assert count_flops(grouped, 8, 10, 10) * G == pytest.approx(2 * 16 * 10 * 10 * 2 * 9)
    dilated = nn.Conv2d(2, 3, 3, dilation=2)  # 20x20 -> 16x16, same MACs per output as undilated
    assert count_flops(dilated, 2, 20, 20) * G == pytest.approx(2 * 3 * 16 * 16 * 2 * 9)


def test_flops_linear_and_ignored_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    conv = 2 * 4 * 9 * 8 * 8
    assert count_flops(model, 1, 8, 8) * G == pytest.approx(conv + 2 * 64 * 10)


def test_flops_module_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    assert count_flops(Twice(), 2, 8, 8) * G == pytest.approx(2 * 2 * (2 * 2 * 9 * 64))


def test_flops_restores_training_mode_and_leaves_grads_alone():
    model = FCN(widths=(4, 4)).train()
    model.features[1].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    count_flops(model, 1, 16, 16)
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())


def test_flops_of_fcns_by_hand():
    per_pixel = 9 * (1 * 30 + 30 * 90 + 90 * 270 + 270 * 810) + 810
    assert per_pixel == 2_212_380
    fcn = FCN(widths=(30, 90, 270, 810))
    # a small image keeps the test fast; the count is linear in the number of pixels
    assert count_flops(fcn, 1, 16, 16) * G == pytest.approx(2 * per_pixel * 16 * 16)
    assert 2 * per_pixel * 128 * 128 / G == pytest.approx(72.5, abs=0.05)
    small = create_model("fcn-small")
    assert count_flops(small, 1, 128, 128) * G == pytest.approx(2 * (9 * (32 + 3 * 32 * 32) + 32) * 128 * 128)
    dilated = FCN(widths=(4, 4), dilations=(2, 8))  # dilation changes nothing
    assert count_flops(dilated, 1, 20, 20) == pytest.approx(count_flops(FCN(widths=(4, 4)), 1, 20, 20))


def classic_unet_macs(size: int = 128, base: int = 16, depth: int = 4) -> int:
    """Multiply-accumulates of the seed's U-Net worked out by hand from its description."""
    widths = [base * 2**level for level in range(depth + 1)]
    res = [size // 2**level for level in range(depth + 1)]
    macs, c_in = 0, 1
    for level in range(depth + 1):  # encoder blocks and the bottleneck: two 3x3 convolutions
        w = widths[level]
        macs += res[level] ** 2 * 9 * (c_in * w + w * w)
        c_in = w
    for level in range(depth):  # 2x2 transposed convolution from below, then two 3x3 on the concatenation
        w = widths[level]
        macs += res[level + 1] ** 2 * widths[level + 1] * w * 4
        macs += res[level] ** 2 * 9 * (2 * w * w + w * w)
    return macs + res[0] ** 2 * widths[0]  # 1x1 head


def test_flops_of_default_unet_by_hand():
    unet = create_model("unet")  # the seed's U-Net: 16 -> 256 channels, 4 levels
    assert count_flops(unet, 1, 128, 128) * G == pytest.approx(2 * classic_unet_macs(128))
    assert count_flops(unet, 1, 128, 128) == pytest.approx(1.507, abs=0.001)
    # 101x101 is padded to 112x112 inside the model, and the FLOPs say so
    assert count_flops(unet, 1, 101, 101) * G == pytest.approx(2 * classic_unet_macs(112))


# ----------------------------------------------------------------------------- receptive field


def test_receptive_field_of_convs():
    torch.manual_seed(0)
    assert receptive_field(nn.Conv2d(1, 1, 3, padding=1), 1) == (3, False)
    assert receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)), 1) == (5, False)
    assert receptive_field(nn.Conv2d(1, 1, 3, padding=2, dilation=2), 1) == (5, False)
    assert receptive_field(nn.Conv2d(2, 3, 5, padding=2), 2) == (5, False)
    stack = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=d, dilation=d) for d in (1, 2, 4, 8)])
    assert receptive_field(stack, 1) == (1 + 2 * (1 + 2 + 4 + 8), False) == (31, False)


def test_receptive_field_of_fcns():
    torch.manual_seed(0)
    assert receptive_field(FCN(widths=(8, 8, 8, 8)), 1) == (9, False)
    assert receptive_field(FCN(widths=(8, 8, 8, 8), dilations=(1, 2, 4, 8)), 1) == (31, False)
    assert receptive_field(FCN(in_channels=3, classes=2, widths=(8, 8), dilations=(3, 5), norm="none"), 3) == (17, False)
    # group / instance norm take their statistics over the whole image: every output sees everything
    for norm in ("group", "instance"):
        assert receptive_field(FCN(widths=(8, 8), norm=norm), 1, size=24) == (24, True)
        assert receptive_field(FCN(widths=(8, 8), norm=norm), 1, min_size=8, max_size=32) == (32, True)


def test_receptive_field_clipping_and_probe_growth():
    torch.manual_seed(0)
    model = FCN(widths=(8, 8, 8, 8), dilations=(1, 2, 4, 8))  # 31 px
    assert receptive_field(model, 1, size=16) == (16, True)  # a fixed probe too small: ">= 16"
    assert receptive_field(model, 1, size=64) == (31, False)
    # 8, 16 and 32 clip (at 32 the field spans rows 1..31 and touches the border), 64 does not
    assert receptive_field(model, 1, min_size=8) == (31, False)
    assert receptive_field(model, 1, min_size=8, max_size=16) == (16, True)


def test_receptive_field_leaves_model_alone():
    model = FCN(widths=(4, 4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_field(model, 1)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.dtype == torch.float32 and p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats too


@lru_cache(maxsize=None)
def unet_span(depth: int, level: int, part: str, x: int) -> tuple[int, int]:
    """Input interval [lo, hi] (1-D) seen by position x of a map of the classic U-Net, by hand.

    part "enc": output of the encoder block of `level` (level == depth: the bottleneck);
    part "dec": output of the decoder block of `level`. Blocks are two 3x3 convolutions (a point
    sees x-2..x+2 of the block's input), pooling 2x2 (r sees 2r, 2r+1 below), upsampling by a 2x2
    stride-2 transposed convolution (s sees s // 2 below) concatenated with the encoder map of the
    level. Every map is monotone in x, so an interval of positions sees [lo of its first, hi of its
    last].
    """

    def block_input(p: int) -> tuple[int, int]:
        if part == "enc":
            if level == 0:
                return p, p
            return unet_span(depth, level - 1, "enc", 2 * p)[0], unet_span(depth, level - 1, "enc", 2 * p + 1)[1]
        below = unet_span(depth, level + 1, "dec" if level + 1 < depth else "enc", p // 2)
        skip = unet_span(depth, level, "enc", p)
        return min(below[0], skip[0]), max(below[1], skip[1])

    return block_input(x - 2)[0], block_input(x + 2)[1]


def test_unet_receptive_field_by_hand():
    # depth 1: conv3, conv3 (5), pool (6, jump 2), conv3, conv3 (6 + 2*2*2 = 14), transposed 2x2 (picks one
    # low-resolution pixel), concat, conv3, conv3 at full resolution: 14 + 2*2 = 18.
    lo, hi = unet_span(1, 0, "dec", 32)
    assert hi - lo + 1 == 18
    expected = {1: 18, 2: 44, 3: 92, 4: 188}
    for depth, side in expected.items():
        lo, hi = unet_span(depth, 0, "dec", 128)  # the centre of a 256 probe
        assert hi - lo + 1 == side and 0 < lo and hi < 255
    previous = 0
    for depth in (1, 2, 3):
        torch.manual_seed(depth)
        measured = receptive_field(UNet(depth=depth), 1)
        assert measured == (expected[depth], False)
        assert measured[0] > previous
        previous = measured[0]
    # depth 3 (92 px) does not fit a 64 probe: at its centre the field would span -14..77
    assert receptive_field(UNet(depth=3), 1, size=64) == (64, True)


# ----------------------------------------------------------------------------- the table


def test_model_table_of_variants():
    variants = {
        "small": {"name": "fcn-small"},
        "narrow dilated": {"name": "fcn", "widths": (8, 8, 8, 8), "dilations": (1, 2, 4, 8)},
        "unet d2": {"name": "unet", "depth": 2, "base_width": 8},
        "rgb small": {"name": "fcn-small", "in_channels": 3},
    }
    rows = model_table(variants, size=(64, 64))
    assert [row["name"] for row in rows] == list(variants)
    assert all(set(row) == {"name", "params", "gflops", "receptive_field", "clipped"} for row in rows)
    by_name = {row["name"]: row for row in rows}
    assert by_name["small"]["params"] == 28_225
    assert by_name["small"]["gflops"] * G == pytest.approx(2 * (9 * (32 + 3 * 32 * 32) + 32) * 64 * 64)
    assert (by_name["small"]["receptive_field"], by_name["small"]["clipped"]) == (9, False)
    assert (by_name["narrow dilated"]["receptive_field"], by_name["narrow dilated"]["clipped"]) == (31, False)
    assert (by_name["unet d2"]["receptive_field"], by_name["unet d2"]["clipped"]) == (44, False)
    assert by_name["unet d2"]["params"] == count_parameters(create_model("unet", depth=2, base_width=8))
    assert by_name["rgb small"]["params"] == 28_225 + 9 * 2 * 32
    for row in rows:
        assert math.isfinite(row["gflops"]) and row["gflops"] > 0 and row["params"] > 0


def test_model_table_needs_a_name():
    with pytest.raises(ValueError, match="'oops'"):
        model_table({"oops": {"widths": (4,)}})


def test_model_table_of_every_registered_model():
    rows = model_table(None, size=(64, 64), rf_max_size=128)  # probes up to 128 to stay fast
    assert [row["name"] for row in rows] == list_models()
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        assert row["params"] > 0 and math.isfinite(row["gflops"]) and row["gflops"] > 0
        assert 1 <= row["receptive_field"] <= 128
    assert by_name["fcn"]["gflops"] == pytest.approx(2 * 2_212_380 * 64 * 64 / G)
    assert (by_name["fcn"]["receptive_field"], by_name["fcn"]["clipped"]) == (9, False)
    assert (by_name["fcn-dilated"]["receptive_field"], by_name["fcn-dilated"]["clipped"]) == (31, False)
    assert by_name["fcn-small"]["receptive_field"] == 9
    assert by_name["unet"]["gflops"] * G == pytest.approx(2 * classic_unet_macs(64))
    assert (by_name["unet"]["receptive_field"], by_name["unet"]["clipped"]) == (128, True)  # 188 > 128


def test_print_model_table():
    rows = [
        {"name": "unet", "params": 1_942_289, "gflops": 1.5068, "receptive_field": 188, "clipped": False},
        {"name": "fcn-small", "params": 28_225, "gflops": 0.9165, "receptive_field": 9, "clipped": False},
        {"name": "wide", "params": 812, "gflops": 72.495, "receptive_field": 512, "clipped": True},
    ]
    console = Console(record=True, width=120)
    print_model_table(rows, console=console, title="models at 128x128")
    text = console.export_text()
    for expected in ("unet", "fcn-small", "wide", "1.94 M", "28.2 k", "812", "1.51", "0.916", "72.50",
                     "188", ">= 512", "GFLOPs/image", "receptive field px", "parameters", "models at 128x128"):
        assert expected in text, expected


def test_print_model_table_from_model_table():
    rows = model_table({"fcn-small": {"name": "fcn-small"}}, size=(32, 32))
    console = Console(record=True, width=120)
    print_model_table(rows, console=console)
    text = console.export_text()
    assert "fcn-small" in text and "28.2 k" in text and " 9 " in text


def test_format_count():
    assert [format_count(n) for n in (0, 999, 1000, 28_225, 1_942_289)] == ["0", "999", "1.0 k", "28.2 k", "1.94 M"]
