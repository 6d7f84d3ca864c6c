"""`unetlab plot RUN...`: learning curves of runs side by side.

This module reads the runs (each one's metrics.csv, through `RunFolder`), picks the panels and
labels, and hands the numbers to `unetlab.viz.save_run_curves` to draw; viz never reads a run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from unetlab.errors import UnetlabError
from unetlab.run_folder import RunFolder
from unetlab.viz import save_run_curves

# metrics.csv columns that are x axes or bookkeeping, never a panel of their own
_RUN_X_COLUMNS = ("epoch", "step", "time_s")


def _read_run_metrics(run: str | os.PathLike) -> tuple[Path, list[str], list[dict[str, float]]]:
    """(metrics.csv path, its columns, its rows) of a run folder, or of a metrics.csv given directly.

    Strict: a missing folder, a missing or empty metrics.csv and a foreign CSV are UnetlabErrors."""
    run = Path(run)
    if run.is_file():
        path, rows = run, RunFolder.read_metrics_file(run, strict=True)
    else:
        folder = RunFolder(run)
        path, rows = folder.metrics_path, folder.read_metrics(strict=True)
    return path, (list(rows[0]) if rows else []), rows


def _unique_run_labels(folders: Sequence[Path]) -> list[str]:
    """Folder names; where two coincide, as many parent folders as it takes; the same folder twice gets (2)."""
    parts = [Path(os.path.abspath(f)).parts for f in folders]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        grow = [i for i, label in enumerate(labels) if depth[i] < len(parts[i])
                and any(other == label and parts[j] != parts[i] for j, other in enumerate(labels))]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _choose_panels(runs: list[tuple[Path, list[str], list[dict]]], metrics: Sequence[str] | None) -> list[str]:
    """The panels to draw: `metrics` checked against what the runs logged, or the default set."""
    # Every column with at least one finite value in some run, in the order the runs logged them.
    logged: dict[str, None] = {}
    for _, columns, rows in runs:
        for column in columns:
            if column not in _RUN_X_COLUMNS and any(_finite(r.get(column)) for r in rows):
                logged.setdefault(column, None)
    has_loss = "train/loss" in logged or "val/loss" in logged
    available = (["loss"] if has_loss else []) + list(logged)
    if metrics is None:
        panels = (["loss"] if has_loss else []) + [c for c in logged if c.startswith("val/") and c != "val/loss"]
        panels += ["lr"] if "lr" in logged else []
        if not panels:
            panels = list(logged)
    else:
        panels = []
        for name in metrics:
            name = str(name).strip()
            if name not in available and f"val/{name}" in logged:
                name = f"val/{name}"
            if name not in available:
                where = "this run" if len(runs) == 1 else "any of these runs"
                raise UnetlabError(f"metrics: {name!r} is not logged by {where}; available: "
                                   f"{', '.join(available) or 'none'}")
            if name not in panels:
                panels.append(name)
    if not panels:
        raise UnetlabError(f"{runs[0][0]}: no metric has a value to plot; pass a run that has logged an epoch")
    return panels


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    x: str = "epoch",
) -> Path:
    """Learning curves of one or more runs in one PNG, to compare runs (or training phases).

    Each run is a folder written by `unetlab train` (or its metrics.csv). One panel per metric,
    one line per run in the same colour in every panel, labelled with the run folder's name (with
    parent folders where two names coincide). Default panels: ``loss`` (train/loss dashed and
    val/loss solid together), then every ``val/*`` metric logged by any run, then ``lr`` on a log
    axis. `metrics` picks panels by name: ``loss`` or any logged column (``val/iou``, ``lr``,
    ``train/images_per_s``...; ``iou`` is short for ``val/iou``). `x` is ``epoch`` or ``time``
    (minutes since the start of training, from the ``time_s`` column). Blank and NaN values are
    skipped. Written atomically (temp file + rename); returns `out`.

    Raises `UnetlabError` naming the path for a missing run folder or a missing, empty or
    unreadable metrics.csv, and listing the available names for an unknown metric.
    """
    if x not in ("epoch", "time"):
        raise UnetlabError(f"x: {x!r} is not an x axis; choose epoch or time")
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UnetlabError("plot_runs: no run given; pass at least one run folder")
    runs = []  # (metrics.csv path, columns, rows)
    for run in run_dirs:
        path, columns, rows = _read_run_metrics(run)
        if x == "time" and "time_s" not in columns:
            raise UnetlabError(f"{path}: has no time_s column, so it cannot be drawn against time; use x=epoch")
        runs.append((path, columns, rows))
    labels = _unique_run_labels([path.parent for path, _, _ in runs])
    panels = _choose_panels(runs, metrics)
    return save_run_curves(out, [(label, rows) for label, (_, _, rows) in zip(labels, runs)], panels, x=x)
