"""Benchmarks behind `unetlab bench train` and `unetlab bench models`.

`bench train`: training throughput of the default fast path against fp32 NCHW eager. Both paths
run the trainer's own `train_step` on the same model architecture and the same in-memory batch,
alternating in rounds so that machine noise hits both alike; the figure that matters is the
ratio, reported with the median of the rounds.

`bench models`: every model of the zoo at given sizes: parameters, GFLOPs, receptive field,
inference and training images/s on the default path (bf16 autocast + channels_last).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

import torch

from unetlab.config import Config
from unetlab.engine.trainer import build_optimizer, seed_everything, train_step
from unetlab.inference.predictor import autocast, resolve_device
from unetlab.losses import build_loss
from unetlab.models import create_model


@dataclass(frozen=True)
class BenchPath:
    name: str
    precision: str
    channels_last: bool


PATHS = (BenchPath("bf16 + channels_last (default)", "bf16", True), BenchPath("fp32 NCHW eager (naive)", "fp32", False))


def bench_train(config: Config | None = None, size: int = 128, batch_size: int = 32, steps: int = 10,
                rounds: int = 3, warmup: int = 3, device: str = "auto", out: str | Path | None = None,
                log: Callable[[str], None] = print) -> dict:
    cfg = config or Config()
    dev = resolve_device(device)
    loss_fn = build_loss(cfg.loss)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, cfg.model.in_channels, size, size, generator=generator).to(dev)
    masks = (torch.rand(batch_size, 1, size, size, generator=generator) > 0.6).float().to(dev)
    setups = []
    for path in PATHS:
        seed_everything(cfg.seed)
        fmt = torch.channels_last if path.channels_last else torch.contiguous_format
        model = create_model(cfg.model.name, **cfg.model.options()).to(dev).to(memory_format=fmt)
        model.train()
        optimizer = build_optimizer(cfg, model)
        x = images.contiguous(memory_format=fmt)
        for _ in range(warmup):
            train_step(model, optimizer, loss_fn, x, masks, path.precision)
        setups.append((path, model, optimizer, x))
    samples: dict[str, list[float]] = {p.name: [] for p in PATHS}
    for _ in range(rounds):
        for path, model, optimizer, x in setups:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                loss = train_step(model, optimizer, loss_fn, x, masks, path.precision)
            float(loss)  # wait for the device
            samples[path.name].append(steps * batch_size / (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    fast, naive = (medians[p.name] for p in PATHS)
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}", "device": str(dev),
        "model": cfg.model.model_dump(), "input": f"{batch_size}x{cfg.model.in_channels}x{size}x{size}",
        "loss": cfg.loss.name, "steps_per_round": steps, "rounds": rounds,
        "images_per_s": medians, "samples": samples, "speedup": fast / naive,
    }
    for name, value in medians.items():
        log(f"{name:34s} {value:8.1f} images/s  (rounds: {', '.join(f'{v:.1f}' for v in samples[name])})")
    log(f"speed-up of the default path: {fast / naive:.2f}x")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def _time_steps(step: Callable[[], torch.Tensor], warmup: int, steps: int, max_seconds: float) -> tuple[float, int]:
    """Seconds per step (median of timed steps) and how many were timed; stops early past max_seconds."""
    for _ in range(warmup):
        float(step())
    times: list[float] = []
    budget_start = time.perf_counter()
    while len(times) < steps:
        start = time.perf_counter()
        float(step())
        times.append(time.perf_counter() - start)
        if time.perf_counter() - budget_start > max_seconds:
            break
    return statistics.median(times), len(times)


def bench_models(specs: dict[str, dict] | None = None, sizes: tuple[int, ...] = (128, 256), batch_size: int = 32,
                 steps: int = 3, warmup: int = 1, max_seconds: float = 30.0, skip_gflops: float = 150.0,
                 device: str = "auto", out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, size). Models costlier than `skip_gflops` per image are listed, not timed."""
    from unetlab.models.registry import list_models
    from unetlab.models.summary import count_flops, count_parameters, receptive_field

    dev = resolve_device(device)
    if specs is None:
        from unetlab.models.unet import unet_variants

        specs = {name: {"name": name} for name in list_models()}
        specs.update({label: {"name": "unet", **opts} for label, opts in unet_variants().items() if label != "unet"})
    loss_fn = build_loss(Config().loss)
    rows = []
    for label, spec in specs.items():
        options = {k: v for k, v in spec.items() if k != "name"}
        for size in sizes:
            seed_everything(0)
            model = create_model(spec["name"], **options).to(dev)
            gflops = count_flops(model, 1, size, size)
            field, clipped = receptive_field(model, 1)
            row = {"model": label, "size": size, "params": count_parameters(model), "gflops": gflops,
                   "receptive_field": field, "receptive_field_clipped": clipped,
                   "infer_images_per_s": None, "train_images_per_s": None, "timed_steps": 0}
            if gflops <= skip_gflops:
                model = model.to(memory_format=torch.channels_last)
                x = torch.randn(batch_size, 1, size, size, device=dev).contiguous(memory_format=torch.channels_last)
                y = (torch.rand(batch_size, 1, size, size, device=dev) > 0.6).float()
                model.eval()

                def infer() -> torch.Tensor:
                    with torch.no_grad(), autocast(dev, "bf16"):
                        return model(x).float().mean()

                seconds, _ = _time_steps(infer, warmup, steps, max_seconds)
                row["infer_images_per_s"] = batch_size / seconds
                model.train()
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
                seconds, timed = _time_steps(lambda: train_step(model, optimizer, loss_fn, x, y, "bf16"),
                                             warmup, steps, max_seconds)
                row["train_images_per_s"] = batch_size / seconds
                row["timed_steps"] = timed
            rows.append(row)
            infer_s = f"{row['infer_images_per_s']:.1f}" if row["infer_images_per_s"] else "not timed"
            train_s = f"{row['train_images_per_s']:.1f}" if row["train_images_per_s"] else "not timed"
            log(f"{label:22s} {size:4d}px  {row['params'] / 1e6:7.2f} M  {gflops:8.2f} GFLOPs  "
                f"RF {'>=' if clipped else ''}{field:4d}  infer {infer_s:>9s} img/s  train {train_s:>9s} img/s")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"date": date.today().isoformat(), "batch_size": batch_size,
                                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "rows": rows}, indent=1))
    return rows
