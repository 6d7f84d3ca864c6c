"""The notebooks in examples/: committed without outputs, and executed end to end on synthetic data.

The case-study notebook runs in its QUICK setting (a 4-channel U-Net for 2 epochs on 48 synthetic images) in a
temporary working directory, so nothing lands in the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASE_STUDY = REPO / "examples" / "salt_case_study.ipynb"
STUDIES = REPO / "benchmarks" / "results" / "studies"


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def text_of(cell: dict) -> str:
    """Everything a cell showed: streams, plain text and Markdown (images left out)."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        for kind in ("text/markdown", "text/plain"):
            parts.append(output.get("data", {}).get(kind, ""))
    return "\n".join(parts)


def test_committed_case_study_has_no_outputs() -> None:
    # Outputs in git bloat diffs with images and go stale; strip them before committing (e.g. nbstripout).
    notebook = json.loads(CASE_STUDY.read_text())
    for index, cell in enumerate(code_cells(notebook)):
        assert cell["outputs"] == [], f"code cell {index} of {CASE_STUDY.name} holds outputs: clear them"
        assert cell["execution_count"] is None, f"code cell {index} of {CASE_STUDY.name} has an execution count"


def test_case_study_runs_on_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("UNETLAB_DATA", raising=False)
    monkeypatch.delenv("UNETLAB_NOTEBOOK_OUT", raising=False)
    monkeypatch.setenv("UNETLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("UNETLAB_STUDIES", str(STUDIES))
    monkeypatch.setenv("UNETLAB_CACHE", str(tmp_path / "cache"))  # the decode cache, away from ~/.cache
    notebook = nbformat.read(CASE_STUDY, as_version=4)
    # Raises CellExecutionError, with the failing cell and its traceback, when any cell fails.
    nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    shown = "\n".join(text_of(cell) for cell in code_cells(notebook))
    assert "SYNTHETIC data" in shown
    assert "| max-tgs |" in shown and "| precision@recall>=0.9 |" in shown  # the operating-point table
    assert "chosen by max-tgs" in shown  # the saved point is what Predictor.load decodes at
    # The published answers, as the committed summary.json files hold them, with their bootstrap intervals.
    q51 = json.loads((STUDIES / "q51-downsampling" / "report" / "summary.json").read_text())
    for comparison in q51["comparisons"].values():
        assert comparison["verdict"] in shown
        assert "[{:+.4f}, {:+.4f}]".format(*comparison["ci95"]) in shown
    q54 = json.loads((STUDIES / "q54-threshold" / "report" / "summary.json").read_text())
    for criterion, point in q54["threshold_analysis"]["operating_points"].items():
        assert f"| {criterion} | {point['threshold']['mean']:.2f} ± {point['threshold']['sd']:.2f} |" in shown
    assert "**5.2 Which skip connection?**" in shown
    images = sum("image/png" in output.get("data", {}) for cell in code_cells(notebook) for output in cell["outputs"])
    assert images >= 6  # samples, coverage, curves (2), precision-recall, operating points, predictions, study

    runs = list((tmp_path / "runs" / "case-study").glob("tgs-salt-*"))
    assert len(runs) == 1 and (runs[0] / "operating-point.json").is_file()
    assert json.loads((runs[0] / "operating-point.json").read_text())["criterion"] == "max-tgs"
