"""The training loop: data on the device, batched augmentation, bf16 + channels_last, callbacks.

`train(config)` is what `unetlab train` runs. It writes the run folder:
config.yaml, split.json, metrics.csv, TensorBoard events, checkpoints/{best,last}.pt, figures/.
"""

from __future__ import annotations

import csv
import io
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from unetlab.config import Config
from unetlab.data.augment import build_batch_augment
from unetlab.data.formats.registry import load_for_config
from unetlab.data.formats.tgs import BinaryDataset
from unetlab.data.io import atomic_write_text
from unetlab.data.sizing import Sizing
from unetlab.data.splits import (
    coverage_classes, kfold_splits, load_kfold, load_split, save_kfold, save_split, stratified_split,
)
from unetlab.data.tensors import channel_stats, images_to_tensor, masks_to_tensor, normalize
from unetlab.engine.averaging import build_averaging
from unetlab.engine.checkpoint import save_checkpoint
from unetlab.engine.schedule import build_scheduler
from unetlab.errors import ConfigError, UnetlabError
from unetlab.inference.predictor import autocast, resolve_device
from unetlab.losses import LossFn, build_loss
from unetlab.metrics import BinarySegmentationMetrics
from unetlab.models import create_model
from unetlab.viz import save_learning_curves


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_value: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(base: str | Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(base) / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(base) / f"{name}-{stamp}-{suffix}"
    return run_dir


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, o: torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay),
    "adamw": lambda params, o: torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay),
    "sgd": lambda params, o: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                             nesterov=o.nesterov and o.momentum > 0),
    "rmsprop": lambda params, o: torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum,
                                                     weight_decay=o.weight_decay),
}


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)


class MetricsLog:
    """metrics.csv (rewritten atomically each epoch, so it is never half-written) plus TensorBoard."""

    def __init__(self, run_dir: Path, config: Config):
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.writer.add_text("config", "```yaml\n" + config.to_yaml() + "\n```")

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns += [key for key in r if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def step_scalar(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class Progress:
    """A rich progress bar with ETA and images/s, or nothing when disabled (tests, logs)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Any = None

    def start(self, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
        from rich.progress import TimeElapsedColumn, TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[ips]:.1f} img/s"), TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self._bar.start()
        self._epochs = self._bar.add_task("epochs", total=epochs, ips=0.0, loss=float("nan"))
        self._steps = self._bar.add_task("epoch 1", total=steps, ips=0.0, loss=float("nan"))

    def step(self, epoch: int, step: int, ips: float, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._steps, completed=step, description=f"epoch {epoch + 1}", ips=ips, loss=loss)

    def epoch_done(self, epoch: int, summary: str, ips: float, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._epochs, completed=epoch + 1, ips=ips, loss=loss)
            self._bar.console.print(summary)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, images: torch.Tensor,
               masks: torch.Tensor, precision: str, progress: float = 0.0,
               valid: torch.Tensor | None = None, clip_norm: float | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss without synchronising with the device."""
    with autocast(images.device, precision):
        logits = model(images)
    loss = loss_fn(logits, masks, progress, valid)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
    optimizer.step()
    return loss.detach()


def _split(cfg: Config, dataset: BinaryDataset, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's train/validation indices: a saved split, fold `data.fold` of a k-fold, or a fresh split.

    Strata are salt-coverage classes; k-fold runs also write folds.json so the other folds' runs can
    reuse exactly the same partition (`data.split_file` pointing at a folds.json picks `data.fold`).
    """
    data = cfg.data
    meta: dict[str, object] = {"seed": cfg.seed, "stratified_by": "salt coverage", "coverage_bins": data.coverage_bins}
    strata = coverage_classes(dataset.coverage, data.coverage_bins)
    if data.split_file and data.folds:
        train_idx, val_idx = load_kfold(data.split_file, dataset.ids)[data.fold]
        meta.update(fold=data.fold, folds=data.folds, from_file=data.split_file)
    elif data.split_file:
        train_idx, val_idx = load_split(data.split_file, dataset.ids)
        meta.update(from_file=data.split_file)
    elif data.folds:
        folds = kfold_splits(strata, data.folds, cfg.seed)
        save_kfold(run_dir / "folds.json", dataset.ids, folds, **meta)
        train_idx, val_idx = folds[data.fold]
        meta.update(fold=data.fold, folds=data.folds)
    else:
        train_idx, val_idx = stratified_split(strata, data.val_fraction, cfg.seed)
        meta.update(val_fraction=data.val_fraction)
    save_split(run_dir / "split.json", dataset.ids, train_idx, val_idx, **meta)
    return train_idx, val_idx


def _improved(value: float, best: float, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return value < best if mode == "min" else value > best


def train(config: Config, data_root: str | Path | None = None, run_dir: str | Path | None = None,
          runs_base: str | Path = "runs", progress: bool = True,
          log: Callable[[str], None] = print, dataset: BinaryDataset | None = None) -> TrainResult:
    """Train a model as `config` says and return where the run was written."""
    start_time = time.perf_counter()
    cfg = config
    if data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(data_root)})})
    if cfg.data.root is None and dataset is None:
        raise ConfigError("data.root: no data folder given; pass --data DIR or set data.root in the config")
    seed_everything(cfg.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16; use --set train.precision=fp32")

    if dataset is None:
        dataset = load_for_config(cfg, cfg.data.root)  # type: ignore[arg-type]
    # Built before the run folder exists, so a bad option or a failed weight download leaves nothing behind.
    if dataset.channels != cfg.model.in_channels:
        raise ConfigError(f"model.in_channels is {cfg.model.in_channels} but the images have {dataset.channels} "
                          f"channel(s); use --set model.in_channels={dataset.channels}")
    model = create_model(cfg.model.name, **cfg.model.options()).to(device)
    if cfg.train.freeze_encoder_epochs and not hasattr(model, "freeze_encoder"):
        raise ConfigError(f"train.freeze_encoder_epochs: model {cfg.model.name!r} has no separate encoder to freeze")
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(runs_base, cfg.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UnetlabError(f"{run_dir}: run folder exists and is not empty; choose another --out "
                           "(runs are never overwritten)")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "figures").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    train_idx, val_idx = _split(cfg, dataset, run_dir)
    if getattr(model, "input_mean", None) is not None:  # pretrained encoders bring their own statistics
        mean, std = list(model.input_mean), list(model.input_std)  # type: ignore[union-attr]
    else:
        mean, std = channel_stats(dataset.images[train_idx])

    # The whole (small) data set lives on the training device, already brought to the input size.
    sizing = Sizing(cfg.data.sizing, cfg.data.input_size)
    train_x = sizing.images(images_to_tensor(dataset.images[train_idx], device))
    train_y = sizing.masks(masks_to_tensor(dataset.masks[train_idx], device)).to(torch.uint8)
    val_x = normalize(sizing.images(images_to_tensor(dataset.images[val_idx], device)), mean, std)
    val_y = sizing.masks(masks_to_tensor(dataset.masks[val_idx], device))
    val_truth = torch.from_numpy(dataset.masks[val_idx]).to(device)
    height, width = dataset.images.shape[1:3]
    # Pixels under an ignore label: a second mask channel that follows every geometric transform.
    has_ignore = dataset.valid is not None
    if has_ignore:
        train_valid = sizing.masks(masks_to_tensor(dataset.valid[train_idx], device)).to(torch.uint8)
        val_valid = sizing.masks(masks_to_tensor(dataset.valid[val_idx], device))
        val_truth_valid = torch.from_numpy(dataset.valid[val_idx]).to(device)

    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(cfg, model)
    batch_size = min(cfg.train.batch_size, len(train_idx))
    steps_per_epoch = len(train_idx) // batch_size  # drop the last partial batch: batch norm needs > 1
    scheduler = build_scheduler(cfg, optimizer)
    loss_fn = build_loss(cfg.loss)
    averaging = build_averaging(cfg.train.averaging, model, cfg.train.ema_decay, cfg.train.swa_start)
    augment = build_batch_augment(cfg.augment)
    generator = torch.Generator().manual_seed(cfg.seed)
    metrics = BinarySegmentationMetrics()
    logbook = MetricsLog(run_dir, cfg)
    bar = Progress(progress)

    mode = cfg.train.monitor_mode
    best_value = math.inf if mode == "min" else -math.inf
    best_epoch, epochs_without_improvement, stop_reason = -1, 0, "completed all epochs"
    budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else math.inf
    epoch_seconds: list[float] = []
    global_step, total_steps = 0, cfg.train.epochs * steps_per_epoch

    progress_seen = [0.0]

    def typical_epoch_seconds() -> float:
        # The median ignores the first epoch's warm-up and short stalls of a shared machine.
        return statistics.median(epoch_seconds) if epoch_seconds else 0.0

    def progress_share() -> float:
        """Share of training done: planned steps, or the time budget (less one epoch) if that is sooner.

        Kept monotonic: a faster epoch after a slow one must not move the schedule backwards.
        """
        share = global_step / total_steps
        if math.isfinite(budget_s):
            usable = budget_s - typical_epoch_seconds()
            share = max(share, (time.perf_counter() - start_time) / max(usable, 1e-9))
        progress_seen[0] = max(progress_seen[0], min(share, 1.0))
        return progress_seen[0]

    log(f"run folder: {run_dir}")
    log(f"data: {len(dataset)} images {height}x{width} from {dataset.root or 'memory'}; "
        f"train {len(train_idx)}, validation {len(val_idx)} (stratified by salt coverage)")
    bar.start(cfg.train.epochs, steps_per_epoch)
    try:
        for epoch in range(cfg.train.epochs):
            elapsed = time.perf_counter() - start_time
            if epoch_seconds and elapsed + typical_epoch_seconds() > budget_s:
                stop_reason = f"time budget of {cfg.train.max_minutes:g} min reached"
                break
            epoch_start = time.perf_counter()
            if cfg.train.freeze_encoder_epochs:
                model.freeze_encoder(epoch < cfg.train.freeze_encoder_epochs)  # type: ignore[operator]
            model.train()
            order = torch.randperm(len(train_idx), generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            progress_now = progress_share()
            for step in range(steps_per_epoch):
                batch = order[step * batch_size : (step + 1) * batch_size]
                images, masks, valid = augment(train_x[batch], train_y[batch].float(),
                                               train_valid[batch] if has_ignore else None, generator)
                images = normalize(images, mean, std).contiguous(memory_format=memory_format)
                loss = train_step(model, optimizer, loss_fn, images, masks, cfg.train.precision, progress_now, valid,
                                  cfg.optim.grad_clip_norm)
                averaging.update_step(global_step, progress_now)
                if scheduler.per_step:
                    scheduler.step(progress_share())
                loss_sum += loss
                global_step += 1
                if progress and (step % 5 == 0 or step == steps_per_epoch - 1):
                    seconds = time.perf_counter() - epoch_start
                    bar.step(epoch, step + 1, (step + 1) * batch_size / seconds, float(loss))
            train_seconds = time.perf_counter() - epoch_start
            averaging.update_epoch(progress_share())

            def training_batches():  # SWA recomputes batch-norm statistics on these
                for start in range(0, len(train_idx), 64):
                    x = normalize(train_x[start : start + 64].float(), mean, std)
                    with autocast(device, cfg.train.precision):
                        yield x.contiguous(memory_format=memory_format)

            evaluated = averaging.eval_model(training_batches)
            model.eval()
            metrics.reset()
            val_loss = torch.zeros((), device=device)
            with torch.no_grad():
                for start in range(0, len(val_idx), 64):
                    x = val_x[start : start + 64]
                    with autocast(device, cfg.train.precision):
                        logits = evaluated(x.contiguous(memory_format=memory_format))
                    chunk = slice(start, start + 64)
                    val_loss += loss_fn(logits, val_y[chunk], progress_now,
                                        val_valid[chunk] if has_ignore else None) * len(x)
                    probs = sizing.restore(torch.sigmoid(logits.float()), height, width)
                    metrics.update(probs, val_truth[chunk], threshold=cfg.eval.threshold,
                                   valid=val_truth_valid[chunk] if has_ignore else None)
            row: dict[str, float] = {
                "epoch": epoch + 1, "step": global_step,
                "lr": optimizer.param_groups[0]["lr"],
                "train/loss": float(loss_sum) / steps_per_epoch,
                "val/loss": float(val_loss) / len(val_idx),
            }
            row.update({f"val/{key}": float(value) for key, value in metrics.compute().items()})
            row["train/images_per_s"] = steps_per_epoch * batch_size / train_seconds
            row["time_s"] = time.perf_counter() - start_time
            if cfg.train.monitor not in row:
                raise ConfigError(f"train.monitor: {cfg.train.monitor!r} is not a logged metric; "
                                  f"choose one of {', '.join(k for k in row if '/' in k)}")
            logbook.append(row)
            value = row[cfg.train.monitor]
            if scheduler.per_epoch:
                scheduler.step(value)
            # The weights validated (averaged ones when averaging) are the ones saved for predict.
            payload = {"model_state": evaluated.state_dict(), "config": cfg.to_dict(), "mean": mean, "std": std,
                       "threshold": cfg.eval.threshold, "epoch": epoch + 1,
                       "metrics": {k: v for k, v in row.items() if isinstance(v, float)}}
            marker = ""
            if _improved(value, best_value, mode):
                best_value, best_epoch, epochs_without_improvement = value, epoch + 1, 0
                save_checkpoint(run_dir / "checkpoints" / "best.pt", payload)
                marker = " (best)"
            else:
                epochs_without_improvement += 1
            save_checkpoint(run_dir / "checkpoints" / "last.pt",
                            {**payload, "optimizer_state": optimizer.state_dict(),
                             "scheduler_state": scheduler.state_dict(), "train_model_state": model.state_dict(),
                             "averaging_state": averaging.state_dict()})
            epoch_seconds.append(time.perf_counter() - epoch_start)
            summary = (f"epoch {epoch + 1:3d}  train/loss {row['train/loss']:.4f}  val/loss {row['val/loss']:.4f}  "
                       f"val/iou {row['val/iou']:.3f}  val/tgs_map {row['val/tgs_map']:.3f}  "
                       f"lr {row['lr']:.2e}  {row['train/images_per_s']:.1f} img/s{marker}")
            if progress:
                bar.epoch_done(epoch, summary, row["train/images_per_s"], row["train/loss"])
            else:
                log(summary)
            patience = cfg.train.early_stop_patience
            if patience and epochs_without_improvement >= patience:
                stop_reason = f"early stop: {cfg.train.monitor} did not improve for {patience} epochs"
                break
    finally:
        bar.stop()
        logbook.close()
        if logbook.rows:
            save_learning_curves(run_dir / "figures" / "learning_curves.png", logbook.rows)
    if best_epoch < 0:
        raise UnetlabError(f"{run_dir}: training produced no usable epoch ({cfg.train.monitor} was never finite)")
    log(f"stopped: {stop_reason}; best {cfg.train.monitor} {best_value:.4f} at epoch {best_epoch}")
    return TrainResult(run_dir, best_epoch, best_value, len(logbook.rows), logbook.rows, stop_reason)
