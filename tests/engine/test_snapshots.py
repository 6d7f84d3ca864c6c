"""Snapshot ensembles: `cosine_restarts` with 2+ cycles writes checkpoints/snapshot-<k>.pt at the end of each
cycle (engine/callbacks.py `Snapshots`), through resume, and `--ensemble` averages them.

Four deterministic one-step epochs of the tiny U-Net (12 training images, batch 8), two cycles: cycle 1
ends after epoch 2, cycle 2 at the end; EMA weights, so a snapshot must hold the validated (averaged)
weights, as best.pt does."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from run_fixtures import TINY, run_cli, tiny_config
from unetlab.data.formats.registry import load_for_config
from unetlab.engine.callbacks import Callback
from unetlab.engine.checkpoint import BEST_KEYS, FORMAT
from unetlab.engine.trainer import resume, train
from unetlab.inference.ensemble import load_predictor
from unetlab.inference.predictor import Predictor

SNAPSHOTS = [*TINY, "train.epochs=4", "train.deterministic=true", "train.num_threads=1", "train.averaging=ema",
             "schedule.name=cosine_restarts", "schedule.cycles=2", "optim.lr=0.01", "schedule.min_lr=0.001",
             "train.log_every_steps=0", "train.image_every_epochs=0"]
QUIET = dict(progress=False, log=lambda _: None)


def _config(*more: str):
    return tiny_config(*SNAPSHOTS, *more)


def _snapshots(run: Path) -> list[str]:
    return sorted(path.name for path in (run / "checkpoints").glob("snapshot-*.pt"))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # what every checkpoint must allow


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class _Recorder(Callback):
    """At each epoch end (after the built-ins): the snapshots on disk and the weights the trainer validated."""

    def __init__(self) -> None:
        self.files: dict[int, list[str]] = {}
        self.validated: dict[int, dict[str, torch.Tensor]] = {}
        self.trained: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, trainer, row) -> None:
        epoch = int(row["epoch"])
        self.files[epoch] = _snapshots(trainer.run.path)
        self.validated[epoch] = {k: v.detach().clone() for k, v in trainer.evaluated.state_dict().items()}
        self.trained[epoch] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def whole(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _Recorder]:
    run, recorder = tmp_path_factory.mktemp("snapshots") / "whole", _Recorder()
    train(_config(), data_root=tgs_dir, run_dir=run, callbacks=[recorder], **QUIET)
    return run, recorder


def test_a_snapshot_at_the_end_of_each_cycle_and_nothing_else(whole):
    run, recorder = whole
    assert recorder.files == {1: [], 2: ["snapshot-1.pt"], 3: ["snapshot-1.pt"], 4: ["snapshot-1.pt", "snapshot-2.pt"]}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt", "snapshot-1.pt",
                                                                       "snapshot-2.pt"]
    with (run / "metrics.csv").open() as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    # One step per epoch. After a step the trainer sets the rate from the steps done, so epoch e logs the
    # rate of progress e / 4: cycle 1's middle, cycle 2's restart at 0.5, its middle, then the floor.
    assert lrs == pytest.approx([0.0055, 0.01, 0.0055, 0.001], abs=1e-9)


def test_each_snapshot_holds_what_best_pt_would_of_its_epoch(whole):
    run, recorder = whole
    best = _load(run / "checkpoints" / "best.pt")
    for cycle, epoch in ((1, 2), (2, 4)):
        snapshot = _load(run / "checkpoints" / f"snapshot-{cycle}.pt")
        assert snapshot.keys() == best.keys() == {"format", *BEST_KEYS} and snapshot["format"] == FORMAT
        assert snapshot["epoch"] == epoch
        assert _same_state(snapshot["model_state"], recorder.validated[epoch])  # the EMA weights...
        assert not _same_state(snapshot["model_state"], recorder.trained[epoch])  # ...not the live ones
    with (run / "metrics.csv").open() as handle:
        row2 = list(csv.DictReader(handle))[1]
    assert _load(run / "checkpoints" / "snapshot-1.pt")["metrics"]["val/loss"] == pytest.approx(float(row2["val/loss"]))
    last = _load(run / "checkpoints" / "last.pt")
    assert _same_state(_load(run / "checkpoints" / "snapshot-2.pt")["model_state"], last["model_state"])


class _Interrupt(Callback):
    """Raise at the first step of epoch 3 (both checkpoints of epoch 2 written), or at epoch 2's end (snapshot-1
    written, last.pt still epoch 1's)."""

    def __init__(self, where: str):
        self.where = where

    def on_step_end(self, trainer, step, loss) -> None:
        if self.where == "epoch 3" and trainer.state.epoch == 2:
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, row) -> None:
        if self.where == "before last.pt" and row["epoch"] == 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where, last_epoch", [("epoch 3", 2), ("before last.pt", 1)])
def test_resume_neither_loses_nor_repeats_a_snapshot(whole, tgs_dir, tmp_path, where, last_epoch):
    reference, _ = whole
    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(_config(), data_root=tgs_dir, run_dir=run, callbacks=[_Interrupt(where)], **QUIET)
    assert _snapshots(run) == ["snapshot-1.pt"] and _load(run / "checkpoints" / "last.pt")["epoch"] == last_epoch
    written = (run / "checkpoints" / "snapshot-1.pt").stat().st_mtime_ns

    resume(run, **QUIET)
    assert _snapshots(run) == _snapshots(reference) == ["snapshot-1.pt", "snapshot-2.pt"]
    rewritten = (run / "checkpoints" / "snapshot-1.pt").stat().st_mtime_ns != written
    assert rewritten == (where == "before last.pt")  # only an epoch done again writes its snapshot again
    for name in ("snapshot-1.pt", "snapshot-2.pt"):
        again, whole_run = _load(run / "checkpoints" / name), _load(reference / "checkpoints" / name)
        assert again["epoch"] == whole_run["epoch"]
        assert _same_state(again["model_state"], whole_run["model_state"]), name


class _StopAfter(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def should_stop(self, trainer) -> str | None:
        return "told to stop" if trainer.state.epoch >= self.epochs else None


@pytest.mark.parametrize("stop_after, expected", [(1, {"snapshot-1.pt": 1}), (2, {"snapshot-1.pt": 2}),
                                                  (3, {"snapshot-1.pt": 2, "snapshot-2.pt": 3})])
def test_a_run_stopped_inside_a_cycle_ends_that_cycle_with_last_pt(tgs_dir, tmp_path, stop_after, expected):
    run = tmp_path / "stopped"
    result = train(_config(), data_root=tgs_dir, run_dir=run, callbacks=[_StopAfter(stop_after)], **QUIET)
    assert result.stop_reason == "told to stop" and result.epochs_run == stop_after
    assert {name: _load(run / "checkpoints" / name)["epoch"] for name in _snapshots(run)} == expected
    final = _load(run / "checkpoints" / _snapshots(run)[-1])
    last = _load(run / "checkpoints" / "last.pt")
    assert final.keys() == {"format", *BEST_KEYS} and _same_state(final["model_state"], last["model_state"])


def test_a_time_budget_ending_the_run_makes_its_end_the_last_snapshot(tgs_dir, tmp_path):
    # 6 ms of budget: progress (share of the budget) reaches 1 inside epoch 1, so epoch 1 ends both cycles
    # at once (the later number is kept) and the budget stops the run before epoch 2.
    run = tmp_path / "budget"
    result = train(_config("train.max_minutes=0.0001"), data_root=tgs_dir, run_dir=run, **QUIET)
    assert result.stop_reason.startswith("time budget") and result.epochs_run == 1
    assert _snapshots(run) == ["snapshot-2.pt"]
    last = _load(run / "checkpoints" / "last.pt")
    assert _same_state(_load(run / "checkpoints" / "snapshot-2.pt")["model_state"], last["model_state"])


def test_no_snapshots_without_restarts(tiny_run):
    assert _snapshots(tiny_run) == []


def test_ensemble_of_the_snapshots_is_the_mean_of_their_probabilities(whole, tgs_dir, tmp_path, capsys):
    run, _ = whole
    images = list(load_for_config(_config(), tgs_dir).images[:3])
    first, second = (Predictor.load(run / "checkpoints" / f"snapshot-{k}.pt", device="cpu") for k in (1, 2))
    expected = [(a + b) / np.float32(2) for a, b in zip(first.predict_proba(images), second.predict_proba(images))]
    assert not np.allclose(expected[0], first.predict_proba(images)[0], atol=1e-4)  # the two really differ
    # The documented way: the run's last.pt (the final snapshot) plus the earlier snapshot files.
    ensemble = load_predictor(run, "last", [run / "checkpoints" / "snapshot-1.pt"], device="cpu")
    for got, want in zip(ensemble.predict_proba(images), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    code, _, err = run_cli(["evaluate", str(run), "--data", str(tgs_dir), "--which", "last", "--ensemble",
                            str(run / "checkpoints" / "snapshot-1.pt")], capsys)
    assert code == 0, err
    assert list((run / "evaluation").glob("ensemble2-last-val*.json"))
    shutil.rmtree(run / "evaluation")  # the module's run stays as training left it
