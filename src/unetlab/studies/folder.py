"""`StudyFolder`: the one object that knows where a study keeps what.

    <study>/
      study.yaml                     the resolved spec and its fingerprint (written atomically)
      study.db                       the default coordination storage (SQLite; --storage URL for a server)
      split.json                     the ONE train/validation split of every cell
      cells/<variant>/seed-<seed>/   a normal run folder per cell (RunFolder), checkpoints kept; one copied
                                     from another study's identical cell also holds shared-from.json
      report/                        written by `studies/report.py`

Several workers may share the folder (on one machine, or many over a shared file system with a
PostgreSQL storage): every file here is written whole through `unetlab.files`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from unetlab.errors import UnetlabError
from unetlab.files import atomic_write_text, is_temporary
from unetlab.run_folder import RunFolder

#: The evaluation every cell gets after training: its best checkpoint on the study's validation split.
CELL_EVALUATION = "best-val"
#: Written into a cell copied from another study's identical cell (`studies/sharing.py`): where it came from.
SHARED_FROM = "shared-from.json"
#: What a cell's run folder may hold: only these are ever removed when a half-created cell is cleared.
_RUN_ENTRIES = {RunFolder.CONFIG, RunFolder.SPLIT, RunFolder.FOLDS, RunFolder.METRICS, RunFolder.REPORT,
                RunFolder.CHECKPOINTS, RunFolder.EVALUATION, RunFolder.FIGURES, RunFolder.EXPORT, SHARED_FROM}


class StudyFolder:
    SPEC = "study.yaml"
    STORAGE = "study.db"
    SPLIT = "split.json"
    CELLS = "cells"
    REPORT = "report"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StudyFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths

    @property
    def spec_path(self) -> Path:
        return self.path / self.SPEC

    @property
    def db_path(self) -> Path:
        return self.path / self.STORAGE

    @property
    def split_path(self) -> Path:
        return self.path / self.SPLIT

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    def default_storage(self) -> str:
        """`sqlite:///<absolute path of study.db>`."""
        return f"sqlite:///{self.db_path.resolve()}"

    def cell_dir(self, variant: str, seed: int) -> Path:
        return self.path / self.CELLS / variant / f"seed-{seed}"

    def cell_run(self, variant: str, seed: int) -> RunFolder:
        return RunFolder(self.cell_dir(variant, seed))

    @staticmethod
    def label(variant: str, seed: int) -> str:
        """How a cell is named in logs, status and reports: `variant/seed-N`."""
        return f"{variant}/seed-{seed}"

    # ------------------------------------------------------------------ the spec

    def write_spec(self, spec: Any, fingerprint: str) -> Path:
        text = yaml.safe_dump({**spec.to_dict(), "fingerprint": fingerprint}, sort_keys=False)
        if self.spec_path.is_file() and self.spec_path.read_text(encoding="utf-8") == text:
            return self.spec_path
        return atomic_write_text(self.spec_path, text)

    def read_fingerprint(self) -> str | None:
        """The fingerprint in study.yaml, None when the folder has none yet."""
        if not self.spec_path.is_file():
            return None
        try:
            data = yaml.safe_load(self.spec_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise UnetlabError(f"{self.spec_path}: not valid YAML; it is written by `unetlab study`, restore it "
                               "or use another --out folder") from None
        return data.get("fingerprint") if isinstance(data, dict) else None

    # ------------------------------------------------------------------ cells

    def evaluation_path(self, variant: str, seed: int) -> Path:
        return self.cell_run(variant, seed).evaluation_path(CELL_EVALUATION)

    def is_finished(self, variant: str, seed: int) -> bool:
        """Trained and scored on the study split: such a cell is never run again."""
        return self.evaluation_path(variant, seed).is_file()

    def read_evaluation(self, variant: str, seed: int) -> dict[str, Any]:
        return json.loads(self.evaluation_path(variant, seed).read_text(encoding="utf-8"))

    def finished_cells(self) -> list[str]:
        """Labels of every finished cell folder on disk (whatever the spec says today)."""
        pattern = f"{self.CELLS}/*/seed-*/{RunFolder.EVALUATION}/{CELL_EVALUATION}.json"
        return sorted(f"{p.parents[2].name}/{p.parents[1].name}" for p in self.path.glob(pattern))

    def clear_cell(self, variant: str, seed: int) -> None:
        """Remove a half-created cell folder so the cell starts afresh; refuses if it holds anything a run
        folder never does (the study never deletes what it did not write)."""
        folder = self.cell_dir(variant, seed)
        if not folder.exists():
            return
        foreign = [p.name for p in folder.iterdir() if p.name not in _RUN_ENTRIES
                   and not p.name.startswith("events.out.tfevents.")
                   and not is_temporary(p.name)]
        if foreign:
            raise UnetlabError(f"{folder}: holds {foreign[0]}, which no run writes; the study will not delete it. "
                               "Move it away and run the study again")
        shutil.rmtree(folder)
