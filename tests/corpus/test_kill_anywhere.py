"""kill -9 anywhere: a training process killed at random moments, again and again, ends as if never stopped.

A deterministic tiny run is trained once without interruption (as a subprocess, exactly as a user runs
it). Then, for each seeded trial, the same command is SIGKILLed at a random moment (before set-up ends,
inside the first epoch, between epochs, or the instant a checkpoint temporary appears), and the run is
continued with `train --resume` (which may itself be killed) until it finishes. The final best and last
weights and metrics.csv must equal the uninterrupted run's, and no temporary file may be left.
"""

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

from run_fixtures import TINY
from unetlab.engine.checkpoint import load_checkpoint

# Dropout, augmentation and EMA make every RNG state and the averaged weights part of what must resume.
KILL = [*TINY, "train.epochs=3", "train.deterministic=true", "train.num_threads=1", "model.dropout=0.2",
        "augment.shift=0.1", "augment.brightness=0.1", "train.averaging=ema", "schedule.name=cosine"]
TRIALS = 8
SEED = 2026
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # log lines arrive as written

pytestmark = pytest.mark.slow


def _train_command(data: Path, run: Path) -> list[str]:
    sets = [arg for item in KILL for arg in ("--set", item)]
    return [sys.executable, "-m", "unetlab", "train", "--data", str(data), "--out", str(run), "--no-eval",
            "--no-progress", *sets]


def _resume_command(run: Path) -> list[str]:
    return [sys.executable, "-m", "unetlab", "train", "--resume", str(run), "--no-eval", "--no-progress"]


def _finish(command: list[str]) -> None:
    done = subprocess.run(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert done.returncode == 0, done.stderr.decode()


# When to kill, besides "delay s after the first log line" (train: "run folder: ...", before the data are
# read; resume: its first line): the instant the run folder appears, and the instant a checkpoint
# temporary appears (a kill during a checkpoint write).
AT_FOLDER, AT_TEMPORARY, AT_LATER_TEMPORARY = "folder", "temporary", "later temporary"  # later: once last.pt exists


def _wait_for(process: subprocess.Popen, found, poll: float) -> None:
    deadline = time.monotonic() + 300
    while process.poll() is None and not found() and time.monotonic() < deadline:
        time.sleep(poll)


def _kill(command: list[str], run: Path, delay: float | str) -> str:
    """Start `command`, SIGKILL it `delay` s after its first log line (or at AT_FOLDER / AT_TEMPORARY);
    return where it was killed. A process that ends first is simply let finish."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if delay in (AT_TEMPORARY, AT_LATER_TEMPORARY):
            later = delay == AT_LATER_TEMPORARY
            _wait_for(process, lambda: (not later or (run / "checkpoints" / "last.pt").exists())
                      and any((run / "checkpoints").glob("*.tmp")), 0.0005)
        elif delay == AT_FOLDER:
            _wait_for(process, run.exists, 0.0005)
        else:
            process.stdout.readline()
            time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    if not run.exists():
        return "before the run folder existed"
    last = run / "checkpoints" / "last.pt"
    epoch = load_checkpoint(last)["epoch"] if last.exists() else 0
    return f"after epoch {epoch}" + (" while writing a checkpoint" if any(run.rglob("*.tmp")) else "")


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in ("time_s", "train/images_per_s")}
                for row in csv.DictReader(handle)]


def _same(run: Path, reference: Path, where: list[str]) -> None:
    for name in ("best.pt", "last.pt"):
        whole, again = (load_checkpoint(r / "checkpoints" / name) for r in (reference, run))
        assert whole["epoch"] == again["epoch"], (name, where)
        for part in ("model_state", "train_model_state"):
            for key, value in whole.get(part, {}).items():
                assert torch.equal(value, again[part][key]), f"{name} {part} {key} differs; killed {where}"
    assert _rows(run) == _rows(reference), f"metrics.csv differs; killed {where}"
    assert not list(run.rglob("*.tmp")), f"a temporary file was left behind; killed {where}"


@pytest.fixture(scope="module")
def reference(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The uninterrupted run and how long its training took: from its first log line to its "stopped:" line
    (the figures drawn after it are not worth killing in)."""
    run = tmp_path_factory.mktemp("kill") / "whole"
    process = subprocess.Popen(_train_command(tgs_dir, run), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.readline()
    started = time.monotonic()
    for line in process.stdout:
        if line.startswith(b"stopped:"):
            break
    duration = time.monotonic() - started
    process.stdout.read()
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    return run, duration


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_at_random_moments_then_resumed_ends_identical(trial, reference, tgs_dir, tmp_path):
    whole, duration = reference
    rng = random.Random(SEED + trial)
    run = tmp_path / "killed"
    # Trial 0 dies the instant the first checkpoint temporary appears, trial 1 while a later checkpoint is
    # written, trial 2 the instant the run folder appears, trial 3 at its first log line; the rest at random
    # moments of the training (the first epoch included), and their resumes are killed too.
    delays = {0: [AT_TEMPORARY], 1: [AT_LATER_TEMPORARY], 2: [AT_FOLDER], 3: [0.0]}.get(
        trial, [rng.uniform(0, duration) for _ in range(rng.randint(1, 3))])
    where = [_kill(_train_command(tgs_dir, run), run, delays[0])]
    for delay in delays[1:]:
        if (run / "config.yaml").exists():
            where.append(_kill(_resume_command(run), run, rng.uniform(0, duration)))
    if (run / "config.yaml").exists():  # a run folder: resume it (it restarts when no checkpoint was written)
        _finish(_resume_command(run))
    else:  # killed before the run folder was written: the user runs the same command again
        _finish(_train_command(tgs_dir, run))
    # Shown with -s: where the kills landed.
    print(f"trial {trial} ({duration:.2f} s of training): killed {'; then '.join(where)}")
    _same(run, whole, where)
