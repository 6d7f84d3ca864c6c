"""The Trainer's callback protocol: what a user callback sees, how it stops a run, what survives its errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from run_fixtures import tiny_config
from unetlab.api import train as api_train
from unetlab.engine.callbacks import (Callback, CallbackList, DivergenceGuard, EarlyStopping, TimeBudget,
                                     TrainingDiverged, default_callbacks)
from unetlab.engine.checkpoint import load_checkpoint
from unetlab.engine.trainer import LoopState, resume, train
from unetlab.run_folder import RunFolder


class Recorder(Callback):
    """Writes down every hook call with what it saw."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_fit_start(self, trainer) -> None:
        self.calls.append(("fit_start", trainer.state.epoch, trainer.run.path))

    def on_step_end(self, trainer, step, loss) -> None:
        assert isinstance(loss, torch.Tensor) and not loss.requires_grad
        self.calls.append(("step", trainer.state.epoch, step, trainer.state.global_step))

    def on_epoch_end(self, trainer, row) -> None:
        # Logged before the checkpoint of this epoch is written.
        last = trainer.run.checkpoint_path("last")
        self.calls.append(("epoch", dict(row), load_checkpoint(last)["epoch"] if last.is_file() else 0))

    def on_fit_end(self, trainer, result) -> None:
        self.calls.append(("fit_end", result))


def _quiet(**kw):
    return dict(progress=False, log=lambda _: None, **kw)


def test_a_user_callback_sees_every_step_and_epoch_in_order(tgs_dir: Path, tmp_path: Path):
    recorder = Recorder()
    result = train(tiny_config(), data_root=tgs_dir, run_dir=tmp_path / "run", callbacks=[recorder], **_quiet())
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "fit_start" and kinds[-1] == "fit_end"
    steps = [call for call in recorder.calls if call[0] == "step"]
    epochs = [call for call in recorder.calls if call[0] == "epoch"]
    per_epoch = len(steps) // result.epochs_run
    assert per_epoch >= 1 and len(steps) == per_epoch * result.epochs_run
    assert [s[3] for s in steps] == list(range(1, len(steps) + 1))  # global step already counted
    assert [s[2] for s in steps] == list(range(per_epoch)) * result.epochs_run
    # Each epoch row is the metrics.csv row, and arrives before that epoch's last.pt.
    assert [e[1]["epoch"] for e in epochs] == [1, 2]
    assert [e[2] for e in epochs] == [0, 1]
    assert [row["val/loss"] for row in result.history] == [e[1]["val/loss"] for e in epochs]
    assert recorder.calls[-1][1] is not None and recorder.calls[-1][1].epochs_run == 2


def test_should_stop_ends_the_run_with_its_reason_and_keeps_checkpoints(tgs_dir: Path, tmp_path: Path):
    class StopAfterOne(Callback):
        def should_stop(self, trainer):
            return "pruned by the study" if trainer.state.epoch >= 1 else None

    result = train(tiny_config("train.epochs=5"), data_root=tgs_dir, run_dir=tmp_path / "run",
                   callbacks=[StopAfterOne()], **_quiet())
    assert result.epochs_run == 1 and result.stop_reason == "pruned by the study"
    run = RunFolder(result.run_dir)
    assert run.load_checkpoint("last")["epoch"] == 1 and run.has_checkpoint("best")
    assert len(run.read_metrics()) == 1


def test_a_failing_callback_stops_the_run_but_earlier_epochs_stay(tgs_dir: Path, tmp_path: Path):
    class FailsInEpochTwo(Recorder):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] == 2:
                raise RuntimeError("callback failed")

    failing = FailsInEpochTwo()
    with pytest.raises(RuntimeError, match="callback failed"):
        train(tiny_config("train.epochs=3"), data_root=tgs_dir, run_dir=tmp_path / "run", callbacks=[failing],
              **_quiet())
    run = RunFolder(tmp_path / "run")
    assert run.load_checkpoint("last")["epoch"] == 1  # epoch 2 was never claimed by a checkpoint
    assert failing.calls[-1] == ("fit_end", None)  # told that the run ended without a result
    assert run.figure_path("learning_curves.png").is_file()
    assert not list(run.path.rglob("*.tmp"))


def test_resume_passes_the_restored_state_to_callbacks(tgs_dir: Path, tmp_path: Path):
    train(tiny_config("train.epochs=1"), data_root=tgs_dir, run_dir=tmp_path / "run", **_quiet())
    recorder = Recorder()
    result = resume(tmp_path / "run", data_root=tgs_dir, overrides=["train.epochs=2"], callbacks=[recorder],
                    **_quiet())
    assert recorder.calls[0][:2] == ("fit_start", 1)
    assert [call[1]["epoch"] for call in recorder.calls if call[0] == "epoch"] == [2]
    assert [row["epoch"] for row in result.history] == [1, 2]  # the history includes the first session


def test_the_python_api_takes_callbacks(tgs_dir: Path, tmp_path: Path):
    recorder = Recorder()
    api_train(tiny_config("train.epochs=1"), data_root=tgs_dir, run_dir=tmp_path / "run", evaluate_after=False,
              callbacks=[recorder], **_quiet())
    assert any(call[0] == "epoch" for call in recorder.calls)


class _FakeTrainer:
    def __init__(self, state: LoopState, elapsed: float):
        self.state, self._elapsed = state, elapsed

    def elapsed(self) -> float:
        return self._elapsed


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping("val/loss", patience=3)
    assert stopper.should_stop(_FakeTrainer(LoopState(epochs_without_improvement=2), 0.0)) is None
    assert "did not improve for 3 epochs" in stopper.should_stop(_FakeTrainer(LoopState(epochs_without_improvement=3),
                                                                              0.0))


def test_time_budget_stops_before_an_epoch_that_would_overrun():
    budget = TimeBudget(minutes=1.0)
    assert budget.should_stop(_FakeTrainer(LoopState(), 59.0)) is None  # no epoch timed yet
    typical = LoopState(epoch_seconds=[100.0, 10.0, 10.0])  # the median ignores the slow first epoch
    assert budget.should_stop(_FakeTrainer(typical, 45.0)) is None
    assert budget.should_stop(_FakeTrainer(typical, 51.0)) == "time budget of 1 min reached"


def test_default_callbacks_follow_the_config_and_the_rank():
    cfg = tiny_config("train.max_minutes=5", "train.early_stop_patience=0")
    main = [type(c).__name__ for c in default_callbacks(cfg, is_main=True, progress=False)]
    other = [type(c).__name__ for c in default_callbacks(cfg, is_main=False, progress=True)]
    assert main == ["DivergenceGuard", "TimeBudget", "MetricsCsv", "TensorBoard", "LearningCurves", "EpochLines"]
    assert other == ["DivergenceGuard", "TimeBudget"]  # only rank 0 writes files and speaks


def test_callback_list_returns_the_first_stop_reason_and_closes_every_callback():
    closed = []

    class Says(Callback):
        def __init__(self, reason):
            self.reason = reason

        def should_stop(self, trainer):
            return self.reason

        def on_fit_end(self, trainer, result):
            closed.append(self.reason)
            raise OSError("disk full")

    callbacks = CallbackList([Says(None), Says("first"), Says("second")])
    assert callbacks.should_stop(None) == "first"
    callbacks.on_fit_end(None, None)  # after an error: every callback closes, the original error wins
    assert closed == [None, "first", "second"]
    with pytest.raises(OSError):
        callbacks.on_fit_end(None, object())
    assert math.isnan(LoopState().best_value)


class _StepTrainer:
    """What DivergenceGuard reads of a trainer, on a CPU or (by name only) a CUDA device."""

    def __init__(self, tmp_path: Path, device: str = "cpu", steps_per_epoch: int = 40, *overrides: str):
        from unetlab.engine.distributed import World

        self.cfg = tiny_config("optim.lr=0.5", *overrides)
        self.device, self.steps_per_epoch, self.world = torch.device(device), steps_per_epoch, World()
        self.state, self.run = LoopState(epoch=2, global_step=80), RunFolder(tmp_path / "run")

    def feed(self, guard, losses) -> int:
        """Give `guard` one step per loss; return how many steps passed before it stopped the run."""
        for k, loss in enumerate(losses):
            step = self.state.global_step % self.steps_per_epoch
            self.state.global_step += 1
            try:
                guard.on_step_end(self, step, torch.tensor(loss))
            except TrainingDiverged as exc:
                self.error = str(exc)
                return k
        return len(losses)


def test_divergence_guard_stops_at_the_first_nan_step_on_cpu(tmp_path):
    trainer = _StepTrainer(tmp_path)
    guard = DivergenceGuard()
    guard.on_fit_start(trainer)
    assert trainer.feed(guard, [0.7, 0.6, 0.5, math.nan, 0.4]) == 3
    message = trainer.error
    assert "training diverged: the training loss reached nan at step 84 (epoch 3)" in message
    assert "optim.lr=0.5 is likely too high for adam" in message and "--set optim.lr=0.001" in message
    assert "optim.grad_clip_norm" in message and "train.precision" not in message  # tiny runs are fp32
    assert "epoch 2 and before are kept" in message and "\n" not in message


def test_divergence_guard_stops_an_exploding_loss_not_a_growing_one(tmp_path):
    trainer = _StepTrainer(tmp_path, "cpu", 40, "train.precision=bf16", "optim.grad_clip_norm=5")
    guard = DivergenceGuard(factor=1e3)
    guard.on_fit_start(trainer)
    # Limit 1000 x max(1, first loss 0.3): a loss that grows 2000-fold from 0.3 is still training.
    assert trainer.feed(guard, [0.3, 2.0, 50.0, 999.0]) == 4
    assert trainer.feed(guard, [1001.0]) == 0
    assert "reached 1001, over 1000x the first loss 0.3" in trainer.error
    assert "or bf16 overflowed" in trainer.error and "--set train.precision=fp32" in trainer.error
    assert "grad_clip_norm" not in trainer.error  # already clipping
    guard.on_fit_start(trainer)  # a new session takes its own first loss
    assert trainer.feed(guard, [math.inf]) == 0 and "reached inf" in trainer.error


def test_divergence_guard_on_a_gpu_reads_the_loss_every_n_steps_and_at_epoch_end(tmp_path):
    trainer = _StepTrainer(tmp_path, "cuda", 40)
    trainer.state.global_step = 0
    guard = DivergenceGuard(gpu_every=16)
    guard.on_fit_start(trainer)
    # NaN at step 3: seen at the check after step 15, not before (no synchronisation per step).
    assert trainer.feed(guard, [0.7, 0.6, 0.5, math.nan] + [0.5] * 30) == 15
    assert "reached nan by step 16" in trainer.error
    trainer.state.global_step = 32  # steps 32..39 end the epoch: its last step is always checked
    guard.on_fit_start(trainer)
    assert trainer.feed(guard, [0.7, 0.6, 0.5, 0.4, math.nan, 0.5, 0.5, 0.5]) == 7
    assert "by step 40" in trainer.error


def test_divergence_guard_refuses_an_epoch_whose_validation_loss_is_not_finite(tmp_path):
    trainer = _StepTrainer(tmp_path)
    guard = DivergenceGuard()
    guard.on_fit_start(trainer)
    trainer.feed(guard, [0.7])
    row = {"epoch": 3, "train/loss": 0.6, "val/loss": 0.9, "val/tgs_map": 0.5}
    guard.on_epoch_end(trainer, row)  # a healthy epoch passes
    for bad in (math.nan, math.inf, 5e3):
        with pytest.raises(TrainingDiverged, match="training diverged: val/loss is .* after epoch 3"):
            guard.on_epoch_end(trainer, {**row, "val/loss": bad})
