"""Helpers of the study tests: a tiny study file and workers as real processes (fixtures: conftest.py).

* `write_tiny_study(folder, variants, seeds, epochs)` writes a study on the tgs-salt base whose cells
  are `run_fixtures.TINY` runs (a 4-channel U-Net on the 16-image `tgs_dir`, about a second each).
* `start_worker(...)` starts `python -m unetlab study ...` as a subprocess (output captured in a file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from run_fixtures import TINY

# The cells' config on top of tgs-salt: TINY, one thread per worker, the recipe's extras off for speed.
TINY_STUDY_SET = [*TINY, "train.num_threads=1", "model.scse=false", "train.averaging=none",
                  "train.image_every_epochs=0", "train.log_every_steps=0"]


def write_tiny_study(folder: Path, variants: dict[str, list[str]], seeds: list[int], epochs: int = 1,
                     name: str = "tiny", **extra: object) -> Path:
    path = Path(folder) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "description": "a tiny test study", "base": "tgs-salt", "set": TINY_STUDY_SET,
            "seeds": seeds, "budget": {"epochs": epochs}, "variants": variants, **extra}
    path.write_text("# a tiny test study\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


def start_worker(study: Path, out: Path, data: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`unetlab study STUDY --data DATA --out OUT --heartbeat 1 EXTRA...` in a fresh interpreter."""
    with log.open("w") as handle:  # the child keeps its own copy of the file
        return subprocess.Popen([sys.executable, "-m", "unetlab", "study", str(study), "--data", str(data),
                                 "--out", str(out), "--heartbeat", "1", *extra],
                                stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "MPLBACKEND": "Agg"})
