"""Where a folder format keeps its files, for the readers and for `unetlab.data.inspect` alike.

A reader stops at the first problem; `inspect` lists every one. Both list a folder with
`scan_folder` (the files a reader takes, and the ones it refuses with the reader's message) and,
for formats that pair image files with mask files by id, both start from the format's
`PairLayout`: the folders, the file suffixes, and how one image and one mask are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np

from unetlab.errors import DataError


class Refused(NamedTuple):
    kind: str  # "duplicate" (the id was already taken) | "name" (the name lacks the required suffix)
    path: Path
    message: str  # `file: what; fix`, as the reader raises it


@dataclass
class FolderScan:
    """The files of one folder as a reader lists them: id -> path, and the files it refuses."""

    folder: Path
    role: str
    files: dict[str, Path] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)

    def duplicates(self) -> list[Path]:
        return [r.path for r in self.refused if r.kind == "duplicate"]

    def check(self) -> dict[str, Path]:
        """`files`, or the reader's DataError for the first refused file."""
        if self.refused:
            raise DataError(self.refused[0].message)
        return self.files


def scan_folder(folder: Path, suffixes: Iterable[str], suffix: str = "", role: str = "image") -> FolderScan:
    """Image files of `folder` (hidden files and other extensions skipped), by id = stem minus `suffix`,
    in name order; a name without `suffix`, or an id already taken, is refused."""
    scan = FolderScan(folder, role)
    suffixes = {s.lower() for s in suffixes}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix):
                scan.refused.append(Refused("name", path, (
                    f"{path}: {role} name does not end with '{suffix}'; rename it, move it out of {folder}, "
                    f"or change the {role}_suffix option")))
                continue
            stem = stem[: -len(suffix)]
        if stem in scan.files:
            scan.refused.append(Refused("duplicate", path, (
                f"{path}: duplicate {role} id '{stem}' (also {scan.files[stem].name}); keep one of them")))
            continue
        scan.files[stem] = path
    return scan


@dataclass
class PairLayout:
    """A format whose samples are an image file and a mask file with the same id.

    `read_mask` returns the mask twice: its values as stored and the class indices the reader makes
    of them; `mask_problem(path, values)` is what the reader refuses in such a mask, as (kind, message)
    (`labels.MaskRules.problem`: lossy files, values its binary rule does not take). Without a mask
    folder, masks may come from a table of run-length rows (TGS `train.csv`); `missing_masks` is the
    problem to report when there is neither.
    """

    image_dir: Path
    mask_dir: Path
    suffixes: frozenset[str]
    read_image: Callable[[Path], np.ndarray]
    read_mask: Callable[[Path], tuple[np.ndarray, np.ndarray]]
    missing_masks: str
    class_names: list[str] | None = None  # None: inferred from the mask values
    ignore_index: int | None = None
    one_size: bool = False  # every image must have the same size
    image_suffix: str = ""
    mask_suffix: str = ""
    nonzero_is_foreground: bool = False  # the reader makes every stored value > 0 class 1 (TGS)
    mask_table: Path | None = None
    read_table: Callable[[Path], dict[str, Callable[[tuple[int, int]], np.ndarray]]] | None = None
    mask_problem: Callable[[Path, np.ndarray], tuple[str, str] | None] | None = None

    def scan_images(self) -> FolderScan:
        return scan_folder(self.image_dir, self.suffixes, self.image_suffix, "image")

    def scan_masks(self) -> FolderScan:
        return scan_folder(self.mask_dir, self.suffixes, self.mask_suffix, "mask")
