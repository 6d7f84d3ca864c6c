"""The Python API that the CLI itself uses.

    from unetlab import load_config, train, evaluate, predict, demo, create_model
    result = train(load_config("tgs-salt"), data_root="data/tgs-salt")
    evaluate(result.run_dir, "data/tgs-salt")
    predict(run_a, ["sections/"], "pred/", ensemble=[run_b, run_c])   # probabilities averaged over the runs

`train` and `resume` take `callbacks=[...]` (subclasses of `unetlab.engine.callbacks.Callback`) to
watch or stop a run: a study cell, a pruner, a progress display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from unetlab.bench import bench_train
from unetlab.config import Config, load_config
from unetlab.data.formats.registry import load_for_config
from unetlab.demo import demo
from unetlab.engine.callbacks import Callback
from unetlab.engine.distributed import world_from_env
from unetlab.engine.trainer import TrainResult
from unetlab.engine.trainer import resume as _resume
from unetlab.engine.trainer import train as _train
from unetlab.evaluation import evaluate
from unetlab.inference.ensemble import EnsemblePredictor
from unetlab.inference.predict import predict
from unetlab.inference.predictor import Predictor
from unetlab.models import create_model, list_models
from unetlab.run_folder import RunFolder
from unetlab.evaluation.curves import plot_runs
from unetlab.studies import load_study, run_study, study_status
from unetlab.tuning import tune, tune_report


def train(config: Config, data_root: str | Path | None = None, run_dir: str | Path | None = None,
          runs_base: str | Path = "runs", progress: bool = True, evaluate_after: bool = True,
          log: Callable[[str], None] = print, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train, then score the best checkpoint on the validation split (report.md + figures)."""
    root = data_root if data_root is not None else config.data.root
    # Decoded once for training and evaluation.
    dataset = load_for_config(config, root) if root is not None else None
    result = _train(config, data_root=root, run_dir=run_dir, runs_base=runs_base, progress=progress, log=log,
                    dataset=dataset, callbacks=callbacks)
    if evaluate_after and dataset is not None and world_from_env().is_main:
        evaluate(result.run_dir, root, dataset=dataset, log=log,  # type: ignore[arg-type]
                 command=f"unetlab evaluate {result.run_dir} --data {root}")
    return result


def resume(run_dir: str | Path, data_root: str | Path | None = None, overrides: list[str] | None = None,
           progress: bool = True, evaluate_after: bool = True, log: Callable[[str], None] = print,
           callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Continue a run from its last checkpoint, then score its best checkpoint like `train`."""
    run = RunFolder(run_dir)
    cfg = run.read_config() if run.config_path.is_file() else None
    root = data_root if data_root is not None else (cfg.data.root if cfg is not None else None)
    dataset = load_for_config(cfg, root) if cfg is not None and root is not None else None
    result = _resume(run_dir, data_root=root, progress=progress, log=log, dataset=dataset, overrides=overrides,
                     callbacks=callbacks)
    if evaluate_after and dataset is not None and world_from_env().is_main:
        evaluate(result.run_dir, root, dataset=dataset, log=log,  # type: ignore[arg-type]
                 command=f"unetlab evaluate {result.run_dir} --data {root}")
    return result


__all__ = ["Callback", "Config", "EnsemblePredictor", "Predictor", "TrainResult", "bench_train", "create_model", "demo",
           "evaluate", "list_models", "load_config", "load_study", "plot_runs", "predict", "resume", "run_study",
           "study_status", "train", "tune", "tune_report"]
