"""Callbacks: how anything watches or stops a training run without editing the loop.

The protocol (every method optional; subclass `Callback` and override what you need):

    on_fit_start(trainer)             the model, data, optimiser and run folder are ready; on resume,
                                      `trainer.state` already holds the restored counters
    on_step_end(trainer, step, loss)  after each optimisation step; `loss` is a detached device
                                      tensor: call float(loss) only now and then (it synchronises)
    on_epoch_end(trainer, row)        after validation: `row` is the epoch's line of metrics.csv
                                      (epoch, step, lr, train/loss, val/loss, val/<metric>..., time_s);
                                      called before the epoch's checkpoints are written, so that what
                                      a checkpoint claims is always already logged
    should_stop(trainer) -> str|None  asked before each epoch; a text stops the run and becomes
                                      `TrainResult.stop_reason` (rank 0 decides under DDP)
    on_fit_end(trainer, result)       always, also after an error (then `result` is None)

`trainer` exposes `cfg`, `run` (the RunFolder), `world`, `model`, `optimizer`, `state` (LoopState:
epoch, global_step, best_value, best_epoch, epochs_without_improvement, elapsed), `history` (rows
so far), `steps_per_epoch`, `images_per_step`, `task`, `is_main`, `elapsed()`, `log(text)` and
`checkpoint_payload(row)` (what best.pt holds of the epoch just validated, for a callback's own checkpoint).

`default_callbacks(cfg, ...)` builds the built-in ones a config asks for; the Python API's `train`
and `resume` take `callbacks=[...]` that run after them. A user callback that raises stops the
run with its error; the checkpoints written so far stay.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from unetlab.engine.checkpoint import best_part
from unetlab.engine.distributed import all_sum
from unetlab.engine.schedule import cycles_completed
from unetlab.errors import UnetlabError
from unetlab.viz import save_learning_curves

if TYPE_CHECKING:
    from unetlab.engine.trainer import Trainer, TrainResult


class Callback:
    """Base class with every hook a no-op."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", step: int, loss: torch.Tensor) -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        pass

    def should_stop(self, trainer: "Trainer") -> str | None:
        return None

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult | None") -> None:
        pass


# ----------------------------------------------------------------------------- stopping


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for `patience` epochs.

    The count lives in `trainer.state` (saved in last.pt), so a resumed run stops where the
    uninterrupted one would have.
    """

    def __init__(self, monitor: str, patience: int):
        self.monitor, self.patience = monitor, patience

    def should_stop(self, trainer: "Trainer") -> str | None:
        if trainer.state.epochs_without_improvement >= self.patience:
            return f"early stop: {self.monitor} did not improve for {self.patience} epochs"
        return None


def typical_epoch_seconds(state: Any) -> float:
    """The median epoch time: it ignores the first epoch's warm-up and short stalls of a shared machine."""
    return statistics.median(state.epoch_seconds) if state.epoch_seconds else 0.0


class TimeBudget(Callback):
    """Stop before an epoch that would end after `minutes` of training (time of earlier sessions included)."""

    def __init__(self, minutes: float):
        self.minutes = minutes

    def should_stop(self, trainer: "Trainer") -> str | None:
        state = trainer.state
        if state.epoch_seconds and trainer.elapsed() + typical_epoch_seconds(state) > self.minutes * 60:
            return f"time budget of {self.minutes:g} min reached"
        return None


class TrainingDiverged(UnetlabError):
    """The loss went NaN/inf or exploded: a one-line error (a search over learning rates may catch it as a
    failed trial rather than stop)."""


class DivergenceGuard(Callback):
    """Stop a run whose loss went NaN/inf or exploded, before any weights it made are saved.

    A loss counts as diverged when it is not finite or exceeds `factor` x max(1, the session's first
    loss): segmentation losses start near 1 and shrink, so a thousandfold growth is never training.
    Checked on every step on the CPU (reading a CPU tensor costs nothing); on a GPU the step losses'
    peak is kept on the device and read every `gpu_every` steps and at each epoch's last step, one
    synchronisation per check instead of one per step. Under DDP every rank checks at the same steps
    and the verdict is summed over ranks, so all stop together. At epoch end the row's train and
    validation losses are checked the same way, before metrics.csv and the checkpoints see them: a
    diverged epoch never becomes best.pt or last.pt, the previous epoch's checkpoints stay.
    Always on (first of the built-ins); the error names the likely causes and the fixes.
    """

    def __init__(self, factor: float = 1e3, gpu_every: int = 16):
        self.factor, self.gpu_every = factor, gpu_every
        self.every = 1
        self.first = math.nan  # the session's first training loss
        self.peak: torch.Tensor | None = None  # the largest loss since the last check (NaN if any was NaN)

    @property
    def limit(self) -> float:
        return self.factor * max(self.first, 1.0) if math.isfinite(self.first) else -math.inf

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.every = 1 if trainer.device.type == "cpu" else self.gpu_every
        self.first, self.peak = math.nan, None

    def on_step_end(self, trainer: "Trainer", step: int, loss: torch.Tensor) -> None:
        if self.peak is None and math.isnan(self.first):  # one synchronisation, at the session's first step
            self.first = float(loss)
        self.peak = loss if self.peak is None else torch.maximum(self.peak, loss)
        if (step + 1) % self.every and step != trainer.steps_per_epoch - 1:
            return
        peak, self.peak = self.peak, None
        diverged = all_sum(trainer.world, (~(peak <= self.limit)).float())  # NaN <= x is False
        if float(diverged):
            where = "by" if self.every > 1 else "at"
            self._stop(trainer, f"the training loss reached {self._describe(float(peak))} {where} step "
                                f"{trainer.state.global_step} (epoch {trainer.state.epoch + 1})", trainer.state.epoch)

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        for key in ("train/loss", "val/loss"):
            if not row[key] <= self.limit:
                self._stop(trainer, f"{key} is {self._describe(row[key])} after epoch {int(row['epoch'])}",
                           int(row["epoch"]) - 1)

    def _describe(self, value: float) -> str:
        if not math.isfinite(value):
            return f"{value}"
        return f"{value:.4g}, over {self.factor:g}x the first loss {self.first:.4g}"

    def _stop(self, trainer: "Trainer", what: str, saved_epoch: int) -> None:
        cfg = trainer.cfg
        causes = f"optim.lr={cfg.optim.lr:g} is likely too high for {cfg.optim.name}"
        fixes = [f"lower optim.lr (e.g. --set optim.lr={min(cfg.optim.lr / 10, 1e-3):g})"]
        if cfg.optim.grad_clip_norm is None:
            fixes.append("clip gradients with --set optim.grad_clip_norm=1.0")
        if cfg.train.precision != "fp32":
            causes += f", or {cfg.train.precision} overflowed"
            fixes.append("use --set train.precision=fp32")
        kept = (f"the checkpoints of epoch {saved_epoch} and before are kept (last.pt, best.pt)" if saved_epoch
                else "no checkpoint was written")
        raise TrainingDiverged(f"{trainer.run.path}: training diverged: {what}; {causes}; "
                           f"{', or '.join(fixes)}; {kept}")


# ----------------------------------------------------------------------------- logging


class MetricsCsv(Callback):
    """metrics.csv: the whole history rewritten atomically each epoch, so it is never half-written."""

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        trainer.run.write_metrics(trainer.history)


class LearningCurves(Callback):
    """figures/learning_curves.png from the history at the end of the run (also after an error)."""

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult | None") -> None:
        if trainer.history:
            save_learning_curves(trainer.run.figure_path("learning_curves.png"), trainer.history)


class TensorBoard(Callback):
    """TensorBoard events in the run folder: step scalars every `every_steps` steps, the epoch's row,
    validation image | truth | prediction strips every `image_every_epochs` epochs, the config as text."""

    def __init__(self, every_steps: int, image_every_epochs: int):
        self.every_steps, self.image_every_epochs = every_steps, image_every_epochs
        self.writer: Any = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = trainer.state.global_step > 0
        # On resume, TensorBoard drops the events a killed run wrote after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(trainer.run.path),
                                    purge_step=trainer.state.global_step + 1 if resumed else None)
        if not resumed:
            self.writer.add_text("config", "```yaml\n" + trainer.cfg.to_yaml() + "\n```")

    def on_step_end(self, trainer: "Trainer", step: int, loss: torch.Tensor) -> None:
        global_step = trainer.state.global_step
        if not self.every_steps or global_step % self.every_steps:
            return
        seconds = time.perf_counter() - trainer.epoch_start
        self.writer.add_scalar("step/train_loss", float(loss), global_step)  # one sync per N steps
        self.writer.add_scalar("step/lr", trainer.optimizer.param_groups[0]["lr"], global_step)
        self.writer.add_scalar("step/images_per_s", (step + 1) * trainer.images_per_step / seconds, global_step)

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        # Epoch scalars share the step axis of the per-step scalars (the epoch is a scalar too).
        step = int(row["step"])
        for key, value in row.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if self.image_every_epochs and int(row["epoch"]) % self.image_every_epochs == 0:
            self.writer.add_image("val/predictions", trainer.validation_strip(4), step, dataformats="HWC")
        self.writer.flush()

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult | None") -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- checkpoints


def snapshot_name(cycle: int) -> str:
    """The checkpoint name (`RunFolder.checkpoint_path`) of the snapshot ending cycle `cycle` (1-based)."""
    return f"snapshot-{cycle}"


class Snapshots(Callback):
    """checkpoints/snapshot-<k>.pt at the end of cycle k of `schedule.name: cosine_restarts`: a snapshot
    ensemble (Huang et al. 2017) for `predict` / `evaluate --ensemble`.

    Cycle k ends at the first epoch end whose training progress (the schedule's: steps or time budget)
    reaches k / cycles; its snapshot holds what best.pt would of that epoch (the validated weights,
    averaged ones when averaging). It is written here, before last.pt: a run killed in between does the
    epoch again on resume and writes the same snapshot again, and the cycles done are counted from the
    restored progress, so resume neither loses nor repeats one. An epoch that ends two cycles at once
    keeps the later number. A run that stops before its last cycle ends (time budget, early stopping)
    ends its cycle there: the snapshot of that cycle is last.pt's weights. So the last snapshot always
    holds last.pt's weights.
    """

    def __init__(self, cycles: int):
        self.cycles = cycles
        self.saved = 0  # the highest cycle whose snapshot is written

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.saved = cycles_completed(trainer.state.progress_seen, self.cycles)

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        done = cycles_completed(trainer.state.progress_seen, self.cycles)
        if done > self.saved:
            path = trainer.run.save_checkpoint(snapshot_name(done), trainer.checkpoint_payload(row))
            trainer.log(f"end of cycle {done} of {self.cycles}: saved {path}")
            self.saved = done

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult | None") -> None:
        run, epoch = trainer.run, trainer.state.epoch
        if result is None or self.saved == self.cycles or not run.has_checkpoint("last"):
            return
        if self.saved and run.load_checkpoint(snapshot_name(self.saved)).get("epoch") == epoch:
            return  # the run stopped right at a cycle's end: that snapshot is already its end
        last = run.load_checkpoint("last")
        path = run.save_checkpoint(snapshot_name(self.saved + 1), best_part(last))
        trainer.log(f"stopped inside cycle {self.saved + 1} of {self.cycles}: saved its end (last.pt) as {path}")


# ----------------------------------------------------------------------------- what a person sees


class ProgressBar(Callback):
    """A rich progress bar with ETA, images/s and the loss; the epoch summary printed above it."""

    def __init__(self) -> None:
        self._bar: Any = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
        from rich.progress import TimeElapsedColumn, TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[ips]:.1f} img/s"), TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self._bar.start()
        self._epochs = self._bar.add_task("epochs", total=trainer.cfg.train.epochs, completed=trainer.state.epoch,
                                          ips=0.0, loss=float("nan"))
        self._steps = self._bar.add_task("epoch", total=trainer.steps_per_epoch, ips=0.0, loss=float("nan"))

    def on_step_end(self, trainer: "Trainer", step: int, loss: torch.Tensor) -> None:
        if step % 5 == 0 or step == trainer.steps_per_epoch - 1:
            ips = (step + 1) * trainer.images_per_step / max(time.perf_counter() - trainer.epoch_start, 1e-9)
            self._bar.update(self._steps, completed=step + 1, description=f"epoch {trainer.state.epoch + 1}",
                             ips=ips, loss=float(loss))

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        self._bar.update(self._epochs, completed=int(row["epoch"]), ips=row["train/images_per_s"],
                         loss=row["train/loss"])
        self._bar.console.print(trainer.epoch_summary(row))

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult | None") -> None:
        if self._bar is not None:
            self._bar.stop()


class EpochLines(Callback):
    """One plain log line per epoch (logs, notebooks, tests): what the progress bar prints above itself."""

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        trainer.log(trainer.epoch_summary(row))


# ----------------------------------------------------------------------------- the defaults


def default_callbacks(cfg: Any, is_main: bool, progress: bool) -> list[Callback]:
    """The built-in callbacks `cfg` asks for, in order: the divergence guard and the stopping rules on
    every rank, then (rank 0 only) metrics.csv, TensorBoard, learning curves, what the user sees and the
    snapshots of a cosine_restarts schedule with 2 or more cycles."""
    callbacks: list[Callback] = [DivergenceGuard()]
    if cfg.train.max_minutes:
        callbacks.append(TimeBudget(cfg.train.max_minutes))
    if cfg.train.early_stop_patience:
        callbacks.append(EarlyStopping(cfg.train.monitor, cfg.train.early_stop_patience))
    if is_main:
        callbacks += [MetricsCsv(), TensorBoard(cfg.train.log_every_steps, cfg.train.image_every_epochs),
                      LearningCurves(), ProgressBar() if progress else EpochLines()]
    if is_main and cfg.schedule.name == "cosine_restarts" and cfg.schedule.cycles > 1:
        callbacks.append(Snapshots(cfg.schedule.cycles))  # after metrics.csv: what a snapshot claims is logged
    return callbacks


class CallbackList:
    """Calls each hook of every callback in order; `should_stop` returns the first reason given."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def _each(self, hook: str) -> list[Callable[..., Any]]:
        return [getattr(callback, hook) for callback in self.callbacks if hasattr(callback, hook)]

    def on_fit_start(self, trainer: "Trainer") -> None:
        for hook in self._each("on_fit_start"):
            hook(trainer)

    def on_step_end(self, trainer: "Trainer", step: int, loss: torch.Tensor) -> None:
        for hook in self._each("on_step_end"):
            hook(trainer, step, loss)

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        for hook in self._each("on_epoch_end"):
            hook(trainer, row)

    def should_stop(self, trainer: "Trainer") -> str | None:
        for hook in self._each("should_stop"):
            reason = hook(trainer)
            if reason:
                return reason
        return None

    def on_fit_end(self, trainer: "Trainer", result: "TrainResult | None") -> None:
        errors = []
        for hook in self._each("on_fit_end"):
            try:  # every callback gets to close its files, even if another one fails
                hook(trainer, result)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
        if errors and result is not None:
            raise errors[0]


__all__ = ["Callback", "CallbackList", "DivergenceGuard", "EarlyStopping", "EpochLines", "LearningCurves",
           "MetricsCsv", "ProgressBar", "Snapshots", "TensorBoard", "TimeBudget", "TrainingDiverged",
           "default_callbacks", "snapshot_name", "typical_epoch_seconds"]
