"""`studies/runner.py` in this process: a finished cell is never trained again, a changed grid is refused,
a half-created cell starts afresh, a bad variant stops the study before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from study_fixtures import write_tiny_study
from run_fixtures import assert_one_line_error, run_cli
from unetlab.errors import ConfigError, UnetlabError
from unetlab.studies import StudyFolder, StudySpec, load_study, run_study, study_status


def _quiet(_text: str) -> None:
    pass


@pytest.fixture(scope="module")
def finished(tgs_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(study file, study folder) of a finished one-cell study (shared: copy it before changing it)."""
    root = tmp_path_factory.mktemp("runner")
    study = write_tiny_study(root, {"concat": []}, seeds=[0], epochs=1)
    status = run_study(study, root / "study", data_root=tgs_dir, log=_quiet, heartbeat_s=1, report=False)
    assert status == {"done": ["concat/seed-0"], "running": [], "left": []}
    return study, root / "study"


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished[1], tmp_path / "study"))


def test_a_finished_cell_is_never_trained_again(finished, tgs_dir, tmp_path):
    study, _ = finished
    out = _copy(finished, tmp_path)
    run = StudyFolder(out).cell_run("concat", 0)
    metrics = run.metrics_path.read_text()
    lines: list[str] = []
    assert run_study(study, out, data_root=tgs_dir, log=lines.append, heartbeat_s=1)["done"] == ["concat/seed-0"]
    assert "this worker ran 0 cell(s); done 1, running 0, left 0" in lines
    assert load_study(out / StudyFolder.SPEC).fingerprint() == StudyFolder(out).read_fingerprint()
    (out / StudyFolder.STORAGE).unlink()  # a new storage: the cell is queued again, but its folder says finished
    lines.clear()
    run_study(study, out, data_root=tgs_dir, log=lines.append, heartbeat_s=1, report=False)
    assert "[concat/seed-0] finished earlier: not trained again" in lines
    assert run.metrics_path.read_text() == metrics


def test_a_changed_grid_is_refused_once_cells_finished(finished, tgs_dir, tmp_path, capsys):
    study, _ = finished
    out = _copy(finished, tmp_path)
    changed = write_tiny_study(tmp_path, {"concat": ["optim.lr=0.01"]}, seeds=[0], epochs=1)
    with pytest.raises(UnetlabError, match=r"study tiny: the grid changed after 1 cell\(s\) finished"):
        run_study(changed, out, data_root=tgs_dir, log=_quiet)
    code, _, err = run_cli(["study", str(changed), "--out", str(out), "--status"], capsys)
    assert_one_line_error(code, err, "the grid changed", "give the study a new name or use another --out folder")
    # The same change where nothing finished yet (another folder, the storage of the first) is refused too.
    code, _, err = run_cli(["study", str(changed), "--data", str(tgs_dir), "--out", str(tmp_path / "other"),
                            "--storage", StudyFolder(out).default_storage()], capsys)
    assert_one_line_error(code, err, "the grid changed after 1 cell(s) finished (the storage")
    assert not (tmp_path / "other" / "cells").exists()


def test_a_half_created_cell_starts_afresh_and_foreign_files_are_kept(tgs_dir, tmp_path):
    study = write_tiny_study(tmp_path, {"concat": []}, seeds=[0], epochs=1)
    folder = StudyFolder(tmp_path / "study")
    cell = folder.cell_dir("concat", 0)
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "config.yaml").write_text("name: killed-before-its-first-checkpoint\n")
    (cell / "notes.txt").write_text("mine")
    with pytest.raises(UnetlabError, match="notes.txt, which no run writes; the study will not delete it"):
        run_study(study, folder.path, data_root=tgs_dir, log=_quiet, heartbeat_s=1)
    assert (cell / "notes.txt").is_file()
    (cell / "notes.txt").unlink()
    lines: list[str] = []
    run_study(study, folder.path, data_root=tgs_dir, log=lines.append, heartbeat_s=1, report=False)
    assert any("clearing the half-created cell" in line for line in lines)  # the failed try queued it again
    assert folder.is_finished("concat", 0)
    assert study_status(load_study(study), folder.path) == {"done": ["concat/seed-0"], "running": [], "left": []}


def test_a_bad_variant_stops_the_study_before_anything_is_written(tgs_dir, tmp_path, capsys):
    study = write_tiny_study(tmp_path, {"concat": [], "typo": ["model.skp=add"]}, seeds=[0, 1])
    with pytest.raises(ConfigError, match="study tiny, variant 'typo': unknown config key 'model.skp'"):
        run_study(study, tmp_path / "study", data_root=tgs_dir, log=_quiet)
    code, _, err = run_cli(["study", str(study), "--data", str(tgs_dir), "--out", str(tmp_path / "study")], capsys)
    assert_one_line_error(code, err, "variant 'typo'", "model.skp")
    assert not (tmp_path / "study").exists()


def test_cli_report_and_status_choices(tmp_path, capsys):
    study = write_tiny_study(tmp_path, {"concat": []}, seeds=[0])
    code, _, err = run_cli(["study", str(study), "--out", str(tmp_path / "s"), "--report"], capsys)
    assert_one_line_error(code, err, "no finished cell yet")
    code, _, err = run_cli(["study", str(study), "--status", "--report"], capsys)
    assert_one_line_error(code, err, "--status and --report")
    code, out, _ = run_cli(["study", str(study), "--out", str(tmp_path / "s"), "--status"], capsys)
    assert code == 0 and "left       1/1: concat/seed-0" in out and not (tmp_path / "s").exists()


def test_the_python_api_exports_studies():
    import unetlab.api as api

    assert {"run_study", "study_status", "load_study"} <= set(api.__all__)
    assert api.load_study("q52-skips").baseline == "concat"


def test_a_fingerprint_changed_only_by_new_config_keys_keeps_the_finished_cells(finished, tgs_dir, tmp_path,
                                                                                 monkeypatch):
    """unetlab gained a config key since the cells ran: their config.yaml lacks it (read with its default),
    study.yaml and the storage hold the old fingerprint. Same experiments: accepted, not trained again."""
    import yaml

    study, _ = finished
    out = _copy(finished, tmp_path)
    cell = StudyFolder(out).cell_run("concat", 0)
    saved = yaml.safe_load(cell.config_path.read_text())
    del saved["eval"]["min_component"]  # as written before the key existed
    cell.config_path.write_text(yaml.safe_dump(saved))
    monkeypatch.setattr(StudySpec, "fingerprint", lambda self: "0123456789abcdef")
    lines: list[str] = []
    run_study(study, out, data_root=tgs_dir, log=lines.append, heartbeat_s=1, report=False)
    assert "[concat/seed-0] finished earlier: not trained again" in lines
    assert StudyFolder(out).read_fingerprint() == "0123456789abcdef"
    # Again: study.yaml now holds the new fingerprint while the storage still holds the old grid's finished cells.
    status = run_study(study, out, data_root=tgs_dir, log=_quiet, heartbeat_s=1, report=False)
    assert status["left"] == [] and status["running"] == []
    # A finished cell that really differs is still refused.
    saved["optim"]["lr"] = 0.123
    cell.config_path.write_text(yaml.safe_dump(saved))
    monkeypatch.setattr(StudySpec, "fingerprint", lambda self: "fedcba9876543210")
    with pytest.raises(UnetlabError, match="the grid changed after 1 cell"):
        run_study(study, out, data_root=tgs_dir, log=_quiet, heartbeat_s=1)


def test_max_cells_counts_only_cells_this_worker_ran(finished, tgs_dir, tmp_path):
    """A cell already finished on disk is only recorded when claimed: it does not use up --max-cells."""
    out = tmp_path / "study"
    shutil.copytree(finished[1] / "cells" / "concat" / "seed-0", out / "cells" / "concat" / "seed-0")
    shutil.copyfile(finished[1] / StudyFolder.SPLIT, out / StudyFolder.SPLIT)
    study = write_tiny_study(tmp_path, {"concat": [], "add": ["model.name=unet-add"]}, seeds=[0], epochs=1)
    lines: list[str] = []
    status = run_study(study, out, data_root=tgs_dir, log=lines.append, heartbeat_s=1, max_cells=1, report=False)
    assert "[concat/seed-0] finished earlier: not trained again" in lines
    assert status["done"] == ["concat/seed-0", "add/seed-0"] and "this worker ran 1 cell(s); done 2, running 0, left 0" in lines


def test_status_shows_a_cell_running_under_an_older_grid_of_the_folder(tmp_path):
    """A worker started before unetlab gained config keys runs its cell under the old fingerprint; `--status`
    of the new code counts that cell as running, not left (a stale claim without heartbeat as left)."""
    from unetlab.studies.coordination import CellQueue, create_or_load, open_storage, study_name

    out = tmp_path / "study"
    out.mkdir()
    two = write_tiny_study(tmp_path, {"concat": [], "add": ["model.name=unet-add"]}, seeds=[0], epochs=1)
    spec = load_study(two)
    storage = open_storage(StudyFolder(out).default_storage())
    old = create_or_load(storage, study_name(spec.name, "0ld0ld0ld0ld0ld0"), spec.cells(),
                         {"fingerprint": "0ld0ld0ld0ld0ld0", "folder": str(out.resolve())})
    claimed = CellQueue(storage, old).claim()  # concat/seed-0, with a fresh heartbeat
    assert claimed is not None
    status = study_status(two, out)
    assert status["running"] == ["concat/seed-0"] and status["left"] == ["add/seed-0"]
    other = create_or_load(storage, study_name(spec.name, "e1se1se1se1se1se"), spec.cells(),
                           {"fingerprint": "e1se1se1se1se1se", "folder": str((tmp_path / "elsewhere").resolve())})
    CellQueue(storage, other).claim()  # a grid of another folder in the same storage does not count
    assert study_status(two, out)["running"] == ["concat/seed-0"]
