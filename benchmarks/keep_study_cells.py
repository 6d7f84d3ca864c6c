"""Copy the finished cells of local studies, without their checkpoints, into benchmarks/results/studies/,
so that a new checkout continues them instead of training them again (benchmarks/results/studies/README.md).

    python benchmarks/keep_study_cells.py q51-downsampling q52-skips      # from studies/<name>/
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEPT = ["study.yaml", "split.json", "report/report.md", "report/cells.csv", "report/summary.json"]
CELL_FILES = ["config.yaml", "metrics.csv", "split.json", "shared-from.json", "evaluation/best-val.json"]


def keep(study: Path, target: Path) -> int:
    """Copy what a finished study keeps; returns the number of finished cells copied."""
    names = KEPT + [str(p.relative_to(study)) for cell in sorted(study.glob("cells/*/seed-*"))
                    if (cell / "evaluation" / "best-val.json").is_file()
                    for p in (cell / name for name in CELL_FILES) if p.is_file()]
    for name in names:
        if (study / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(study / name, target / name)
    return sum(1 for name in names if name.endswith("best-val.json"))


def main() -> int:
    root = Path(__file__).resolve().parent / "results" / "studies"
    for name in sys.argv[1:]:
        print(f"{name}: {keep(Path('studies') / name, root / name)} finished cell(s) kept in {root / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
