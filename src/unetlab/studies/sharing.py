"""Cells shared between studies: train a configuration once, report it in every study that asks for it.

q51-q54 all hold the same baseline cells (the tgs-salt recipe's U-Net-16, 15 epochs, seeds 0-2, one
split); training them once per study costs about 12 minutes a cell for nothing. Before a cell trains,
`find_twin` looks for a finished cell of another study beside this one (the same parent folder, e.g.
`studies/`) that is the same experiment:

* the same resolved config (every key, the seed and the budget included; the run's name, the split
  file's path and the data folder's spelling aside),
* the same data folder (resolved path) and the same train/validation image ids in the study's split.json.

`adopt_twin` then copies that cell's run folder (checkpoints, metrics, evaluation) into this study
through a temporary folder renamed into place, and writes `shared-from.json` there saying where it
came from; reports list such cells. A worker run with `share=False` (`unetlab study --no-sharing`)
trains every cell itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from unetlab.config import Config
from unetlab.data.splits import read_split_ids
from unetlab.errors import UnetlabError
from unetlab.files import TEMP_SUFFIX, atomic_write_text, is_temporary
from unetlab.run_folder import RunFolder
from unetlab.studies.folder import CELL_EVALUATION, SHARED_FROM, StudyFolder
from unetlab.studies.spec import cell_identity


def _resolved(root: Any) -> Path | None:
    return Path(root).resolve() if root is not None else None


def _same_experiment(run: RunFolder, config: Config, data_root: str | Path) -> bool:
    try:
        other = run.read_config()
    except UnetlabError:
        return False
    return _resolved(other.data.root) == _resolved(data_root) and cell_identity(other) == cell_identity(config)


def find_twin(folder: StudyFolder, config: Config, data_root: str | Path) -> RunFolder | None:
    """A finished cell of another study in `folder`'s parent that ran exactly this cell's experiment."""
    split = read_split_ids(folder.split_path)
    if split is None or not folder.path.parent.is_dir():
        return None
    here = folder.path.resolve()
    for other in sorted(folder.path.parent.iterdir()):
        if other.resolve() == here or not (other / StudyFolder.SPEC).is_file():
            continue
        if read_split_ids(other / StudyFolder.SPLIT) != split:
            continue
        pattern = f"{StudyFolder.CELLS}/*/seed-*/{RunFolder.EVALUATION}/{CELL_EVALUATION}.json"
        for evaluation in sorted(other.glob(pattern)):
            run = RunFolder(evaluation.parents[1])
            if _same_experiment(run, config, data_root):
                return run
    return None


def shared_from(run: RunFolder | Path) -> dict[str, Any] | None:
    """What `shared-from.json` of a cell says (None for a cell trained in its own study)."""
    path = Path(getattr(run, "path", run)) / SHARED_FROM
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {"cell": "unknown (unreadable shared-from.json)"}


def adopt_twin(folder: StudyFolder, variant: str, seed: int, twin: RunFolder) -> dict[str, Any]:
    """Copy `twin` in as this study's cell (whole, or not at all) and record where it came from."""
    origin = shared_from(twin) or {"study": twin.path.parents[2].name,
                                   "cell": StudyFolder.label(twin.path.parent.name, int(twin.path.name[5:])),
                                   "path": str(twin.path.resolve())}
    target = folder.cell_dir(variant, seed)
    folder.clear_cell(variant, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX))
    try:
        copy = staging / "cell"
        shutil.copytree(twin.path, copy, ignore=lambda _, names: [n for n in names if is_temporary(n) or n == SHARED_FROM])
        atomic_write_text(copy / SHARED_FROM, json.dumps(origin, indent=1))
        os.replace(copy, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return origin
