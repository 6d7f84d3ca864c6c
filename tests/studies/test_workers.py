"""Workers as real processes (`python -m unetlab study ...`): two at once share a study on SQLite and on a real
PostgreSQL server, every cell runs once on the same validation images; a worker killed mid-cell leaves a cell
that the next worker resumes from its last checkpoint; `--status` tells done / running / left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study_fixtures import start_worker, write_tiny_study
from run_fixtures import run_cli
from unetlab.run_folder import RunFolder
from unetlab.studies import StudyFolder, load_study
from unetlab.studies.coordination import cell_of, open_storage, study_name

VARIANTS = {"concat": [], "add": ["model.name=unet-add"]}


def _status(capsys: pytest.CaptureFixture[str], study: Path, out: Path, *extra: str) -> str:
    """`unetlab study STUDY --out OUT --status` in this process."""
    code, stdout, stderr = run_cli(["study", str(study), "--out", str(out), "--status", *extra], capsys)
    assert code == 0, stderr
    return stdout


def _trials(study: Path, out: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    spec = load_study(study)
    url = storage or StudyFolder(out).default_storage()
    return optuna.load_study(study_name=study_name(spec.name, spec.fingerprint()),
                             storage=open_storage(url)).get_trials()


def _two_workers_share_one_study(capsys, tmp_path: Path, data: Path, storage: str | None) -> None:
    study = write_tiny_study(tmp_path, VARIANTS, seeds=[0, 1], epochs=2)
    out = tmp_path / "study"
    extra = ["--storage", storage] if storage else []
    assert "left       4/4" in _status(capsys, study, out, *extra)
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    workers = [start_worker(study, out, data, log, *extra) for log in logs]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, "\n".join(log.read_text()[-3000:] for log in logs)
    text = "".join(log.read_text() for log in logs)
    folder, spec = StudyFolder(out), load_study(study)
    split = json.loads(folder.split_path.read_text())
    for variant, seed in spec.cells():
        label = StudyFolder.label(variant, seed)
        assert text.count(f"[{label}] claimed") == 1, text  # claimed by one worker, trained once
        run = folder.cell_run(variant, seed)
        assert [row["epoch"] for row in run.read_metrics()] == [1, 2]
        assert len(list(run.path.glob("events.out.tfevents.*"))) == 1  # one training session wrote this folder
        evaluation = folder.read_evaluation(variant, seed)
        assert evaluation["split"] == "val" and sorted(evaluation["per_image"]["ids"]) == sorted(split["val"])
        assert json.loads(run.split_path.read_text())["val"] == split["val"]  # the study's one split
    trials = _trials(study, out, storage)
    assert sorted(cell_of(t) for t in trials) == sorted(spec.cells())  # one trial per cell, no retry, no duplicate
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["epoch"] == 2 for t in trials)
    assert all(t.params == {"variant": cell_of(t)[0], "seed": cell_of(t)[1]} for t in trials)
    status = _status(capsys, study, out, *extra)
    assert "done       4/4: concat/seed-0, add/seed-0, concat/seed-1, add/seed-1" in status
    assert "running    0/4" in status and "left       0/4" in status


def test_two_workers_share_a_sqlite_study(capsys, tmp_path, tgs_dir):
    _two_workers_share_one_study(capsys, tmp_path, tgs_dir, None)


def test_two_workers_share_a_postgresql_study(capsys, tmp_path, tgs_dir, postgres_url):
    _two_workers_share_one_study(capsys, tmp_path, tgs_dir, postgres_url)


def _wait_for(path: Path, worker: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert worker.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def test_a_killed_worker_leaves_a_cell_that_the_next_worker_resumes(capsys, tmp_path, tgs_dir):
    study = write_tiny_study(tmp_path, {"concat": []}, seeds=[0], epochs=6)
    out = tmp_path / "study"
    first = start_worker(study, out, tgs_dir, tmp_path / "first.log")
    run = StudyFolder(out).cell_run("concat", 0)
    _wait_for(run.checkpoint_path("last"), first, tmp_path / "first.log")
    os.kill(first.pid, signal.SIGKILL)  # mid-cell: epoch 1 is saved, epochs 2..6 are not
    first.wait(timeout=60)
    before = run.read_metrics()
    assert before and before[-1]["epoch"] < 6
    assert "running    1/1: concat/seed-0" in _status(capsys, study, out)
    second = start_worker(study, out, tgs_dir, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    text = (tmp_path / "second.log").read_text()
    assert f"[concat/seed-0] resuming from {run.checkpoint_path('last')}" in text, text
    assert f"resuming {run.path} after epoch {before[-1]['epoch']}" in text, text
    after = run.read_metrics()
    assert [row["epoch"] for row in after] == [1, 2, 3, 4, 5, 6]
    assert after[: len(before)] == before  # the epochs before the kill were not trained again
    trials = sorted(_trials(study, out), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # stale, then its retry
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == {"variant": "concat", "seed": 0}
    assert RunFolder(run.path).evaluation_path("best-val").is_file()
    assert "done       1/1" in _status(capsys, study, out)
