"""The tries of issue 16 on the training step, side by side in one process (BENCHMARKS.md, "Where the step's
time goes"): images/s of `train_step` on one batch in memory for the `tgs-salt` model as it is, compiled with
torch.compile, at other batch sizes and with scSE written as x * (cSE + sSE); one 2x2 transposed
convolution per U-Net level against the same computation as a 1x1 convolution + pixel shuffle; and batch
norm on a full-resolution map in both layouts, with the cost of converting between them.

    python benchmarks/step_variants.py [--seconds 8] [--skip-compile]

Run it on a quiet machine: every other process on the two cores moves these figures by 2-3x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.bench_layers import _build_step, _phases, time_call
from unetlab.config import load_config
from unetlab.engine.device import autocast
from unetlab.models import blocks


def images_per_s(batch_size: int, seconds: float, compile_model: bool = False, overrides: tuple = ()) -> float:
    step = _build_step(load_config("tgs-salt", list(overrides)), 128, batch_size)
    if compile_model:
        step.model = torch.compile(step.model)
    for _ in range(2):
        _phases(step, lambda phase: None)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        _phases(step, lambda phase: None)
        times.append(time.perf_counter() - begin)
    return batch_size / statistics.median(times)


def scse_summed(self: blocks.SCSE, x: torch.Tensor) -> torch.Tensor:
    return x * (self.channel_gate(x) + self.spatial_gate(x))


def transposed_as_shuffle(up: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The 2x2 stride-2 transposed convolution as a 1x1 convolution to 4x the channels and a pixel shuffle."""
    cin, cout = up.weight.shape[:2]
    weight = up.weight.permute(1, 2, 3, 0).reshape(cout * 4, cin, 1, 1)  # out channel c * 4 + kh * 2 + kw
    y = F.pixel_shuffle(F.conv2d(x, weight), 2)
    return y + up.bias.view(1, -1, 1, 1).to(y.dtype)


def transposed_levels() -> None:
    for cin, cout, side in [(32, 16, 64), (64, 32, 32), (128, 64, 16), (256, 128, 8)]:
        up = nn.ConvTranspose2d(cin, cout, 2, stride=2).to(memory_format=torch.channels_last)
        x = torch.randn(32, cin, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.no_grad():
            assert torch.allclose(up(x), transposed_as_shuffle(up, x), atol=1e-5)

        def train(forward):
            def once() -> None:
                with autocast(x.device, "bf16"):
                    y = forward(x)
                y.float().sum().backward()
            return once

        plain, shuffle = time_call(train(up)), time_call(train(lambda t: transposed_as_shuffle(up, t)))
        print(f"transposed 2x2 {cin} -> {cout} at {side} -> {2 * side}: {plain * 1e3:.1f} ms, "
              f"as 1x1 + pixel shuffle {shuffle * 1e3:.1f} ms (forward + backward, bf16, batch 32)")


def batch_norm_layouts() -> None:
    """Training-mode batch norm alone on a full-resolution 16-channel map, bf16, in both layouts."""
    for fmt, name in ((torch.channels_last, "channels_last"), (torch.contiguous_format, "NCHW")):
        x = torch.randn(32, 16, 128, 128).to(torch.bfloat16).contiguous(memory_format=fmt)
        grad = torch.randn(32, 16, 128, 128).to(torch.bfloat16).contiguous(memory_format=fmt)
        weight, bias, mean, var = torch.ones(16), torch.zeros(16), torch.zeros(16), torch.ones(16)
        out, saved_mean, saved_invstd = torch.ops.aten.native_batch_norm(x, weight, bias, mean, var, True, 0.1, 1e-5)
        forward = time_call(lambda: torch.ops.aten.native_batch_norm(x, weight, bias, mean, var, True, 0.1, 1e-5))
        backward = time_call(lambda: torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, mean, var, saved_mean, saved_invstd, True, 1e-5, [True, True, True]))
        copy = time_call(lambda: x.contiguous(memory_format=torch.contiguous_format if fmt == torch.channels_last
                                              else torch.channels_last))
        print(f"batch norm 32x16x128x128 bf16 {name}: forward {forward * 1e3:.1f} ms, backward {backward * 1e3:.1f} ms;"
              f" converting the map to the other layout {copy * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per variant")
    parser.add_argument("--skip-compile", action="store_true", help="skip torch.compile (about 80 s to compile)")
    args = parser.parse_args()
    rows = [("tgs-salt model, batch 32", images_per_s(32, args.seconds))]
    if not args.skip_compile:
        rows.append(("torch.compile, batch 32", images_per_s(32, args.seconds, compile_model=True)))
    for batch_size in (4, 8, 16, 64):
        rows.append((f"batch {batch_size}", images_per_s(batch_size, args.seconds)))
    original = blocks.SCSE.forward
    blocks.SCSE.forward = scse_summed
    try:
        rows.append(("scSE as x * (cSE + sSE), batch 32", images_per_s(32, args.seconds)))
    finally:
        blocks.SCSE.forward = original
    rows.append(("tgs-salt model again, batch 32", images_per_s(32, args.seconds)))
    for name, rate in rows:
        print(f"{name:40s} {rate:6.1f} images/s")
    transposed_levels()
    batch_norm_layouts()


if __name__ == "__main__":
    main()
