"""`unetlab bench`: training throughput of the default fast path against fp32 NCHW eager, side by side.

Both paths run the trainer's own `train_step` on the same model architecture and the same
in-memory batch, alternating in rounds so that machine noise hits both alike; the figure that
matters is the ratio, reported with the median of the rounds.
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
from unetlab.inference.predictor import resolve_device
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
        model = create_model(cfg.model.name, **cfg.model.model_dump(exclude={"name"})).to(dev).to(memory_format=fmt)
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
