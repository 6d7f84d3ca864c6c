"""The training loop: data on the device, batched augmentation, bf16 + channels_last, callbacks.

`train(config)` is what `unetlab train` runs; `resume(run_dir)` is `unetlab train --resume RUN`.
A run folder holds config.yaml, split.json, metrics.csv, TensorBoard events,
checkpoints/{best,last}.pt and figures/.

Exact resume: `last.pt` carries everything the loop needs to go on as if never stopped: the live
weights (and averaged ones), optimiser, schedule, gradient scaler, epoch and step, every
random-number state, the early-stopping and best-checkpoint counters, elapsed time. `last.pt` is
written before `best.pt`, so a kill between the two is repaired on resume from `last.pt` itself.
With `train.deterministic` on CPU, a run killed and resumed ends with the same weights as one
that never stopped (tested with SIGKILL).
"""

from __future__ import annotations

import csv
import io
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from unetlab.config import Config, config_from_dict, load_config
from unetlab.data.augment import build_batch_augment, random_crop
from unetlab.data.formats.registry import load_for_config
from unetlab.data.dataset import ArrayDataset
from unetlab.data.io import atomic_write_text
from unetlab.data.sizing import Sizing
from unetlab.data.splits import kfold_splits, load_kfold, load_split, save_kfold, save_split, stratified_split
from unetlab.data.stats import class_pixel_counts, class_pixel_counts_per_image, class_weights
from unetlab.data.tensors import channel_stats, images_to_tensor, masks_to_tensor, normalize
from unetlab.engine.averaging import build_averaging
from unetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from unetlab.engine.distributed import (
    World, all_sum, barrier, broadcast_object, gather_objects, init_world, shutdown, world_from_env,
)
from unetlab.engine.rng import capture_rng, restore_rng
from unetlab.engine.schedule import build_scheduler
from unetlab.errors import ConfigError, UnetlabError
from unetlab.engine.device import autocast, resolve_device
from unetlab.losses import LossFn, build_loss
from unetlab.models import create_model
from unetlab.tasks import build_task
from unetlab.viz import save_learning_curves


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_value: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str = ""


@dataclass
class LoopState:
    """The loop's counters, saved in last.pt and restored by resume."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_value: float = math.nan
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    progress_seen: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (CPU and CUDA); cuDNN autotuning only when not deterministic."""
    import os

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = on
        torch.backends.cudnn.benchmark = not on


def new_run_dir(base: str | Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(base) / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(base) / f"{name}-{stamp}-{suffix}"
    return run_dir


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, o, **kw: torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                                     **kw),
    "adamw": lambda params, o, **kw: torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                                       **kw),
    "sgd": lambda params, o, **kw: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                                   nesterov=o.nesterov and o.momentum > 0, **kw),
    "rmsprop": lambda params, o, **kw: torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum,
                                                           weight_decay=o.weight_decay, **kw),
}
#: Optimisers with a fused CUDA kernel (one launch for all parameters instead of several per tensor).
FUSED_ON_CUDA = ("adam", "adamw", "sgd")


def uses_fused_optimizer(name: str, device: torch.device) -> bool:
    """Fused kernels on CUDA only: on the CPU they measured no faster than the default (foreach) path."""
    return device.type == "cuda" and name in FUSED_ON_CUDA


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    extra = {"fused": True} if uses_fused_optimizer(cfg.optim.name, device) else {}
    return OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim, **extra)


class MetricsLog:
    """metrics.csv (rewritten atomically each epoch, so it is never half-written) plus TensorBoard."""

    def __init__(self, run_dir: Path, config: Config, rows: list[dict[str, float]] | None = None,
                 purge_step: int | None = None):
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = list(rows or [])
        from torch.utils.tensorboard import SummaryWriter

        # On resume, TensorBoard drops the events a killed run wrote after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        if purge_step is None:
            self.writer.add_text("config", "```yaml\n" + config.to_yaml() + "\n```")

    @staticmethod
    def read_rows(run_dir: Path, up_to_epoch: int) -> list[dict[str, float]]:
        """metrics.csv rows of epochs 1..up_to_epoch (a killed run may have logged one more)."""
        path = run_dir / "metrics.csv"
        if not path.is_file():
            return []
        rows = []
        with path.open(newline="") as handle:
            for raw in csv.DictReader(handle):
                row: dict[str, float] = {k: float(v) if v not in ("", None) else math.nan for k, v in raw.items()}
                for key in ("epoch", "step"):  # counters stay integers, as the live run writes them
                    if key in row and math.isfinite(row[key]):
                        row[key] = int(row[key])  # type: ignore[assignment]
                if row.get("epoch", math.inf) <= up_to_epoch:
                    rows.append(row)
        return rows

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
        # Epoch scalars share the step axis of the per-step scalars (the epoch is a scalar too).
        step = int(row["step"])
        for key, value in row.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def step_scalar(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(key, value, step)

    def image(self, key: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(key, image, step, dataformats="HWC")

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


def prepare_batch(images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None, crop: int | None,
                  augment: Callable, generator: torch.Generator, mean: list[float], std: list[float],
                  memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A training batch as the model takes it: random crop, augmentation, normalisation, memory format."""
    if crop:
        images, masks, valid = random_crop(images, masks, valid, crop, generator)
    images, masks, valid = augment(images, masks, valid, generator)
    return normalize(images, mean, std).contiguous(memory_format=memory_format), masks, valid


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, images: torch.Tensor,
               masks: torch.Tensor, precision: str, progress: float = 0.0,
               valid: torch.Tensor | None = None, clip_norm: float | None = None,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss without synchronising with the device."""
    with autocast(images.device, precision):
        logits = model(images)
    loss = loss_fn(logits, masks, progress, valid)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss so small gradients survive, unscale before clipping
        scaler.scale(loss).backward()
        if clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
    optimizer.step()
    return loss.detach()


def _split(cfg: Config, dataset: ArrayDataset, run_dir: Path | None, strata: np.ndarray,
           strata_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's train/validation indices: a saved split, fold `data.fold` of a k-fold, or a fresh split.

    Strata are salt-coverage classes (binary) or dominant classes (multiclass); k-fold runs also
    write folds.json so the other folds' runs can reuse exactly the same partition
    (`data.split_file` pointing at a folds.json picks `data.fold`). `run_dir` None: compute, write nothing.
    """
    data = cfg.data
    meta: dict[str, object] = {"seed": cfg.seed, "stratified_by": strata_name, "coverage_bins": data.coverage_bins}
    if data.split_file and data.folds:
        train_idx, val_idx = load_kfold(data.split_file, dataset.ids)[data.fold]
        meta.update(fold=data.fold, folds=data.folds, from_file=data.split_file)
    elif data.split_file:
        train_idx, val_idx = load_split(data.split_file, dataset.ids)
        meta.update(from_file=data.split_file)
    elif data.folds:
        folds = kfold_splits(strata, data.folds, cfg.seed)
        if run_dir is not None:
            save_kfold(run_dir / "folds.json", dataset.ids, folds, **meta)
        train_idx, val_idx = folds[data.fold]
        meta.update(fold=data.fold, folds=data.folds)
    else:
        train_idx, val_idx = stratified_split(strata, data.val_fraction, cfg.seed)
        meta.update(val_fraction=data.val_fraction)
    if run_dir is not None:
        save_split(run_dir / "split.json", dataset.ids, train_idx, val_idx, **meta)
    return train_idx, val_idx


def _improved(value: float, best: float, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


def _loss_class_weights(cfg: Config, dataset: ArrayDataset, train_idx: np.ndarray) -> list[float] | None:
    """`loss.class_weights: inverse | median` computed from the training masks' labelled pixels."""
    method = cfg.loss.class_weights
    if not isinstance(method, str):
        return None
    classes = 2 if cfg.task == "binary" else cfg.model.classes
    ignore = 255
    masks = []
    for k in train_idx:
        mask = dataset.masks[k].astype(np.uint8)
        if dataset.valid is not None:
            mask = np.where(dataset.valid[k], mask, ignore).astype(np.uint8)
        masks.append(mask)
    counts = (class_pixel_counts_per_image(masks, classes, ignore) if method == "median"
              else class_pixel_counts(masks, classes, ignore))
    return [float(w) for w in class_weights(counts, method)]


def _prediction_strip(task, image: torch.Tensor, truth: np.ndarray, pred: np.ndarray,
                      valid: np.ndarray | None) -> np.ndarray:
    """image | truth | prediction as one uint8 RGB strip for TensorBoard."""
    from unetlab.viz import colorize_labels, label_palette

    grey = image.float()
    grey = (grey - grey.min()) / (grey.max() - grey.min() + 1e-6)
    rgb = (grey.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    palette = label_palette(len(task.class_names))
    truth = truth.astype(np.int64)
    if valid is not None:
        truth = np.where(valid, truth, 255)
    return np.concatenate([rgb, colorize_labels(truth, palette, ignore_index=255),
                           colorize_labels(pred.astype(np.int64), palette)], axis=1)


class _Data:
    """The run's data on the training device, brought to the input size; train/validation shards per rank."""

    def __init__(self, cfg: Config, dataset: ArrayDataset, train_idx: np.ndarray, val_idx: np.ndarray,
                 mean: list[float], std: list[float], device: torch.device, world: World):
        sizing = Sizing(cfg.data.sizing, cfg.data.input_size)
        self.sizing, self.mean, self.std = sizing, mean, std
        self.height, self.width = dataset.images.shape[1:3]
        self.train_x = sizing.images(images_to_tensor(dataset.images[train_idx], device))
        self.train_y = sizing.masks(masks_to_tensor(dataset.masks[train_idx], device)).to(torch.uint8)
        val_idx = val_idx[world.rank::world.size]  # each rank validates its shard; metric states are merged
        self.val_ids = [dataset.ids[k] for k in val_idx]
        self.val_x = normalize(sizing.images(images_to_tensor(dataset.images[val_idx], device)), mean, std)
        self.val_y = sizing.masks(masks_to_tensor(dataset.masks[val_idx], device))
        self.val_truth = torch.from_numpy(dataset.masks[val_idx].astype(np.uint8)).to(device)
        # Validation batches of about 64 images of 128x128: fewer when the images are large.
        self.val_chunk = max(1, min(64, 64 * 128 * 128 // max(1, self.val_x.shape[-2] * self.val_x.shape[-1])))
        # Pixels under an ignore label: a second mask channel that follows every geometric transform.
        self.has_ignore = dataset.valid is not None
        self.train_valid = self.val_valid = self.val_truth_valid = None
        if dataset.valid is not None:
            self.train_valid = sizing.masks(masks_to_tensor(dataset.valid[train_idx], device)).to(torch.uint8)
            self.val_valid = sizing.masks(masks_to_tensor(dataset.valid[val_idx], device))
            self.val_truth_valid = torch.from_numpy(dataset.valid[val_idx]).to(device)


def train(config: Config, data_root: str | Path | None = None, run_dir: str | Path | None = None,
          runs_base: str | Path = "runs", progress: bool = True,
          log: Callable[[str], None] = print, dataset: ArrayDataset | None = None) -> TrainResult:
    """Train a model as `config` says and return where the run was written."""
    cfg = config
    if data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(data_root)})})
    if cfg.data.root is None and dataset is None:
        raise ConfigError("data.root: no data folder given; pass --data DIR or set data.root in the config")
    return _run(cfg, Path(run_dir) if run_dir is not None else None, runs_base, progress, log, dataset, None)


def resume(run_dir: str | Path, data_root: str | Path | None = None, progress: bool = True,
           log: Callable[[str], None] = print, dataset: ArrayDataset | None = None,
           overrides: list[str] | None = None) -> TrainResult:
    """Continue the run in `run_dir` from checkpoints/last.pt exactly where it stopped.

    `overrides` may only extend the run (train.epochs, train.max_minutes, train.early_stop_patience);
    anything else would make the resumed run a different experiment.
    """
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "config.yaml").is_file() or not last.is_file():
        raise UnetlabError(f"{run_dir}: nothing to resume (needs config.yaml and checkpoints/last.pt written by "
                           "'unetlab train'); start a new run instead")
    allowed = ("train.epochs", "train.max_minutes", "train.early_stop_patience", "train.num_threads")
    bad = [o for o in overrides or [] if o.split("=", 1)[0].strip() not in allowed]
    if bad:
        raise ConfigError(f"--set {bad[0]!r} with --resume: a resumed run keeps its config; only "
                          f"{', '.join(allowed)} may change (start a new run for anything else)")
    payload = load_checkpoint(last)
    if "loop_state" not in payload:
        raise UnetlabError(f"{last}: written by an older unetlab without resume state; start a new run")
    cfg = load_config(run_dir / "config.yaml", overrides)
    if data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(data_root)})})
    return _run(cfg, run_dir, "runs", progress, log, dataset, payload)


def _run(cfg: Config, run_dir: Path | None, runs_base: str | Path, progress: bool, log: Callable[[str], None],
         dataset: ArrayDataset | None, resumed: dict[str, Any] | None) -> TrainResult:
    world = world_from_env()
    try:
        return _train_loop(cfg, run_dir, runs_base, progress, log, dataset, resumed, world)
    finally:
        shutdown(world)


def _train_loop(cfg: Config, run_dir: Path | None, runs_base: str | Path, progress: bool,
                log: Callable[[str], None], dataset: ArrayDataset | None, resumed: dict[str, Any] | None,
                world: World) -> TrainResult:
    wall_start = time.perf_counter()
    seed_everything(cfg.seed)
    set_deterministic(cfg.train.deterministic)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = init_world(world, resolve_device(cfg.train.device))
    if cfg.train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16; use --set train.precision=fp16")
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("bad value for 'train.precision': fp16 needs a CUDA device; use bf16 on CPU")
    if not world.is_main:
        log = lambda _message: None  # noqa: E731 - only rank 0 speaks
        progress = False

    if dataset is None:
        dataset = load_for_config(cfg, cfg.data.root)  # type: ignore[arg-type]
    task = build_task(cfg.task, dataset.class_names, cfg.eval.threshold, cfg.eval.min_area)
    # Built before the run folder exists, so a bad option or a failed weight download leaves nothing behind.
    if dataset.channels != cfg.model.in_channels:
        raise ConfigError(f"model.in_channels is {cfg.model.in_channels} but the images have {dataset.channels} "
                          f"channel(s); use --set model.in_channels={dataset.channels}")
    model = create_model(cfg.model.name, **cfg.model.options()).to(device)
    if cfg.train.freeze_encoder_epochs and not hasattr(model, "freeze_encoder"):
        raise ConfigError(f"train.freeze_encoder_epochs: model {cfg.model.name!r} has no separate encoder to freeze")

    if resumed is None:
        if world.is_main:
            run_dir = run_dir if run_dir is not None else new_run_dir(runs_base, cfg.name)
            if run_dir.exists() and any(run_dir.iterdir()):
                raise UnetlabError(f"{run_dir}: run folder exists and is not empty; choose another --out "
                                   "(runs are never overwritten)")
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "figures").mkdir(exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        run_dir = Path(broadcast_object(world, str(run_dir)))
    assert run_dir is not None
    strata = task.strata(dataset, cfg.data.coverage_bins)
    if resumed is not None:
        train_idx, val_idx = load_split(run_dir / "split.json", dataset.ids)
    else:
        train_idx, val_idx = _split(cfg, dataset, run_dir if world.is_main else None, strata, task.strata_name)
    if resumed is not None:
        mean, std = list(resumed["mean"]), list(resumed["std"])
    elif getattr(model, "input_mean", None) is not None:  # pretrained encoders bring their own statistics
        mean, std = list(model.input_mean), list(model.input_std)  # type: ignore[union-attr]
    else:
        mean, std = channel_stats(dataset.images[train_idx])

    data = _Data(cfg, dataset, train_idx, val_idx, mean, std, device, world)
    sides = tuple(data.train_x.shape[-2:])
    if cfg.augment.crop and cfg.augment.crop > min(sides):
        raise ConfigError(f"bad value for 'augment.crop': {cfg.augment.crop} is larger than the training images "
                          f"({sides[1]}x{sides[0]} after data.sizing); use at most {min(sides)}")
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if cfg.model.options().get("norm") == "batch" and world.active and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over the global batch
    optimizer = build_optimizer(cfg, model)
    batch_size = min(cfg.train.batch_size, len(train_idx) // world.size)
    if batch_size < 1:
        raise ConfigError(f"train: {len(train_idx)} training images cannot feed {world.size} processes")
    # Each step every rank takes its own `batch_size` images of one shared permutation.
    steps_per_epoch = len(train_idx) // (batch_size * world.size)  # drop the partial batch: batch norm needs > 1
    scheduler = build_scheduler(cfg, optimizer)
    weights = (list(resumed["loss_class_weights"]) if resumed is not None and resumed.get("loss_class_weights")
               else _loss_class_weights(cfg, dataset, train_idx))
    loss_fn = build_loss(cfg.loss, cfg.task, cfg.model.classes, class_weights=weights)
    averaging = build_averaging(cfg.train.averaging, model, cfg.train.ema_decay, cfg.train.swa_start)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
    augment = build_batch_augment(cfg.augment)
    generator = torch.Generator().manual_seed(cfg.seed)  # the epoch permutation: the same on every rank
    # Each rank augments its own images with its own random draws.
    augment_generator = torch.Generator().manual_seed(cfg.seed + 7919 * (world.rank + 1))
    generators = {"order": generator, "augment": augment_generator}
    step_model: nn.Module = model
    if world.active:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        step_model = torch.compile(step_model)  # type: ignore[assignment]
    if device.type == "cuda" and not cfg.train.deterministic:
        torch.backends.cudnn.benchmark = True

    mode = cfg.train.monitor_mode
    state = LoopState()
    if resumed is not None:
        model.load_state_dict(resumed["train_model_state"])
        optimizer.load_state_dict(resumed["optimizer_state"])
        scheduler.load_state_dict(resumed["scheduler_state"])
        averaging.load_state_dict(resumed["averaging_state"])
        if scaler is not None and resumed.get("scaler_state"):
            scaler.load_state_dict(resumed["scaler_state"])
        state = LoopState(**resumed["loop_state"])
        restore_rng(resumed["rng_state"], generators)
        _repair_best(run_dir, resumed, state)
    metrics = task.new_metrics()
    logbook = None
    if world.is_main:
        rows = MetricsLog.read_rows(run_dir, state.epoch) if resumed is not None else None
        logbook = MetricsLog(run_dir, cfg, rows, purge_step=state.global_step + 1 if resumed is not None else None)
    bar = Progress(progress)
    # Time already spent counts against the budget of a resumed run.
    start_time = time.perf_counter() - state.elapsed_s
    stop_reason = "completed all epochs"
    budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else math.inf
    total_steps = cfg.train.epochs * steps_per_epoch

    def typical_epoch_seconds() -> float:
        # The median ignores the first epoch's warm-up and short stalls of a shared machine.
        return statistics.median(state.epoch_seconds) if state.epoch_seconds else 0.0

    def progress_share() -> float:
        """Share of training done: planned steps, or the time budget (less one epoch) if that is sooner.

        Kept monotonic: a faster epoch after a slow one must not move the schedule backwards.
        """
        share = state.global_step / total_steps
        if math.isfinite(budget_s):
            usable = budget_s - typical_epoch_seconds()
            share = max(share, (time.perf_counter() - start_time) / max(usable, 1e-9))
        state.progress_seen = max(state.progress_seen, min(share, 1.0))
        return state.progress_seen

    if resumed is not None:
        log(f"resuming {run_dir} after epoch {state.epoch} (step {state.global_step})")
    else:
        log(f"run folder: {run_dir}")
    log(f"data: {len(dataset)} images {data.height}x{data.width} from {dataset.root or 'memory'}; "
        f"train {len(train_idx)}, validation {len(val_idx)} (stratified by {task.strata_name})"
        + (f"; {world.size} processes" if world.active else ""))
    bar.start(cfg.train.epochs, steps_per_epoch)
    patience = cfg.train.early_stop_patience
    try:
        for epoch in range(state.epoch, cfg.train.epochs):
            elapsed = time.perf_counter() - start_time
            if state.epoch_seconds and elapsed + typical_epoch_seconds() > budget_s:
                stop_reason = f"time budget of {cfg.train.max_minutes:g} min reached"
                break
            if patience and state.epochs_without_improvement >= patience:
                stop_reason = f"early stop: {cfg.train.monitor} did not improve for {patience} epochs"
                break
            epoch_start = time.perf_counter()
            if cfg.train.freeze_encoder_epochs:
                model.freeze_encoder(epoch < cfg.train.freeze_encoder_epochs)  # type: ignore[operator]
            model.train()
            order = torch.randperm(len(train_idx), generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            progress_now = progress_share()
            for step in range(steps_per_epoch):
                first = (step * world.size + world.rank) * batch_size
                batch = order[first : first + batch_size]
                images, masks = data.train_x[batch], data.train_y[batch].float()
                valid = data.train_valid[batch] if data.has_ignore else None
                images, masks, valid = prepare_batch(images, masks, valid, cfg.augment.crop, augment, augment_generator,
                                                     mean, std, memory_format)
                loss = train_step(step_model, optimizer, loss_fn, images, masks, cfg.train.precision, progress_now,
                                  valid, cfg.optim.grad_clip_norm, scaler)
                averaging.update_step(state.global_step, progress_now)
                if scheduler.per_step:
                    scheduler.step(progress_share())
                loss_sum += loss
                state.global_step += 1
                every = cfg.train.log_every_steps
                if logbook is not None and every and state.global_step % every == 0:
                    seconds = time.perf_counter() - epoch_start
                    logbook.step_scalar("step/train_loss", float(loss), state.global_step)  # one sync per N steps
                    logbook.step_scalar("step/lr", optimizer.param_groups[0]["lr"], state.global_step)
                    logbook.step_scalar("step/images_per_s", (step + 1) * batch_size * world.size / seconds,
                                        state.global_step)
                if progress and (step % 5 == 0 or step == steps_per_epoch - 1):
                    seconds = time.perf_counter() - epoch_start
                    bar.step(epoch, step + 1, (step + 1) * batch_size * world.size / seconds, float(loss))
            train_seconds = time.perf_counter() - epoch_start
            averaging.update_epoch(progress_share())

            def training_batches():  # SWA recomputes batch-norm statistics on these
                for start in range(0, len(data.train_x), 64):
                    x = normalize(data.train_x[start : start + 64], mean, std)
                    with autocast(device, cfg.train.precision):
                        yield x.contiguous(memory_format=memory_format)

            evaluated = averaging.eval_model(training_batches)
            model.eval()
            metrics.reset()
            val_loss = torch.zeros((), device=device)
            strip = None
            with torch.no_grad():
                for start in range(0, len(data.val_x), data.val_chunk):
                    x = data.val_x[start : start + data.val_chunk]
                    with autocast(device, cfg.train.precision):
                        logits = evaluated(x.contiguous(memory_format=memory_format))
                    chunk = slice(start, start + data.val_chunk)
                    val_loss += loss_fn(logits, data.val_y[chunk], progress_now,
                                        data.val_valid[chunk] if data.has_ignore else None) * len(x)
                    probs = data.sizing.restore(task.probabilities(logits), data.height, data.width)
                    truth_valid = data.val_truth_valid[chunk] if data.has_ignore else None
                    task.update_metrics(metrics, probs, data.val_truth[chunk], truth_valid)
                    image_every = cfg.train.image_every_epochs
                    if (strip is None and logbook is not None and image_every and (epoch + 1) % image_every == 0):
                        shown = range(min(4, len(x)))
                        pred = task.decode(probs[: len(shown)]).cpu().numpy()
                        truth = data.val_truth[chunk][: len(shown)].cpu().numpy()
                        valid_np = truth_valid[: len(shown)].cpu().numpy() if truth_valid is not None else None
                        raw = data.sizing.restore(x[: len(shown)].float(), data.height, data.width)
                        strip = np.concatenate([_prediction_strip(task, raw[k], truth[k], pred[k],
                                                                  None if valid_np is None else valid_np[k])
                                                for k in shown], axis=0)
            # Every rank validated its shard: sum losses, merge metric states.
            train_loss = float(all_sum(world, loss_sum)) / (steps_per_epoch * world.size)
            val_total = all_sum(world, torch.stack([val_loss, torch.tensor(float(len(data.val_x)), device=device)]))
            if world.active:
                states = gather_objects(world, metrics.state().cpu())
                metrics.reset()
                for part in states:
                    metrics.merge_state(part.to(device))
            row: dict[str, float] = {
                "epoch": epoch + 1, "step": state.global_step,
                "lr": optimizer.param_groups[0]["lr"],
                "train/loss": train_loss,
                "val/loss": float(val_total[0]) / float(val_total[1]),
            }
            row.update({f"val/{key}": float(value) for key, value in metrics.compute().items()})
            row["train/images_per_s"] = steps_per_epoch * batch_size * world.size / train_seconds
            row["time_s"] = time.perf_counter() - start_time
            if cfg.train.monitor not in row:
                raise ConfigError(f"train.monitor: {cfg.train.monitor!r} is not a logged metric; "
                                  f"choose one of {', '.join(k for k in row if '/' in k)}")
            value = row[cfg.train.monitor]
            if scheduler.per_epoch:
                scheduler.step(value)
            marker = ""
            state.epoch = epoch + 1
            state.epoch_seconds.append(time.perf_counter() - epoch_start)
            if _improved(value, state.best_value, mode):
                state.best_value, state.best_epoch, state.epochs_without_improvement = value, epoch + 1, 0
                marker = " (best)"
            else:
                state.epochs_without_improvement += 1
            state.elapsed_s = time.perf_counter() - start_time
            if logbook is not None:
                logbook.append(row)
                if strip is not None:
                    logbook.image("val/predictions", strip, state.global_step)
                # The weights validated (averaged ones when averaging) are the ones saved for predict.
                payload = {"model_state": evaluated.state_dict(), "config": cfg.to_dict(), "mean": mean, "std": std,
                           "threshold": cfg.eval.threshold, "epoch": epoch + 1, "class_names": task.class_names,
                           "metrics": {k: v for k, v in row.items() if isinstance(v, float)}}
                # last.pt first: if the process dies before best.pt is written, resume rewrites it from last.pt.
                save_checkpoint(run_dir / "checkpoints" / "last.pt", {
                    **payload, "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                    "train_model_state": model.state_dict(), "averaging_state": averaging.state_dict(),
                    "scaler_state": scaler.state_dict() if scaler is not None else {},
                    "loop_state": asdict(state), "rng_state": capture_rng(generators),
                    "loss_class_weights": weights or []})
                if marker:
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", payload)
            summary = "  ".join([f"epoch {epoch + 1:3d}", f"train/loss {row['train/loss']:.4f}",
                                 f"val/loss {row['val/loss']:.4f}",
                                 *(f"{key} {row[key]:.3f}" for key in task.summary_keys if key in row),
                                 f"lr {row['lr']:.2e}", f"{row['train/images_per_s']:.1f} img/s{marker}"])
            if progress:
                bar.epoch_done(epoch, summary, row["train/images_per_s"], row["train/loss"])
            else:
                log(summary)
        barrier(world)
    finally:
        bar.stop()
        if logbook is not None:
            logbook.close()
            if logbook.rows:
                save_learning_curves(run_dir / "figures" / "learning_curves.png", logbook.rows)
    if state.best_epoch < 0:
        raise UnetlabError(f"{run_dir}: training produced no usable epoch ({cfg.train.monitor} was never finite)")
    log(f"stopped: {stop_reason}; best {cfg.train.monitor} {state.best_value:.4f} at epoch {state.best_epoch}")
    history = logbook.rows if logbook is not None else []
    return TrainResult(run_dir, state.best_epoch, state.best_value, state.epoch, history, stop_reason)


def _repair_best(run_dir: Path, last: dict[str, Any], state: LoopState) -> None:
    """If the run died after writing last.pt of its best epoch but before best.pt, write best.pt now."""
    best = run_dir / "checkpoints" / "best.pt"
    if state.best_epoch != state.epoch:
        return
    current = load_checkpoint(best) if best.is_file() else None
    if current is None or current.get("epoch") != state.epoch:
        keep = ("model_state", "config", "mean", "std", "threshold", "epoch", "class_names", "metrics")
        save_checkpoint(best, {k: last[k] for k in keep if k in last})
