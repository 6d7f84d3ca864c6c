"""Exact resume: a training subprocess killed with SIGKILL at a random moment, resumed, ends as if never stopped."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from run_fixtures import TINY, tiny_config
from unetlab.engine.callbacks import Callback
from unetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from unetlab.engine.trainer import resume, train
from unetlab.errors import ConfigError, UnetlabError

# Deterministic, one thread, four short epochs; dropout and augmentation make the RNG states matter.
RESUME = [*TINY, "train.epochs=4", "train.deterministic=true", "train.num_threads=1", "model.dropout=0.2",
          "augment.shift=0.1", "augment.scale=0.1", "augment.brightness=0.1", "train.averaging=ema",
          "schedule.name=cosine", "optim.name=adamw"]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in ("time_s", "train/images_per_s")} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "whole"
    train(tiny_config(*RESUME), data_root=tgs_dir, run_dir=run, progress=False, log=lambda _: None)
    return run


def test_sigkill_at_a_random_moment_then_resume_gives_the_same_weights(uninterrupted, tgs_dir, tmp_path):
    run = tmp_path / "killed"
    sets = [arg for item in RESUME for arg in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "unetlab", "train", "--data", str(tgs_dir), "--out", str(run),
               "--no-eval", "--no-progress", *sets]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.exists(), process.stderr.read().decode() if process.poll() is not None else "no checkpoint in time"
    delay = random.uniform(0.0, 1.5)  # anywhere in the following epochs, even while a checkpoint is written
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = load_checkpoint(last)["epoch"]

    result = resume(run, progress=False, log=lambda _: None)
    assert result.epochs_run == 4, f"killed after {delay:.2f} s (epoch {killed_after})"
    whole = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    resumed = load_checkpoint(last)
    for key, value in whole["train_model_state"].items():
        assert torch.equal(value, resumed["train_model_state"][key]), f"{key} differs (killed at epoch {killed_after})"
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), f"averaged {key} differs"
    # The history is whole: one row per epoch, the same numbers as the run that never stopped.
    assert _comparable(_rows(run)) == _comparable(_rows(uninterrupted))
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == load_checkpoint(uninterrupted / "checkpoints" / "best.pt")["epoch"]
    assert not list((run / "checkpoints").glob("*.tmp")), "a temporary checkpoint file was left behind"


def test_resume_repairs_best_when_killed_between_last_and_best(uninterrupted, tmp_path, tgs_dir):
    run = tmp_path / "copy"
    import shutil

    shutil.copytree(uninterrupted, run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    state = last["loop_state"]
    # Pretend the last epoch was the best and the process died before best.pt was replaced.
    state["best_epoch"] = state["epoch"]
    del last["format"]
    save_checkpoint(run / "checkpoints" / "last.pt", last)
    resume(run, data_root=tgs_dir, progress=False, log=lambda _: None)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == state["epoch"]


def test_resume_of_a_finished_run_trains_nothing_more(uninterrupted, tmp_path):
    import shutil

    run = Path(shutil.copytree(uninterrupted, tmp_path / "done"))
    before = load_checkpoint(run / "checkpoints" / "last.pt")["train_model_state"]
    result = resume(run, progress=False, log=lambda _: None)
    assert result.epochs_run == 4
    after = load_checkpoint(run / "checkpoints" / "last.pt")["train_model_state"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_can_extend_epochs(uninterrupted, tmp_path):
    import shutil

    run = Path(shutil.copytree(uninterrupted, tmp_path / "longer"))
    result = resume(run, progress=False, log=lambda _: None, overrides=["train.epochs=5"])
    assert result.epochs_run == 5
    assert [row["epoch"] for row in _rows(run)] == ["1", "2", "3", "4", "5"]


def test_resume_refuses_config_changes_and_missing_runs(uninterrupted, tmp_path):
    with pytest.raises(ConfigError, match="model.base_width"):
        resume(uninterrupted, overrides=["model.base_width=8"], progress=False, log=lambda _: None)
    with pytest.raises(UnetlabError, match="nothing to resume"):
        resume(tmp_path / "nowhere", progress=False, log=lambda _: None)


def test_cli_resume_refuses_config_and_out(uninterrupted, capsys):
    from run_fixtures import run_cli

    code, _, err = run_cli(["train", "--resume", str(uninterrupted), "--out", "x"], capsys)
    assert code == 2 and "--resume" in err and "Traceback" not in err


def _same_weights(run: Path, reference: Path) -> None:
    whole = load_checkpoint(reference / "checkpoints" / "last.pt")["train_model_state"]
    again = load_checkpoint(run / "checkpoints" / "last.pt")["train_model_state"]
    for key, value in whole.items():
        assert torch.equal(value, again[key]), f"{key} differs from the uninterrupted run"


class _DiesAtFirstStep(Callback):
    def on_step_end(self, trainer, step, loss):
        raise RuntimeError("killed")


def test_cli_resume_restarts_a_run_stopped_before_its_first_checkpoint(uninterrupted, tgs_dir, tmp_path, capsys):
    from run_fixtures import run_cli

    run = tmp_path / "early"
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_config(*RESUME), data_root=tgs_dir, run_dir=run, progress=False, log=lambda _: None,
              callbacks=[_DiesAtFirstStep()])
    (run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # killed while writing it
    code, out, err = run_cli(["train", "--resume", str(run), "--no-eval", "--no-progress"], capsys)
    assert code == 0, err
    assert f"restarting {run} from epoch 0: it stopped before its first checkpoint" in out
    _same_weights(run, uninterrupted)  # a restart is the run from scratch: same seed, same weights
    assert _comparable(_rows(run)) == _comparable(_rows(uninterrupted))
    assert not list(run.rglob("*.tmp")) and len(list(run.glob("events.out.tfevents.*"))) == 1


def test_sigkill_in_the_first_epoch_then_resume_restarts_it(uninterrupted, tgs_dir, tmp_path):
    run = tmp_path / "killed-early"
    sets = [arg for item in RESUME for arg in ("--set", item)]
    command = [sys.executable, "-m", "unetlab", "train", "--data", str(tgs_dir), "--out", str(run),
               "--no-eval", "--no-progress", *sets]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    split = run / "split.json"  # written at set-up, just before the data go to the device and epoch 1 starts
    deadline = time.monotonic() + 120
    while not split.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert split.exists(), process.stderr.read().decode()
    assert not (run / "checkpoints" / "last.pt").exists(), "killed too late: the first epoch had ended"
    with pytest.raises(UnetlabError, match="stopped before its first checkpoint.*--resume"):
        train(tiny_config(*RESUME), data_root=tgs_dir, run_dir=run, progress=False, log=lambda _: None)

    result = resume(run, progress=False, log=lambda _: None)
    assert result.epochs_run == 4
    _same_weights(run, uninterrupted)
