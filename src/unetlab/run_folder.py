"""`RunFolder`: the one object that knows where a run keeps what.

    runs/<name>-<time>/
      config.yaml            the resolved config, as used
      split.json             train / val ids, seed, how it was stratified (and which fold)
      folds.json             with data.folds >= 2: every fold, for the other folds' runs to reuse
      metrics.csv            one row per epoch
      events.out.tfevents.*  TensorBoard
      checkpoints/{best,last}.pt
      evaluation/<checkpoint>-<split>.json
      operating-point.json   the threshold and image rules `evaluate --choose C --save` chose, for one checkpoint
      figures/*.png
      export/model.onnx, model.ts.pt
      report.md

Train, evaluate, predict, export, plot and the demo ask it for paths and for reading and writing
these files; every write goes through `unetlab.files` (temporary name, then rename).
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetlab.data.download import sha256_of
from unetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from unetlab.errors import UnetlabError
from unetlab.files import atomic_write_text, csv_text, is_temporary, remove_stale_temporaries

if TYPE_CHECKING:
    from unetlab.config import Config

#: metrics.csv columns that count epochs and steps: read back as integers, as the live run writes them.
_COUNTER_COLUMNS = ("epoch", "step")


class RunFolder:
    CONFIG = "config.yaml"
    SPLIT = "split.json"
    FOLDS = "folds.json"
    METRICS = "metrics.csv"
    REPORT = "report.md"
    CHECKPOINTS = "checkpoints"
    EVALUATION = "evaluation"
    FIGURES = "figures"
    EXPORT = "export"
    OPERATING_POINT = "operating-point.json"
    #: Keys an operating-point.json must hold (what `Predictor.load` decodes with, and what it was chosen for).
    OPERATING_POINT_KEYS = ("threshold", "min_area", "min_component", "criterion", "checkpoint", "checkpoint_sha256")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ finding and creating runs

    @classmethod
    def new_path(cls, base: str | Path, name: str) -> Path:
        """`base/<name>-<YYYYmmdd-HHMMSS>`, with a suffix when that folder already exists."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(base) / f"{name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(base) / f"{name}-{stamp}-{suffix}"
        return path

    @classmethod
    def create(cls, path: str | Path) -> "RunFolder":
        """Make the folder and its sub-folders; an existing non-empty folder is refused (runs are never overwritten).

        A folder holding only what a run killed before writing its config.yaml left (empty sub-folders,
        temporaries) counts as empty: its temporaries are removed and it is used.
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise UnetlabError(f"{run.path}: exists and is a file; choose another --out for the run folder")
        if run.path.is_dir():
            if not run._holds_only_a_skeleton():
                raise UnetlabError(run._occupied_message())
            run.remove_stale_temporaries()
        run._make_folders()
        return run

    @classmethod
    def restart(cls, path: str | Path) -> "RunFolder":
        """A run stopped before its first checkpoint (config.yaml, no checkpoints/last.pt), cleared for a
        fresh start: the files the run wrote and any temporaries go, config.yaml and files of others stay."""
        run = cls(path)
        if not run.config_path.is_file() or run.has_checkpoint("last"):
            raise UnetlabError(f"{run.path}: only a run with {cls.CONFIG} and no {cls.CHECKPOINTS}/last.pt "
                               "restarts from scratch; resume it or start a new run")
        for written in run._files_a_run_writes():
            written.unlink(missing_ok=True)
        run.remove_stale_temporaries()
        run._make_folders()
        return run

    def _make_folders(self) -> None:
        (self.path / self.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        (self.path / self.FIGURES).mkdir(exist_ok=True)

    def _files_a_run_writes(self) -> list[Path]:
        """Every file of this folder that training, evaluation or export wrote, config.yaml excepted."""
        named = [self.split_path, self.folds_path, self.metrics_path, self.report_path, self.operating_point_path]
        patterns = [(self.path, "events.out.tfevents.*"), (self.path / self.CHECKPOINTS, "*.pt"),
                    (self.figures_dir, "*.png"), (self.path / self.EVALUATION, "*.json"),
                    (self.path / self.EXPORT, "*")]
        found = [path for path in named if path.is_file()]
        for folder, pattern in patterns:
            found += [path for path in folder.glob(pattern) if path.is_file()]
        return found

    def _holds_only_a_skeleton(self) -> bool:
        """Only empty checkpoints/ and figures/ and temporaries: a run killed before it wrote config.yaml."""
        for entry in self.path.iterdir():
            layout = entry.is_dir() and entry.name in (self.CHECKPOINTS, self.FIGURES)
            empty_layout = layout and not any(entry.iterdir())
            temporary = entry.is_file() and is_temporary(entry.name)
            if not (empty_layout or temporary):
                return False
        return True

    def _occupied_message(self) -> str:
        never = "choose another --out (runs are never overwritten)"
        if self.config_path.is_file() and self.has_checkpoint("last"):
            return (f"{self.path}: holds a run (config.yaml, checkpoints/last.pt); continue it with "
                    f"`unetlab train --resume {self.path}` or {never}")
        if self.config_path.is_file():
            return (f"{self.path}: holds a run stopped before its first checkpoint; restart it from epoch 0 with "
                    f"`unetlab train --resume {self.path}` or {never}")
        return f"{self.path}: run folder exists and is not empty; {never}"

    @classmethod
    def of(cls, run_or_checkpoint: str | Path) -> "RunFolder":
        """The run a folder or a checkpoint file (`<run>/checkpoints/x.pt`, or a loose file's folder) belongs to."""
        path = Path(run_or_checkpoint)
        if path.is_dir():
            return cls(path)
        return cls(path.parent.parent if path.parent.name == cls.CHECKPOINTS else path.parent)

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def split_path(self) -> Path:
        return self.path / self.SPLIT

    @property
    def folds_path(self) -> Path:
        return self.path / self.FOLDS

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    def checkpoint_path(self, which: str = "best") -> Path:
        return self.path / self.CHECKPOINTS / f"{which}.pt"

    def evaluation_path(self, tag: str) -> Path:
        return self.path / self.EVALUATION / f"{tag}.json"

    def evaluation_paths(self) -> list[Path]:
        return sorted((self.path / self.EVALUATION).glob("*.json"))

    @property
    def figures_dir(self) -> Path:
        return self.path / self.FIGURES

    def figure_path(self, name: str) -> Path:
        return self.figures_dir / name

    def export_path(self, name: str) -> Path:
        return self.path / self.EXPORT / name

    @property
    def operating_point_path(self) -> Path:
        return self.path / self.OPERATING_POINT

    # ------------------------------------------------------------------ operating point

    @staticmethod
    def checkpoint_digest(checkpoint: str | Path) -> str:
        """SHA-256 of a checkpoint file: what an operating point was chosen for (a rewritten best.pt differs)."""
        return sha256_of(Path(checkpoint))

    def write_operating_point(self, point: dict[str, Any]) -> Path:
        """operating-point.json (atomically): `point` must hold OPERATING_POINT_KEYS; a timestamp is added."""
        missing = [key for key in self.OPERATING_POINT_KEYS if key not in point]
        if missing:
            raise ValueError(f"operating point lacks {', '.join(missing)}")
        stamped = {**point, "written": datetime.now().astimezone().isoformat(timespec="seconds")}
        return atomic_write_text(self.operating_point_path, json.dumps(stamped, indent=1) + "\n")

    def operating_point_for(self, checkpoint: str | Path) -> dict[str, Any] | None:
        """The saved operating point when it was chosen for this very checkpoint file (same SHA-256), else None."""
        point = self.read_operating_point()
        if point is None or point["checkpoint_sha256"] != self.checkpoint_digest(checkpoint):
            return None
        return point

    def read_operating_point(self) -> dict[str, Any] | None:
        """The saved operating point, or None when the run has none; an unreadable file is refused."""
        path = self.operating_point_path
        if not path.is_file():
            return None
        fix = "delete it, or choose again with `unetlab evaluate RUN --data DIR --choose CRITERION --save`"
        try:
            point = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UnetlabError(f"{path}: cannot read it ({type(exc).__name__}); {fix}") from None
        missing = [key for key in self.OPERATING_POINT_KEYS if not isinstance(point, dict) or key not in point]
        if missing:
            raise UnetlabError(f"{path}: not an operating point (no {', '.join(missing)}); {fix}")
        if not (isinstance(point["threshold"], (int, float)) and 0.0 < point["threshold"] < 1.0) or any(
                isinstance(point[k], bool) or not isinstance(point[k], int) or point[k] < 0
                for k in ("min_area", "min_component")):
            raise UnetlabError(f"{path}: threshold must lie in (0, 1) and min_area, min_component be counts >= 0; "
                               f"{fix}")
        return point

    # ------------------------------------------------------------------ config

    def write_config(self, config: "Config") -> Path:
        return atomic_write_text(self.config_path, config.to_yaml())

    def read_config(self, overrides: list[str] | None = None) -> "Config":
        from unetlab.config import load_config

        if not self.config_path.is_file():
            raise UnetlabError(f"{self.path}: no {self.CONFIG}; pass a run folder written by 'unetlab train'")
        return load_config(self.config_path, overrides)

    # ------------------------------------------------------------------ checkpoints

    def has_checkpoint(self, which: str = "best") -> bool:
        return self.checkpoint_path(which).is_file()

    @classmethod
    def resolve_checkpoint(cls, run_or_file: str | Path, which: str = "best") -> Path:
        """A run folder (-> its checkpoints/<which>.pt, which must exist) or a checkpoint file."""
        path = Path(run_or_file)
        if path.is_dir():
            candidate = cls(path).checkpoint_path(which)
            if not candidate.is_file():
                raise UnetlabError(f"{path}: no {cls.CHECKPOINTS}/{which}.pt in this run folder; "
                                   "pass a run folder written by 'unetlab train'")
            return candidate
        if not path.exists():
            raise UnetlabError(f"{path}: run folder or checkpoint not found")
        return path

    def save_checkpoint(self, which: str, payload: dict[str, Any]) -> Path:
        return save_checkpoint(self.checkpoint_path(which), payload)

    def load_checkpoint(self, which: str = "best") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path(which))

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporaries of writes a killed process never finished (checkpoints, metrics, figures)."""
        removed: list[Path] = []
        for folder in (self.path, self.path / self.CHECKPOINTS, self.path / self.FIGURES,
                       self.path / self.EVALUATION, self.path / self.EXPORT):
            if folder.is_dir():
                removed += remove_stale_temporaries(folder)
        return removed

    # ------------------------------------------------------------------ metrics history

    def write_metrics(self, rows: list[dict[str, Any]]) -> Path:
        """metrics.csv: one row per epoch, columns in order of first appearance, rewritten atomically."""
        return atomic_write_text(self.metrics_path, csv_text(rows))

    def read_metrics(self, up_to_epoch: float = math.inf, strict: bool = False) -> list[dict[str, float]]:
        """Rows of metrics.csv as floats (blank = NaN; epoch and step as int), epochs 1..up_to_epoch.

        A missing file gives no rows, unless `strict` (plotting a run): then a missing folder, a missing
        metrics.csv and one with no rows are refused too. A file that is not a metrics.csv of
        `unetlab train` is always refused.
        """
        if strict and not self.path.exists():
            raise UnetlabError(f"{self.path}: no such run folder; pass a folder written by `unetlab train` "
                               f"(it holds {self.METRICS})")
        return self.read_metrics_file(self.metrics_path, up_to_epoch, strict, run=self.path)

    @classmethod
    def read_metrics_file(cls, path: str | Path, up_to_epoch: float = math.inf, strict: bool = False,
                          run: str | Path | None = None) -> list[dict[str, float]]:
        """`read_metrics` of a metrics.csv given by its path (`run`: the folder named in errors)."""
        path = Path(path)
        if not path.is_file():
            if strict:
                raise UnetlabError(f"{path}: not found, so {run or path.parent} is not a training run or no "
                                   "epoch has finished yet; pass a run folder written by `unetlab train` once "
                                   "it has logged an epoch")
            return []
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                raw_rows = list(reader)
                columns = [c for c in (reader.fieldnames or []) if c]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UnetlabError(f"{path}: cannot read it ({type(exc).__name__}: {exc}); pass the run folder "
                               "that `unetlab train` wrote") from None
        if strict and not (columns and raw_rows):
            raise UnetlabError(f"{path}: empty, no epoch logged yet; wait until the run has finished an epoch "
                               "or pass another run")
        if raw_rows and "epoch" not in columns:
            raise UnetlabError(f"{path}: not a metrics.csv of `unetlab train` (no 'epoch' column, columns are "
                               f"{', '.join(columns[:8])}); pass a run folder written by `unetlab train`")
        rows = []
        for raw in raw_rows:
            row = {key: _to_float(value) for key, value in raw.items() if key}
            for key in _COUNTER_COLUMNS:
                if key in row and math.isfinite(row[key]):
                    row[key] = int(row[key])  # type: ignore[assignment]
            if row.get("epoch", math.inf) <= up_to_epoch:
                rows.append(row)
        return rows


def _to_float(value: Any) -> float:
    if value in ("", None):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
