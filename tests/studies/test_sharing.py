"""`studies/sharing.py`: a cell another study beside this one finished identically is copied, not trained;
anything different (a config key, the split, the data folder, `--no-sharing`) trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from study_fixtures import write_tiny_study
from unetlab.studies import StudyFolder, build_study_report, run_study
from unetlab.studies.folder import SHARED_FROM
from unetlab.studies.sharing import shared_from


@pytest.fixture(scope="module")
def first(tgs_dir, tmp_path_factory) -> Path:
    """A finished one-cell study `first` (concat, seed 0) in its own parent folder (copy it before use)."""
    root = tmp_path_factory.mktemp("sharing")
    study = write_tiny_study(root / "specs", {"concat": []}, seeds=[0], name="first")
    run_study(study, root / "studies" / "first", data_root=tgs_dir, log=lambda _: None, heartbeat_s=1,
              report=False)
    return root / "studies" / "first"


def _parent_with(first: Path, tmp_path: Path) -> Path:
    parent = tmp_path / "studies"
    shutil.copytree(first, parent / "first")
    return parent


def _run(tmp_path: Path, parent: Path, data: Path, variants: dict, name: str = "second", **options) -> list[str]:
    study = write_tiny_study(tmp_path / "specs", variants, seeds=[0], name=name, **options.pop("spec", {}))
    lines: list[str] = []
    run_study(study, parent / name, data_root=data, log=lines.append, heartbeat_s=1, report=False, **options)
    return lines


def test_an_identical_cell_is_copied_from_the_other_study_and_reported(first, tgs_dir, tmp_path):
    parent = _parent_with(first, tmp_path)
    lines = _run(tmp_path, parent, tgs_dir, {"baseline": [], "add": ["model.name=unet-add"]})
    assert any(line.startswith("[baseline/seed-0] shared: first's concat/seed-0 is this experiment") for line in lines)
    assert not any(line.startswith("[add/seed-0] shared") for line in lines)  # a different model trains
    second = StudyFolder(parent / "second")
    copied, original = second.cell_run("baseline", 0), StudyFolder(parent / "first").cell_run("concat", 0)
    assert copied.metrics_path.read_text() == original.metrics_path.read_text()
    assert second.read_evaluation("baseline", 0) == StudyFolder(parent / "first").read_evaluation("concat", 0)
    assert copied.checkpoint_path("best").read_bytes() == original.checkpoint_path("best").read_bytes()
    assert shared_from(copied) == {"study": "first", "cell": "concat/seed-0", "path": str(original.path.resolve())}
    assert shared_from(second.cell_run("add", 0)) is None
    assert not [p for p in second.cell_dir("baseline", 0).parent.iterdir() if p.name.startswith(".")]
    report = build_study_report(write_tiny_study(tmp_path / "specs", {"baseline": [], "add": ["model.name=unet-add"]},
                                                 seeds=[0], name="second"), second.path)
    text = (report / "report.md").read_text()
    assert "Trained once and shared with another study" in text and "baseline/seed-0 is first's concat/seed-0" in text
    assert json.loads((report / "summary.json").read_text())["cells"]["shared"]["baseline/seed-0"]["study"] == "first"
    # A third study copying the copy names the original, not the copy.
    _run(tmp_path, parent, tgs_dir, {"again": []}, name="third")
    assert shared_from(StudyFolder(parent / "third").cell_run("again", 0))["study"] == "first"


@pytest.mark.parametrize("case", ["config", "split", "data", "no-sharing"])
def test_a_cell_that_differs_in_anything_trains(first, tgs_dir, tmp_path, case):
    parent = _parent_with(first, tmp_path)
    data = tgs_dir
    variants, options = {"baseline": []}, {}
    if case == "config":
        variants = {"baseline": ["optim.lr=0.003"]}
    elif case == "split":
        options = {"spec": {"split_seed": 7}}
    elif case == "data":
        data = Path(shutil.copytree(tgs_dir, tmp_path / "same-images-elsewhere"))
    else:
        options = {"share": False}
    lines = _run(tmp_path, parent, data, variants, **options)
    assert not any("shared:" in line for line in lines)
    assert not (parent / "second" / "cells" / "baseline" / "seed-0" / SHARED_FROM).exists()
    assert StudyFolder(parent / "second").is_finished("baseline", 0)
