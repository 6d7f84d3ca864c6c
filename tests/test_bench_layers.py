"""`unetlab bench layers`: FLOP counts by hand, the timed passes are the gradients autograd computes, the
level and profile bookkeeping, and the command end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from unetlab.bench_layers import (ConvLayer, SETTINGS, _first_level, bench_layers, conv_layers,
                                  default_setting, level_rows, op_kind, pass_calls)
from unetlab.config import load_config
from unetlab.errors import ConfigError

TINY = ["model.base_width=4", "model.depth=2", "train.batch_size=2", "data.input_size=32"]


def test_flops_of_a_conv_and_a_transposed_conv_by_hand():
    conv = ConvLayer("c", "conv", (2, 3, 8, 8), (2, 5, 8, 8), (3, 3), first=True)
    assert conv.flops() == 2 * 2 * 5 * 8 * 8 * 3 * 9  # 2 x N x Cout x Hout x Wout x Cin x taps
    up = ConvLayer("u", "transposed", (2, 6, 4, 4), (2, 3, 8, 8), (2, 2), first=False)
    assert up.flops() == 2 * 2 * 6 * 4 * 4 * 3 * 4  # every input pixel scatters a 2x2 patch to 3 channels
    assert (conv.level, conv.channels, up.level) == ("8x8", "3->5", "8x8")


def test_conv_layers_finds_every_convolution_in_forward_order_with_its_shapes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                          nn.ConvTranspose2d(8, 2, 2, stride=2))
    layers, modules = conv_layers(model, (3, 1, 16, 16))
    assert [layer.name for layer in layers] == ["0", "2", "3"]
    assert [layer.first for layer in layers] == [True, False, False]
    assert layers[1].input_shape == (3, 4, 16, 16) and layers[1].output_shape == (3, 8, 8, 8)
    assert layers[2].kind == "transposed" and layers[2].output_shape == (3, 2, 16, 16)
    assert modules["2"] is model[2]


@pytest.mark.parametrize("module", [nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(4, 4, 1, bias=False),
                                    nn.ConvTranspose2d(4, 3, 2, stride=2)], ids=["strided", "1x1-no-bias", "transposed"])
def test_the_timed_passes_compute_what_autograd_computes(module):
    """Forward, backward to the input and backward to the weights are the convolution's real kernels: the same
    output and gradients as autograd on the module (fp32, so equal up to summation order)."""
    torch.manual_seed(0)
    x = torch.randn(2, module.in_channels, 8, 8, requires_grad=True)
    out = module(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    calls = pass_calls(module, x.detach(), grad)
    assert torch.allclose(calls["forward"](), out, atol=1e-5)
    assert torch.allclose(calls["backward_input"]()[0], x.grad, atol=1e-5)
    _, grad_w, grad_b = calls["backward_weight"]()
    assert torch.allclose(grad_w, module.weight.grad, atol=1e-5)
    if module.bias is None:
        assert grad_b is None
    else:
        assert torch.allclose(grad_b, module.bias.grad, atol=1e-5)


def test_level_rows_sum_the_passes_training_runs():
    def row(level: str, flops: float, seconds: dict) -> dict:
        return {"level": level, "flops_per_pass": flops, "settings": {"bf16-cl": {"seconds": seconds}}}

    rows = [row("8x8", 10e9, {"forward": 0.1, "backward_input": None, "backward_weight": 0.1}),  # the first layer
            row("8x8", 20e9, {"forward": 0.1, "backward_input": 0.1, "backward_weight": 0.2}),
            row("4x4", 30e9, {"forward": 0.1, "backward_input": 0.1, "backward_weight": 0.1})]
    levels = {level["level"]: level for level in level_rows(rows, "bf16-cl", peak_gflops=300.0)}
    assert levels["8x8"]["gflop"] == pytest.approx(80.0) and levels["8x8"]["seconds"] == pytest.approx(0.6)
    assert levels["8x8"]["gflops"] == pytest.approx(80 / 0.6)
    assert levels["4x4"]["share_of_peak"] == pytest.approx(90 / 0.3 / 300)
    assert levels["8x8"]["share_of_conv_time"] == pytest.approx(0.6 / 0.9)
    assert levels["8x8"]["layers"] == 2


@pytest.mark.parametrize("name, kind", [
    ("aten::mkldnn_convolution", "convolution"), ("aten::convolution_backward", "convolution"),
    ("aten::native_batch_norm_backward", "batch norm"), ("aten::threshold_backward", "activation"),
    ("aten::max_pool2d_with_indices", "pooling / resampling"), ("aten::copy_", "copy / cast / layout"),
    ("aten::cat", "copy / cast / layout"), ("aten::mul", "elementwise"), ("aten::sum", "reduction"),
    ("aten::_foreach_lerp_", "other"),
])
def test_operator_kinds(name, kind):
    assert op_kind(name) == kind


def test_level_of_an_operator_is_its_first_batch_sized_4d_tensor():
    assert _first_level([[16, 16, 3, 3], [32, 16, 128, 128]], 32) == "128x128"
    assert _first_level([[16, 16, 3, 3], []], 32) == "no batch tensor"  # a weight cast or update
    assert _first_level(None, 32) == "no batch tensor"


def test_default_setting_follows_the_config():
    assert default_setting(load_config("tgs-salt", [])) == "bf16-cl"
    assert default_setting(load_config("tgs-salt", ["train.precision=fp32", "train.channels_last=false"])) == \
        "fp32-nchw"
    assert set(SETTINGS) == {"bf16-cl", "bf16-nchw", "fp32-cl", "fp32-nchw"}


def test_bench_layers_end_to_end_on_a_tiny_model(tmp_path):
    lines: list[str] = []
    out = tmp_path / "layers.json"
    config = load_config("tgs-salt", [*TINY, "model.stem=full"])  # levels named from the full-resolution first one
    result = bench_layers(config, settings=["fp32-nchw"], min_seconds=0.001, steps=2, out=out, log=lines.append,
                          peak_sides=(64, 128))
    saved = json.loads(out.read_text())
    assert saved["input"] == "2x1x32x32" and saved["setting"] == "bf16-cl"
    assert saved["peak_gflops"]["bf16"] == max(v for k, v in saved["matmul_gflops"]["bf16"].items() if k != "peak")
    assert saved["peak_gflops"]["bf16"] > 0 and saved["peak_gflops"]["fp32"] > 0 and saved["copy_bandwidth_gb_s"] > 0
    names = [row["name"] for row in saved["layers"]]
    assert names[0] == "encoder.0.0" and names[-1] == "head"
    first = saved["layers"][0]["settings"]
    assert set(first) == {"bf16-cl", "fp32-nchw"}  # the config's own setting is always measured
    assert first["fp32-nchw"]["seconds"]["backward_input"] is None  # the input needs no gradient
    assert {level["level"] for level in saved["levels"]} >= {"32x32", "16x16", "8x8"}
    assert set(saved["phases_seconds"]) == {"augmentation", "forward", "loss", "backward", "optimiser"}
    assert sum(row["share"] for row in saved["profile"]) == pytest.approx(1.0)
    assert [row["name"] for row in result["layers"]] == names
    assert any("peak measured now" in line for line in lines)


def test_unknown_setting_is_refused_by_name():
    with pytest.raises(ConfigError, match="--setting fp16-cl"):
        bench_layers(load_config("tgs-salt", TINY), settings=["fp16-cl"])
