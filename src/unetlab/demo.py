"""`unetlab demo`: the whole product on synthetic seismic data, with nothing to download."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from unetlab.config import Config, apply_overrides, config_from_dict
from unetlab.data.synthetic import write_tgs_dataset
from unetlab.engine.trainer import TrainResult, train
from unetlab.evaluation import evaluate
from unetlab.run_folder import RunFolder

DEMO_SETTINGS = {
    "name": "demo",
    "model": {"base_width": 16, "depth": 4},
    "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "augment": {"hflip": True, "shift": 0.05, "scale": 0.05},
    "train": {"epochs": 30, "early_stop_patience": 0, "monitor": "val/tgs_map", "monitor_mode": "max"},
    "eval": {"tta": "hflip"},
}


def demo_config(minutes: float, overrides: list[str] | None = None) -> Config:
    settings = {**DEMO_SETTINGS, "train": {**DEMO_SETTINGS["train"], "max_minutes": minutes}}
    return config_from_dict(apply_overrides(settings, overrides or []), "demo settings")


def demo(out_dir: str | Path | None = None, minutes: float = 3.0, images: int = 400, seed: int = 0,
         overrides: list[str] | None = None, progress: bool = True,
         log: Callable[[str], None] = print) -> TrainResult:
    out = Path(out_dir) if out_dir else RunFolder.new_path("runs", "demo")
    data_dir = out / "synthetic-data"
    log(f"unetlab demo: the data is SYNTHETIC ({images} generated seismic-like 101x101 images with salt "
        f"bodies, seed {seed}), written to {data_dir}; train on real data with 'unetlab train --data DIR'.")
    write_tgs_dataset(data_dir, n=images, seed=seed)
    cfg = demo_config(minutes, overrides)
    result = train(cfg, data_root=data_dir, run_dir=out / "run", progress=progress, log=log)
    evaluate(result.run_dir, data_dir, log=log, command=f"unetlab evaluate {result.run_dir} --data {data_dir}")
    log(f"demo finished: figures in {RunFolder(result.run_dir).figures_dir} (synthetic data, not a real-data "
        "result)")
    return result
