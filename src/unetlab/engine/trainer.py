"""The Trainer: data on the device, batched augmentation, bf16 + channels_last, callbacks.

`train(config)` is what `unetlab train` runs; `resume(run_dir)` is `unetlab train --resume RUN`.
`Trainer.fit()` is set-up, then per epoch `train_epoch` ─► `validate` ─► callbacks' `on_epoch_end`
(metrics.csv, TensorBoard, the progress display, user callbacks) ─► `save` (last.pt, then best.pt).
Stopping rules (time budget, early stopping, a user's pruner) are callbacks asked before each
epoch; see `unetlab.engine.callbacks` for the protocol. The run folder's layout is `RunFolder`'s.

Exact resume: `last.pt` carries everything the loop needs to go on as if never stopped: the live
weights (and averaged ones), optimiser, schedule, gradient scaler, epoch and step, every
random-number state, the early-stopping and best-checkpoint counters, elapsed time. `last.pt` is
written before `best.pt`, so a kill between the two is repaired on resume from `last.pt` itself.
With `train.deterministic` on CPU, a run killed and resumed ends with the same weights as one
that never stopped (tested with SIGKILL). A run killed before its first checkpoint has nothing to
go on from: resume restarts it from epoch 0 in the same folder, with its config.yaml.

Faults stop the run with a one-line error before anything is written: a bad train.device or
train.monitor at set-up, a diverged (NaN/inf or exploding) loss at the step or epoch it shows
(`callbacks.DivergenceGuard`; the last good checkpoints stay).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetlab.config import Config
from unetlab.data.augment import build_batch_augment
from unetlab.data.dataset import ArrayDataset
from unetlab.data.formats.registry import load_for_config
from unetlab.data.sizing import Sizing
from unetlab.data.splits import kfold_splits, load_kfold, load_split, save_kfold, save_split, stratified_split
from unetlab.data.stats import class_pixel_counts, class_pixel_counts_per_image, class_weights
from unetlab.data.tensors import channel_stats, images_to_tensor, masks_to_tensor, normalize
from unetlab.engine.averaging import build_averaging
from unetlab.engine.callbacks import Callback, CallbackList, default_callbacks, typical_epoch_seconds
from unetlab.engine.device import autocast, resolve_device
from unetlab.engine.distributed import (
    World, all_sum, barrier, broadcast_object, gather_objects, init_world, shutdown, world_from_env,
)
from unetlab.engine.checkpoint import best_part
from unetlab.engine.rng import capture_rng, restore_rng
from unetlab.engine.schedule import build_scheduler, check_schedule
from unetlab.engine.step import build_optimizer, prepare_batch, seed_everything, set_deterministic, train_step
from unetlab.errors import ConfigError, UnetlabError
from unetlab.losses import build_loss
from unetlab.models import create_model
from unetlab.run_folder import RunFolder
from unetlab.tasks import build_task
from unetlab.viz import colorize_labels, label_palette

#: `--set` keys a resumed run may change: they extend it without making it another experiment.
RESUMABLE_OVERRIDES = ("train.epochs", "train.max_minutes", "train.early_stop_patience", "train.num_threads")


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


def improved(value: float, best: float, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


def monitor_names(task: Any) -> list[str]:
    """What `train.monitor` may name: the losses and the validation metrics an epoch row of `task` holds.

    The metric names are the task's own: its accumulator is asked, on one blank 2x2 image.
    """
    metrics = task.new_metrics()
    channels = 1 if task.name == "binary" else len(task.class_names)
    task.update_metrics(metrics, task.probabilities(torch.zeros(1, channels, 2, 2)),
                        torch.zeros(1, 2, 2, dtype=torch.uint8))
    return ["train/loss", "val/loss", *(f"val/{key}" for key in metrics.compute())]


def split_indices(cfg: Config, dataset: ArrayDataset, run: RunFolder | None, strata: np.ndarray,
                  strata_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's train/validation indices: a saved split, fold `data.fold` of a k-fold, or a fresh split.

    Strata are salt-coverage classes (binary) or dominant classes (multiclass); k-fold runs also
    write folds.json so the other folds' runs can reuse exactly the same partition
    (`data.split_file` pointing at a folds.json picks `data.fold`). `run` None: compute, write nothing.
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
        if run is not None:
            save_kfold(run.folds_path, dataset.ids, folds, **meta)
        train_idx, val_idx = folds[data.fold]
        meta.update(fold=data.fold, folds=data.folds)
    else:
        train_idx, val_idx = stratified_split(strata, data.val_fraction, cfg.seed)
        meta.update(val_fraction=data.val_fraction)
    if run is not None:
        save_split(run.split_path, dataset.ids, train_idx, val_idx, **meta)
    return train_idx, val_idx


def loss_class_weights(cfg: Config, dataset: ArrayDataset, train_idx: np.ndarray) -> list[float] | None:
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


def prediction_strip(image: torch.Tensor, truth: np.ndarray, pred: np.ndarray, valid: np.ndarray | None,
                     palette: np.ndarray) -> np.ndarray:
    """image | truth | prediction as one uint8 RGB strip for TensorBoard."""
    grey = image.float()
    grey = (grey - grey.min()) / (grey.max() - grey.min() + 1e-6)
    rgb = (grey.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    truth = truth.astype(np.int64)
    if valid is not None:
        truth = np.where(valid, truth, 255)
    return np.concatenate([rgb, colorize_labels(truth, palette, ignore_index=255),
                           colorize_labels(pred.astype(np.int64), palette)], axis=1)


class DeviceData:
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

    def train_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        valid = self.train_valid[batch] if self.has_ignore else None  # type: ignore[index]
        return self.train_x[batch], self.train_y[batch].float(), valid

    def val_chunks(self) -> Sequence[slice]:
        return [slice(start, start + self.val_chunk) for start in range(0, len(self.val_x), self.val_chunk)]


class Trainer:
    """One training run, as small named steps; see the module docstring for the order."""

    def __init__(self, cfg: Config, world: World, *, run_dir: Path | None = None, runs_base: str | Path = "runs",
                 dataset: ArrayDataset | None = None, resumed: dict[str, Any] | None = None, restart: bool = False,
                 callbacks: Sequence[Callback] = (), progress: bool = True, log: Callable[[str], None] = print):
        # resumed: last.pt's payload to go on from; restart: train `run_dir`, stopped before its first
        # checkpoint, again from epoch 0 (RunFolder.restart clears what it wrote)
        self.cfg, self.world, self.resumed, self._restart = cfg, world, resumed, restart
        self.is_main = world.is_main
        self.log: Callable[[str], None] = log if self.is_main else (lambda _message: None)  # only rank 0 speaks
        self._run_dir, self._runs_base, self._dataset = run_dir, runs_base, dataset
        self._callbacks = CallbackList(default_callbacks(cfg, self.is_main, progress and self.is_main)
                                       + list(callbacks))
        self.state = LoopState()
        self.history: list[dict[str, float]] = []
        self.epoch_start = 0.0
        self._start_time = 0.0

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        self._set_up_runtime()
        self._load_data_and_model()
        self._open_run()
        self._split_and_place_data()
        self._build_optimisation()
        if self.resumed is not None:
            self._restore(self.resumed)

    def _set_up_runtime(self) -> None:
        cfg = self.cfg
        check_schedule(cfg)
        seed_everything(cfg.seed)
        set_deterministic(cfg.train.deterministic)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = device = init_world(self.world, resolve_device(cfg.train.device, "train.device"))
        if cfg.train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU has no bf16; use --set train.precision=fp16")
        if cfg.train.precision == "fp16" and device.type != "cuda":
            raise ConfigError("bad value for 'train.precision': fp16 needs a CUDA device; use bf16 on CPU")

    def _load_data_and_model(self) -> None:
        """Data, task and model, all before the run folder exists: a bad option or a failed weight
        download leaves nothing behind."""
        cfg = self.cfg
        if self._dataset is None:
            self._dataset = load_for_config(cfg, cfg.data.root)  # type: ignore[arg-type]
        self.dataset = dataset = self._dataset
        self.task = build_task(cfg.task, dataset.class_names, cfg.eval.threshold, cfg.eval.min_area,
                               palette=dataset.palette, min_component=cfg.eval.min_component)
        choices = monitor_names(self.task)
        if cfg.train.monitor not in choices:  # refused now, not after a whole epoch
            raise ConfigError(f"bad value for 'train.monitor': {cfg.train.monitor!r} is not logged by a "
                              f"{self.task.name} run; choose one of {', '.join(choices)}")
        if dataset.channels != cfg.model.in_channels:
            raise ConfigError(f"model.in_channels is {cfg.model.in_channels} but the images have {dataset.channels} "
                              f"channel(s); use --set model.in_channels={dataset.channels}")
        self.model = create_model(cfg.model.name, **cfg.model.options()).to(self.device)
        if cfg.train.freeze_encoder_epochs and not hasattr(self.model, "freeze_encoder"):
            raise ConfigError(f"train.freeze_encoder_epochs: model {cfg.model.name!r} has no separate encoder "
                              "to freeze")

    def _open_run(self) -> None:
        """A new run folder with config.yaml (rank 0 creates it, every rank learns its path), a restarted
        one, or the resumed one."""
        if self.resumed is None:
            if self.is_main:
                path = self._run_dir if self._run_dir is not None else RunFolder.new_path(self._runs_base,
                                                                                         self.cfg.name)
                (RunFolder.restart if self._restart else RunFolder.create)(path).write_config(self.cfg)
                self._run_dir = path
            self._run_dir = Path(broadcast_object(self.world, str(self._run_dir)))
        assert self._run_dir is not None
        self.run = RunFolder(self._run_dir)

    def _split_and_place_data(self) -> None:
        cfg, dataset = self.cfg, self.dataset
        strata = self.task.strata(dataset, cfg.data.coverage_bins)
        if self.resumed is not None:
            self.train_idx, self.val_idx = load_split(self.run.split_path, dataset.ids)
        else:
            self.train_idx, self.val_idx = split_indices(cfg, dataset, self.run if self.is_main else None, strata,
                                                         self.task.strata_name)
        if self.resumed is not None:
            mean, std = list(self.resumed["mean"]), list(self.resumed["std"])
        elif getattr(self.model, "input_mean", None) is not None:  # pretrained encoders bring their own statistics
            mean, std = list(self.model.input_mean), list(self.model.input_std)  # type: ignore[union-attr]
        else:
            mean, std = channel_stats(dataset.images[self.train_idx])
        self.mean, self.std = mean, std
        self.data = DeviceData(cfg, dataset, self.train_idx, self.val_idx, mean, std, self.device, self.world)
        sides = tuple(self.data.train_x.shape[-2:])
        if cfg.augment.crop and cfg.augment.crop > min(sides):
            raise ConfigError(f"bad value for 'augment.crop': {cfg.augment.crop} is larger than the training images "
                              f"({sides[1]}x{sides[0]} after data.sizing); use at most {min(sides)}")

    def _build_optimisation(self) -> None:
        cfg, world, device = self.cfg, self.world, self.device
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        model = self.model.to(memory_format=self.memory_format)
        if cfg.model.options().get("norm") == "batch" and world.active and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over the global batch
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.batch_size = min(cfg.train.batch_size, len(self.train_idx) // world.size)
        if self.batch_size < 1:
            raise ConfigError(f"train: {len(self.train_idx)} training images cannot feed {world.size} processes")
        # Each step every rank takes its own `batch_size` images of one shared permutation; the partial
        # batch is dropped (batch norm needs more than one image).
        self.images_per_step = self.batch_size * world.size
        self.steps_per_epoch = len(self.train_idx) // self.images_per_step
        self.scheduler = build_scheduler(cfg, self.optimizer)
        resumed = self.resumed
        self.loss_weights = (list(resumed["loss_class_weights"]) if resumed is not None
                             and resumed.get("loss_class_weights")
                             else loss_class_weights(cfg, self.dataset, self.train_idx))
        self.loss_fn = build_loss(cfg.loss, cfg.task, cfg.model.classes, class_weights=self.loss_weights)
        self.averaging = build_averaging(cfg.train.averaging, model, cfg.train.ema_decay, cfg.train.swa_start)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
        self.augment = build_batch_augment(cfg.augment)
        # The epoch permutation is the same on every rank; each rank augments with its own random draws.
        self.generators = {"order": torch.Generator().manual_seed(cfg.seed),
                           "augment": torch.Generator().manual_seed(cfg.seed + 7919 * (world.rank + 1))}
        self.step_model: nn.Module = model
        if world.active:
            self.step_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.train.compile:
            self.step_model = torch.compile(self.step_model)  # type: ignore[assignment]
        if device.type == "cuda" and not cfg.train.deterministic:
            torch.backends.cudnn.benchmark = True
        self.metrics = self.task.new_metrics()
        self.evaluated: nn.Module = model

    def _restore(self, resumed: dict[str, Any]) -> None:
        self.model.load_state_dict(resumed["train_model_state"])
        self.optimizer.load_state_dict(resumed["optimizer_state"])
        self.scheduler.load_state_dict(resumed["scheduler_state"])
        self.averaging.load_state_dict(resumed["averaging_state"])
        if self.scaler is not None and resumed.get("scaler_state"):
            self.scaler.load_state_dict(resumed["scaler_state"])
        self.state = LoopState(**resumed["loop_state"])
        restore_rng(resumed["rng_state"], self.generators)
        self.run.remove_stale_temporaries()
        if self.is_main:
            self._repair_best(resumed)
            self.history = self.run.read_metrics(self.state.epoch)

    def _repair_best(self, last: dict[str, Any]) -> None:
        """If the run died after writing last.pt of its best epoch but before best.pt, write best.pt now."""
        if self.state.best_epoch != self.state.epoch:
            return
        current = self.run.load_checkpoint("best") if self.run.has_checkpoint("best") else None
        if current is None or current.get("epoch") != self.state.epoch:
            self.run.save_checkpoint("best", best_part(last))

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        self.setup()
        self._announce()
        result = None
        stop_reason = "completed all epochs"
        try:
            self._callbacks.on_fit_start(self)
            # Time already spent counts against the budget of a resumed run.
            self._start_time = time.perf_counter() - self.state.elapsed_s
            for epoch in range(self.state.epoch, self.cfg.train.epochs):
                reason = broadcast_object(self.world, self._callbacks.should_stop(self))
                if reason:
                    stop_reason = reason
                    break
                self.run_epoch(epoch)
            barrier(self.world)
            result = self._result(stop_reason)
        finally:
            self._callbacks.on_fit_end(self, result)
        return result

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train, validate, log (callbacks), save: one epoch; returns its metrics row."""
        self.epoch_start = time.perf_counter()
        progress_now = self.progress()
        train_loss, train_seconds = self.train_epoch(epoch, progress_now)
        val_loss = self.validate(progress_now)
        row = self._epoch_row(train_loss, val_loss, train_seconds)
        value = row[self.cfg.train.monitor]
        if self.scheduler.per_epoch:
            self.scheduler.step(value)
        self._advance(value)
        self.history.append(row)
        self._callbacks.on_epoch_end(self, row)
        if self.is_main:
            self.save(row)
        return row

    def train_epoch(self, epoch: int, progress_now: float) -> tuple[float, float]:
        """One pass over this rank's share of the training set; (mean loss over all ranks, seconds)."""
        cfg, data, world = self.cfg, self.data, self.world
        if cfg.train.freeze_encoder_epochs:
            self.model.freeze_encoder(epoch < cfg.train.freeze_encoder_epochs)  # type: ignore[operator]
        self.model.train()
        order = torch.randperm(len(self.train_idx), generator=self.generators["order"]).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        for step in range(self.steps_per_epoch):
            first = (step * world.size + world.rank) * self.batch_size
            images, masks, valid = data.train_batch(order[first : first + self.batch_size])
            images, masks, valid = prepare_batch(images, masks, valid, cfg.augment.crop, self.augment,
                                                 self.generators["augment"], self.mean, self.std, self.memory_format)
            loss = train_step(self.step_model, self.optimizer, self.loss_fn, images, masks, cfg.train.precision,
                              progress_now, valid, cfg.optim.grad_clip_norm, self.scaler)
            self.averaging.update_step(self.state.global_step, progress_now)
            self.state.global_step += 1  # before the schedule: the next step's rate is set from the steps done
            if self.scheduler.per_step:
                self.scheduler.step(self.progress())
            loss_sum += loss
            self._callbacks.on_step_end(self, step, loss)
        train_seconds = time.perf_counter() - self.epoch_start
        self.averaging.update_epoch(self.progress())
        return float(all_sum(world, loss_sum)) / (self.steps_per_epoch * world.size), train_seconds

    def _training_batches(self):  # SWA recomputes batch-norm statistics on these
        for start in range(0, len(self.data.train_x), 64):
            x = normalize(self.data.train_x[start : start + 64], self.mean, self.std)
            with autocast(self.device, self.cfg.train.precision):
                yield x.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def validate(self, progress_now: float) -> float:
        """The validated model (averaged weights when averaging) on every rank's shard; metrics merged,
        mean validation loss over all ranks returned."""
        data, task = self.data, self.task
        self.evaluated = evaluated = self.averaging.eval_model(self._training_batches)
        self.model.eval()
        self.metrics.reset()
        val_loss = torch.zeros((), device=self.device)
        for chunk in data.val_chunks():
            x = data.val_x[chunk]
            with autocast(self.device, self.cfg.train.precision):
                logits = evaluated(x.contiguous(memory_format=self.memory_format))
            val_loss += self.loss_fn(logits, data.val_y[chunk], progress_now,
                                     data.val_valid[chunk] if data.has_ignore else None) * len(x)
            probs = data.sizing.restore(task.probabilities(logits), data.height, data.width)
            truth_valid = data.val_truth_valid[chunk] if data.has_ignore else None
            task.update_metrics(self.metrics, probs, data.val_truth[chunk], truth_valid)
        total = all_sum(self.world, torch.stack([val_loss, torch.tensor(float(len(data.val_x)), device=self.device)]))
        if self.world.active:  # every rank validated its shard: merge the metric states
            states = gather_objects(self.world, self.metrics.state().cpu())
            self.metrics.reset()
            for part in states:
                self.metrics.merge_state(part.to(self.device))
        return float(total[0]) / float(total[1])

    # ------------------------------------------------------------------ bookkeeping of an epoch

    def _epoch_row(self, train_loss: float, val_loss: float, train_seconds: float) -> dict[str, float]:
        row: dict[str, float] = {
            "epoch": self.state.epoch + 1, "step": self.state.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train/loss": train_loss,
            "val/loss": val_loss,
        }
        row.update({f"val/{key}": float(value) for key, value in self.metrics.compute().items()})
        row["train/images_per_s"] = self.steps_per_epoch * self.images_per_step / train_seconds
        row["time_s"] = self.elapsed()
        return row

    def _advance(self, value: float) -> None:
        """Count the epoch, and whether the monitored value improved on the best so far."""
        state = self.state
        state.epoch += 1
        state.epoch_seconds.append(time.perf_counter() - self.epoch_start)
        self.improved = improved(value, state.best_value, self.cfg.train.monitor_mode)
        if self.improved:
            state.best_value, state.best_epoch, state.epochs_without_improvement = value, state.epoch, 0
        else:
            state.epochs_without_improvement += 1
        state.elapsed_s = self.elapsed()

    def save(self, row: dict[str, float]) -> None:
        """last.pt (everything to resume from), then best.pt when the epoch improved.

        The weights validated (averaged ones when averaging) are the ones saved for predict; last.pt
        goes first, so if the process dies before best.pt is written, resume rewrites it from last.pt.
        """
        payload = self.checkpoint_payload(row)
        self.run.save_checkpoint("last", {
            **payload, "optimizer_state": self.optimizer.state_dict(), "scheduler_state": self.scheduler.state_dict(),
            "train_model_state": self.model.state_dict(), "averaging_state": self.averaging.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler is not None else {},
            "loop_state": asdict(self.state), "rng_state": capture_rng(self.generators),
            "loss_class_weights": self.loss_weights or []})
        if self.improved:
            self.run.save_checkpoint("best", payload)

    def checkpoint_payload(self, row: dict[str, float]) -> dict[str, Any]:
        """What best.pt (and a snapshot) holds of the epoch just validated: its `checkpoint.BEST_KEYS`."""
        return {"model_state": self.evaluated.state_dict(), "config": self.cfg.to_dict(), "mean": self.mean,
                "std": self.std, "threshold": self.cfg.eval.threshold, "epoch": self.state.epoch,
                "class_names": self.task.class_names,
                "palette": [list(rgb) for rgb in self.task.palette] if self.task.palette else None,
                "metrics": {k: v for k, v in row.items() if isinstance(v, float)}}

    def epoch_summary(self, row: dict[str, float]) -> str:
        """The epoch's one-line summary (the progress bar and the log print it)."""
        marker = " (best)" if self.state.best_epoch == int(row["epoch"]) else ""
        return "  ".join([f"epoch {int(row['epoch']):3d}", f"train/loss {row['train/loss']:.4f}",
                          f"val/loss {row['val/loss']:.4f}",
                          *(f"{key} {row[key]:.3f}" for key in self.task.summary_keys if key in row),
                          f"lr {row['lr']:.2e}", f"{row['train/images_per_s']:.1f} img/s{marker}"])

    @torch.no_grad()
    def validation_strip(self, count: int = 4) -> np.ndarray:
        """image | truth | prediction of the first `count` validation images, stacked, uint8 RGB."""
        data, task = self.data, self.task
        x = data.val_x[:count]
        with autocast(self.device, self.cfg.train.precision):
            logits = self.evaluated(x.contiguous(memory_format=self.memory_format))
        probs = data.sizing.restore(task.probabilities(logits), data.height, data.width)
        pred = task.decode(probs).cpu().numpy()
        truth = data.val_truth[:count].cpu().numpy()
        valid = data.val_truth_valid[:count].cpu().numpy() if data.has_ignore else None  # type: ignore[index]
        raw = data.sizing.restore(x.float(), data.height, data.width)
        palette = label_palette(len(task.class_names), task.palette)
        return np.concatenate([prediction_strip(raw[k], truth[k], pred[k], None if valid is None else valid[k],
                                                palette) for k in range(len(x))], axis=0)

    def elapsed(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return time.perf_counter() - self._start_time

    def progress(self) -> float:
        """Share of training done: planned steps, or the time budget (less one epoch) if that is sooner.

        Kept monotonic: a faster epoch after a slow one must not move the schedule backwards.
        """
        state, minutes = self.state, self.cfg.train.max_minutes
        share = state.global_step / (self.cfg.train.epochs * self.steps_per_epoch)
        if minutes:
            usable = minutes * 60 - typical_epoch_seconds(state)
            share = max(share, self.elapsed() / max(usable, 1e-9))
        state.progress_seen = max(state.progress_seen, min(share, 1.0))
        return state.progress_seen

    def _announce(self) -> None:
        state, data, world = self.state, self.data, self.world
        if self.resumed is not None:
            self.log(f"resuming {self.run.path} after epoch {state.epoch} (step {state.global_step})")
        elif self._restart:
            self.log(f"restarting {self.run.path} from epoch 0: it stopped before its first checkpoint "
                     f"(its {RunFolder.CONFIG} is kept, what the run wrote was cleared)")
        else:
            self.log(f"run folder: {self.run.path}")
        self.log(f"data: {len(self.dataset)} images {data.height}x{data.width} from {self.dataset.root or 'memory'}; "
                 f"train {len(self.train_idx)}, validation {len(self.val_idx)} (stratified by {self.task.strata_name})"
                 + (f"; {world.size} processes" if world.active else ""))

    def _result(self, stop_reason: str) -> TrainResult:
        state, monitor = self.state, self.cfg.train.monitor
        if state.best_epoch < 0:
            raise UnetlabError(f"{self.run.path}: training produced no usable epoch ({monitor} was never finite)")
        self.log(f"stopped: {stop_reason}; best {monitor} {state.best_value:.4f} at epoch {state.best_epoch}")
        return TrainResult(self.run.path, state.best_epoch, state.best_value, state.epoch,
                           self.history if self.is_main else [], stop_reason)


# ----------------------------------------------------------------------------- entry points


def train(config: Config, data_root: str | Path | None = None, run_dir: str | Path | None = None,
          runs_base: str | Path = "runs", progress: bool = True, log: Callable[[str], None] = print,
          dataset: ArrayDataset | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train a model as `config` says and return where the run was written.

    `callbacks` (see `unetlab.engine.callbacks.Callback`) run after the built-in ones.
    """
    cfg = _with_data_root(config, data_root)
    if cfg.data.root is None and dataset is None:
        raise ConfigError("data.root: no data folder given; pass --data DIR or set data.root in the config")
    return _fit(cfg, dict(run_dir=Path(run_dir) if run_dir is not None else None, runs_base=runs_base,
                          dataset=dataset, callbacks=callbacks, progress=progress, log=log))


def resume(run_dir: str | Path, data_root: str | Path | None = None, progress: bool = True,
           log: Callable[[str], None] = print, dataset: ArrayDataset | None = None,
           overrides: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Continue the run in `run_dir` from checkpoints/last.pt exactly where it stopped.

    A run stopped before its first checkpoint (killed during epoch 1: config.yaml but no last.pt)
    restarts from epoch 0 with its config.yaml, in the same folder (see `RunFolder.restart`).
    `overrides` may only extend the run (`RESUMABLE_OVERRIDES`); anything else would make the
    resumed run a different experiment.
    """
    run = RunFolder(run_dir)
    if not run.config_path.is_file():
        raise UnetlabError(f"{run.path}: nothing to resume (no {RunFolder.CONFIG}, so not a run folder written by "
                           "'unetlab train'); start a new run instead")
    bad = [o for o in overrides or [] if o.split("=", 1)[0].strip() not in RESUMABLE_OVERRIDES]
    if bad:
        raise ConfigError(f"--set {bad[0]!r} with --resume: a resumed run keeps its config; only "
                          f"{', '.join(RESUMABLE_OVERRIDES)} may change (start a new run for anything else)")
    if not run.has_checkpoint("last"):
        cfg = _with_data_root(run.read_config(overrides), data_root)
        return _fit(cfg, dict(run_dir=run.path, dataset=dataset, restart=True, callbacks=callbacks,
                              progress=progress, log=log))
    payload = run.load_checkpoint("last")
    if "loop_state" not in payload:
        raise UnetlabError(f"{run.checkpoint_path('last')}: written by an older unetlab without resume state; "
                           "start a new run")
    cfg = _with_data_root(run.read_config(overrides), data_root)
    return _fit(cfg, dict(run_dir=run.path, dataset=dataset, resumed=payload, callbacks=callbacks,
                          progress=progress, log=log))


def _with_data_root(cfg: Config, data_root: str | Path | None) -> Config:
    """`cfg` reading its data from `data_root` (None: where it says)."""
    if data_root is None:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(data_root)})})


def _fit(cfg: Config, options: dict[str, Any]) -> TrainResult:
    world = world_from_env()
    try:
        return Trainer(cfg, world, **options).fit()
    finally:
        shutdown(world)
