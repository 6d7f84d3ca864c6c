"""`unetlab bench layers`: where a training step's time goes, per layer and per pass, against a peak measured on
the spot.

Three measurements, one run:

1. **Peak**: the best of square matmuls (sides 1024, 2048, 4096) in bf16 and in fp32 on the threads torch
   uses, GFLOP/s. Every
   "share of peak" below divides by the bf16 figure measured here, never by a datasheet number. And the
   memory bandwidth of a 256 MB copy, the bound of element-wise operators on full-resolution tensors.
2. **Layers**: every convolution of the model (plain and transposed) with the input shape it sees in a real
   forward pass, timed alone in each pass training runs: forward, backward to its input (not run for the
   model's first convolution, whose input needs no gradient) and backward to its weights (and bias). The
   passes are the same ATen kernels autograd calls (`aten::convolution`, `aten::convolution_backward` with one
   output selected), on tensors of the step's dtype and memory format (bf16 + channels_last for the default
   path: under CPU autocast a convolution casts input and weight to bf16 and runs exactly this). FLOPs are the
   multiply-adds x 2 of each pass; a level is the output resolution of the layer.
3. **Step**: the real training step (`engine.step.train_step` on one batch in memory, the trainer's
   `prepare_batch` for the augmentation) timed by phase (augmentation, forward, loss, backward, optimiser), and
   the forward + backward profiled (torch.profiler, self time per operator, grouped by the resolution of the
   operator's first 4-D tensor and by kind: convolution, batch norm, activation, ...).

Several `--setting`s (precision x layout) can be measured side by side for the layer table, so that a
per-layer choice can be read off one run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from unetlab.config import Config
from unetlab.engine.device import autocast
from unetlab.engine.step import build_optimizer, prepare_batch, seed_everything, training_loss
from unetlab.errors import ConfigError
from unetlab.files import atomic_write_text
from unetlab.losses import build_loss
from unetlab.models import create_model

aten = torch.ops.aten

#: precision x layout settings a layer can be timed in, by name.
SETTINGS: dict[str, tuple[torch.dtype, torch.memory_format]] = {
    "bf16-cl": (torch.bfloat16, torch.channels_last),
    "bf16-nchw": (torch.bfloat16, torch.contiguous_format),
    "fp32-cl": (torch.float32, torch.channels_last),
    "fp32-nchw": (torch.float32, torch.contiguous_format),
}
PASSES = ("forward", "backward_input", "backward_weight")


def default_setting(cfg: Config) -> str:
    """The setting the config trains in (bf16 or fp32 compute, channels_last or NCHW)."""
    precision = "bf16" if cfg.train.precision == "bf16" else "fp32"
    return f"{precision}-{'cl' if cfg.train.channels_last else 'nchw'}"


def time_call(fn: Callable[[], Any], min_seconds: float = 0.2, rounds: int = 3) -> float:
    """Seconds per call: the best of `rounds` rounds, each repeating `fn` for at least `min_seconds`."""
    fn()  # warm-up: first-call allocation and kernel selection
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return best


def matmul_peak(dtype: torch.dtype, sides: tuple[int, ...] = (1024, 2048, 4096),
                min_seconds: float = 0.5) -> dict[str, float]:
    """GFLOP/s of square matmuls in `dtype` on this process's threads, by side, and their best as "peak"."""
    rates = {}
    for side in sides:
        a = torch.randn(side, side).to(dtype)
        b = torch.randn(side, side).to(dtype)
        rates[str(side)] = 2 * side**3 / time_call(lambda: torch.mm(a, b), min_seconds=min_seconds) / 1e9
    return {**rates, "peak": max(rates.values())}


def copy_bandwidth(megabytes: int = 256, min_seconds: float = 0.5) -> float:
    """GB/s moved (read + write) by copying a `megabytes` tensor: the memory bound of element-wise operators on
    tensors larger than the caches."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    seconds = time_call(lambda: target.copy_(source), min_seconds=min_seconds)
    return 2 * source.numel() * 4 / seconds / 1e9


# --------------------------------------------------------------------------------------------- the layers


@dataclass
class ConvLayer:
    """One convolution as the model runs it: its module name and the shapes of one forward pass."""

    name: str
    kind: str  # "conv" or "transposed"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernel: tuple[int, int]
    first: bool  # the model's first convolution: no backward to its input in training

    @property
    def level(self) -> str:
        return f"{self.output_shape[2]}x{self.output_shape[3]}"

    @property
    def channels(self) -> str:
        return f"{self.input_shape[1]}->{self.output_shape[1]}"

    def flops(self) -> float:
        """FLOPs of one pass (forward, backward to input and backward to weights each cost the same)."""
        n, c_in, h_in, w_in = self.input_shape
        c_out, h_out, w_out = self.output_shape[1:]
        taps = self.kernel[0] * self.kernel[1]
        if self.kind == "transposed":  # every input pixel scatters a kernel-sized patch
            return 2.0 * n * c_in * h_in * w_in * c_out * taps
        return 2.0 * n * c_out * h_out * w_out * c_in * taps


def conv_layers(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[ConvLayer], dict[str, nn.Module]]:
    """The convolutions of `model` in forward order with their shapes, found by hooks in one fp32 forward pass."""
    found: list[ConvLayer] = []
    modules: dict[str, nn.Module] = {}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            kind = "transposed" if isinstance(module, nn.ConvTranspose2d) else "conv"
            found.append(ConvLayer(name, kind, tuple(inputs[0].shape), tuple(output.shape),
                                   tuple(module.kernel_size), first=not found))
            modules[name] = module
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            model(torch.randn(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return found, modules


def pass_calls(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The three passes of one convolution as the ATen calls autograd makes: on input `x` and output gradient
    `grad`, with the module's weights in `x`'s dtype and memory format."""
    transposed = isinstance(module, nn.ConvTranspose2d)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    w = module.weight.detach().to(x.dtype).contiguous(memory_format=fmt)
    bias = None if module.bias is None else module.bias.detach().to(x.dtype)
    output_padding = list(module.output_padding) if transposed else [0, 0]
    args = (list(module.stride), list(module.padding), list(module.dilation), transposed, output_padding,
            module.groups)
    bias_sizes = None if bias is None else [bias.shape[0]]

    def backward(mask: list[bool]) -> Callable[[], Any]:
        return lambda: aten.convolution_backward(grad, x, w, bias_sizes, *args, mask)

    return {"forward": lambda: aten.convolution(x, w, bias, *args),
            "backward_input": backward([True, False, False]),
            "backward_weight": backward([False, True, bias is not None])}


def time_layer(module: nn.Module, layer: ConvLayer, setting: str, min_seconds: float) -> dict[str, float | None]:
    """Seconds of each pass of one layer in one setting (None: the pass does not run in training)."""
    dtype, fmt = SETTINGS[setting]
    x = torch.randn(layer.input_shape).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(layer.output_shape).to(dtype).contiguous(memory_format=fmt)
    calls = pass_calls(module, x, grad)
    return {name: None if (name == "backward_input" and layer.first) else time_call(calls[name], min_seconds)
            for name in PASSES}


def layer_rows(model: nn.Module, input_shape: tuple[int, ...], settings: list[str],
               min_seconds: float) -> list[dict]:
    """One row per convolution: shapes, FLOPs per pass and, per setting, seconds and GFLOP/s per pass."""
    layers, modules = conv_layers(model, input_shape)
    rows = []
    for layer in layers:
        flops = layer.flops()
        row: dict[str, Any] = {**asdict(layer), "level": layer.level, "channels": layer.channels,
                               "flops_per_pass": flops, "settings": {}}
        for setting in settings:
            seconds = time_layer(modules[layer.name], layer, setting, min_seconds)
            run = [s for s in seconds.values() if s is not None]
            row["settings"][setting] = {
                "seconds": seconds,
                "gflops": {k: None if s is None else flops / s / 1e9 for k, s in seconds.items()},
                "seconds_total": sum(run), "gflops_total": flops * len(run) / sum(run) / 1e9,
            }
        rows.append(row)
    return rows


def level_rows(rows: list[dict], setting: str, peak_gflops: float) -> list[dict]:
    """Per level (output resolution): convolution FLOPs and seconds over the passes training runs, GFLOP/s and
    the share of the measured bf16 peak."""
    levels: dict[str, dict[str, float]] = {}
    for row in rows:
        run = [s for s in row["settings"][setting]["seconds"].values() if s is not None]
        level = levels.setdefault(row["level"], {"flops": 0.0, "seconds": 0.0, "layers": 0})
        level["flops"] += row["flops_per_pass"] * len(run)
        level["seconds"] += sum(run)
        level["layers"] += 1
    total = sum(level["seconds"] for level in levels.values())
    return [{"level": name, "layers": int(v["layers"]), "gflop": v["flops"] / 1e9, "seconds": v["seconds"],
             "share_of_conv_time": v["seconds"] / total, "gflops": v["flops"] / v["seconds"] / 1e9,
             "share_of_peak": v["flops"] / v["seconds"] / 1e9 / peak_gflops} for name, v in levels.items()]


# ------------------------------------------------------------------------------------------------ the step

#: operator kinds of the profile, first match wins (self time of every operator goes to exactly one)
OP_KINDS: tuple[tuple[str, re.Pattern], ...] = (
    ("convolution", re.compile(r"conv")),
    ("batch norm", re.compile(r"batch_norm")),
    ("activation", re.compile(r"relu|threshold|sigmoid|tanh|gelu|silu|hardswish")),
    ("pooling / resampling", re.compile(r"pool|upsample|interpolate|pixel_(un)?shuffle")),
    ("copy / cast / layout", re.compile(r"copy|_to_copy|::to$|contiguous|clone|cat|empty|zero|fill")),
    ("elementwise", re.compile(r"::(add|mul|sub|div|maximum|minimum|where|neg|pow|sqrt)_?$")),
    ("reduction", re.compile(r"sum|mean|max|min|norm")),
)


def op_kind(name: str) -> str:
    for kind, pattern in OP_KINDS:
        if pattern.search(name):
            return kind
    return "other"


def _first_level(shapes: list, batch_size: int) -> str:
    """The resolution of an operator's first batch-sized 4-D tensor; "no batch tensor" for everything else (weight
    casts, optimiser updates, the augmentation's per-image matrices, and operators on tensor lists such as
    `cat`, whose shapes the profiler does not record)."""
    for shape in shapes or []:
        if isinstance(shape, (list, tuple)) and len(shape) == 4 and shape[0] == batch_size:
            return f"{shape[2]}x{shape[3]}"
    return "no batch tensor"


@dataclass
class _Step:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    images: torch.Tensor  # raw batch, before augmentation
    masks: torch.Tensor
    augment: Callable
    generator: torch.Generator
    precision: str
    fmt: torch.memory_format
    crop: int | None


def _build_step(cfg: Config, size: int, batch_size: int) -> _Step:
    from unetlab.data.augment import build_batch_augment

    setting = SETTINGS[default_setting(cfg)]
    seed_everything(cfg.seed)
    model = create_model(cfg.model.name, **cfg.model.options()).to(memory_format=setting[1]).train()
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.rand(batch_size, cfg.model.in_channels, size, size, generator=generator)
    masks = (torch.rand(batch_size, 1, size, size, generator=generator) > 0.6).float()
    return _Step(model, build_optimizer(cfg, model), build_loss(cfg.loss), images, masks,
                 build_batch_augment(cfg.augment), generator, cfg.train.precision, setting[1], cfg.augment.crop)


def _phases(step: _Step, clock: Callable[[str], None]) -> None:
    """One training step as `engine.step.train_step` runs it, with `clock(phase)` called at each phase's end."""
    channels = step.images.shape[1]
    x, y, valid = prepare_batch(step.images, step.masks, None, step.crop, step.augment, step.generator,
                                [0.5] * channels, [0.25] * channels, step.fmt)
    clock("augmentation")
    with autocast(x.device, step.precision):
        outputs = step.model(x)
    clock("forward")
    loss = training_loss(step.model, step.loss_fn, outputs, y, 0.0, valid)
    clock("loss")
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock("backward")
    step.optimizer.step()
    clock("optimiser")


def phase_seconds(step: _Step, steps: int) -> dict[str, float]:
    """Median seconds per phase over `steps` steps (after one warm-up step)."""
    samples: dict[str, list[float]] = {}
    for index in range(steps + 1):
        last = time.perf_counter()

        def clock(phase: str) -> None:
            nonlocal last
            now = time.perf_counter()
            if index:  # the first step warms up
                samples.setdefault(phase, []).append(now - last)
            last = now

        _phases(step, clock)
    return {phase: statistics.median(values) for phase, values in samples.items()}


def profile_step(step: _Step, steps: int) -> list[dict]:
    """Self time per (operator kind, level) over `steps` profiled steps, as a share of their total self time."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # torch's profiler otherwise prints its stages on stderr
    _phases(step, lambda phase: None)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            _phases(step, lambda phase: None)
    totals: dict[tuple[str, str], float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        key = (op_kind(event.key), _first_level(event.input_shapes, len(step.images)))
        totals[key] = totals.get(key, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return sorted(({"kind": kind, "level": level, "share": us / whole} for (kind, level), us in totals.items()),
                  key=lambda row: -row["share"])


# ------------------------------------------------------------------------------------------------ the bench


def bench_layers(config: Config | None = None, size: int | None = None, batch_size: int | None = None,
                 settings: list[str] | None = None, min_seconds: float = 0.2, steps: int = 5,
                 out: str | Path | None = None, log: Callable[[str], None] = print,
                 peak_sides: tuple[int, ...] = (1024, 2048, 4096)) -> dict:
    """The peak, the layer table, the level table and the step breakdown of the module docstring.

    `settings` are names of `SETTINGS` (default: the config's own); the level table and the step use the
    config's setting. Returns the result that `out` receives as JSON."""
    cfg = config or Config()
    size = int(size or cfg.data.input_size)
    batch_size = int(batch_size or cfg.train.batch_size)
    own = default_setting(cfg)
    settings = list(dict.fromkeys(settings or [own]))
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"--setting {unknown[0]}: unknown; choose from {', '.join(SETTINGS)}")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    matmuls = {name: matmul_peak(dtype, peak_sides, min_seconds=max(min_seconds, 0.01))
               for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    peak = {name: rates["peak"] for name, rates in matmuls.items()}
    bandwidth = copy_bandwidth(min_seconds=max(min_seconds, 0.01))
    step = _build_step(cfg, size, batch_size)
    input_shape = (batch_size, cfg.model.in_channels, size, size)
    rows = layer_rows(step.model, input_shape, sorted(set(settings) | {own}), min_seconds)
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}", "model": cfg.model.model_dump(),
        "input": "x".join(map(str, input_shape)), "setting": own, "peak_gflops": peak, "matmul_gflops": matmuls,
        "copy_bandwidth_gb_s": bandwidth,
        "layers": rows,
        "levels": level_rows(rows, own, peak["bf16"]), "phases_seconds": phase_seconds(step, steps),
        "profile": profile_step(step, max(1, steps // 2)),
    }
    log_tables(result, settings, log)
    if out:
        atomic_write_text(out, json.dumps(result, indent=1))
    return result


def log_tables(result: dict, settings: list[str], log: Callable[[str], None]) -> None:
    peak, own = result["peak_gflops"], result["setting"]
    log(f"{result['model']['name']}, input {result['input']}, {result['machine']}")
    sides = ", ".join(side for side in result["matmul_gflops"]["bf16"] if side != "peak")
    log(f"peak measured now (best square matmul of sides {sides}): "
        f"bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} GFLOP/s, "
        f"memory copy {result['copy_bandwidth_gb_s']:.1f} GB/s (read + write)")
    log("")
    log("layer                          level    channels   " + "  ".join(
        f"{s + ' fwd/bwd-in/bwd-w GFLOP/s':>34s}" for s in settings))
    for row in result["layers"]:
        cells = []
        for s in settings:
            g = row["settings"][s]["gflops"]
            cells.append(f"{' / '.join('-' if g[p] is None else f'{g[p]:.0f}' for p in PASSES):>34s}")
        log(f"{row['name'][:30]:30s} {row['level']:8s} {row['channels']:10s} " + "  ".join(cells))
    log("")
    log(f"per level ({own}, passes training runs): level, GFLOP, seconds, share of conv time, GFLOP/s, "
        "share of bf16 peak")
    for level in result["levels"]:
        log(f"  {level['level']:8s} {level['gflop']:7.1f} {level['seconds']:7.3f} {level['share_of_conv_time']:6.1%} "
            f"{level['gflops']:6.0f} {level['share_of_peak']:6.1%}")
    phases = result["phases_seconds"]
    total = sum(phases.values())
    log("")
    log(f"step phases ({own}, median of steps): {total * 1000:.0f} ms, "
        + ", ".join(f"{name} {s / total:.0%}" for name, s in phases.items()))
    log("profile of whole steps (self time): " + ", ".join(
        f"{row['kind']} @ {row['level']} {row['share']:.1%}" for row in result["profile"][:12]))
