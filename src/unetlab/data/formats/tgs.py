"""TGS Salt layout: train/images/<id>.png, train/masks/<id>.png, optional train.csv and depths.csv.

Also accepts a folder that directly holds images/ and masks/. Images are grey (often stored as RGB
with three equal channels), masks 8-bit or 16-bit, binarised by the option `binary_rule` (default
`strict`: only 0/1, 0/255 or 0/65535 masks; `nonzero`; `threshold:T`, see `formats/labels.py`);
lossy (JPEG) mask files are refused unless `allow_lossy_masks`. A bad train.csv row is an error
naming the file, its line and the id.
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from unetlab.data.dataset import ArrayDataset
from unetlab.data.formats.labels import MaskRules, check_allow_lossy, parse_binary_rule
from unetlab.data.formats.layout import PairLayout, scan_folder
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.data.io import read_grey, read_mask_values
from unetlab.data.rle import rle_decode
from unetlab.errors import DataError

CLASS_NAMES = ["background", "salt"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def _image_dir(root: Path) -> tuple[Path, Path]:
    for base in (root / "train", root):
        if (base / "images").is_dir():
            return base / "images", base / "masks"
    raise DataError(f"{root}: no images/ folder found (expected {root}/train/images/*.png as in TGS Salt, "
                    f"or {root}/images/); point --data at the data set's top folder")


def _list_images(folder: Path, role: str) -> dict[str, Path]:
    return scan_folder(folder, IMAGE_SUFFIXES, role=role).check()


def read_depths(path: Path) -> dict[str, float]:
    depths: dict[str, float] = {}
    if not path.is_file():
        return depths
    with _csv_errors(path), path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "z"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns 'id,z'")
        for row in reader:
            try:
                depths[row["id"]] = float(row["z"])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {reader.line_num}: depth {row.get('z')!r} is not a number") from None
    return depths


@contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """A CSV file that is not text or not CSV (NUL bytes, another encoding) as one DataError naming it."""
    try:
        yield
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as CSV text ({exc.__class__.__name__}: {exc}); save it as UTF-8 "
                        "CSV") from None


def list_pairs(root: str | Path, require_masks: bool = True) -> tuple[list[str], list[Path], list[Path | None]]:
    """Match images and masks by file stem; a mask without its image (or vice versa) is an error."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found; pass the folder that holds train/images and train/masks")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass the data set's top folder to --data")
    image_dir, mask_dir = _image_dir(root)
    images = _list_images(image_dir, "image")
    if not images:
        raise DataError(f"{image_dir}: no image files (.png, .jpg, .tif); the folder is empty")
    if not mask_dir.is_dir():
        if require_masks:
            raise DataError(f"{mask_dir}: masks folder not found; training and evaluation need a mask per image")
        ids = list(images)
        return ids, [images[i] for i in ids], [None] * len(ids)
    masks = _list_images(mask_dir, "mask")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{masks[orphans[0]]}: mask without its image ({image_dir / orphans[0]}.*); "
                        f"{len(orphans)} such mask(s): add the images or remove the masks")
    missing = sorted(set(images) - set(masks))
    if missing and require_masks:
        raise DataError(f"{images[missing[0]]}: image without its mask in {mask_dir}; "
                        f"{len(missing)} such image(s): add the masks or remove the images")
    ids = sorted(images)
    return ids, [images[i] for i in ids], [masks.get(i) for i in ids]


def read_rle_csv(path: Path) -> dict[str, tuple[int, str]]:
    """id -> (line number, run-length string) of a Kaggle train.csv; a row without id or run-length
    column, or a repeated id, is an error naming the file and the line."""
    rows: dict[str, tuple[int, str]] = {}
    with _csv_errors(path), path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "rle_mask"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns 'id,rle_mask' (Kaggle run-length encoding)")
        for row in reader:
            line = reader.line_num
            sample_id = (row["id"] or "").strip()
            if not sample_id:
                raise DataError(f"{path}: line {line}: no id; every row is 'id,rle_mask': fix or remove the row")
            if row["rle_mask"] is None:
                raise DataError(f"{path}: line {line} (id '{sample_id}'): no rle_mask column; an empty mask is "
                                f"'{sample_id},': fix the row")
            if sample_id in rows:
                raise DataError(f"{path}: line {line}: id '{sample_id}' already on line {rows[sample_id][0]}; "
                                "remove one of the rows")
            rows[sample_id] = (line, row["rle_mask"])
    return rows


def decode_rle_row(path: Path, sample_id: str, row: tuple[int, str], shape: tuple[int, int]) -> np.ndarray:
    """The bool mask of one train.csv row; a bad run-length string names the file, the line and the id."""
    line, rle = row
    try:
        return rle_decode(rle, shape)
    except DataError as exc:
        raise DataError(f"{path}: line {line} (id '{sample_id}'): {exc}; fix or remove the row") from None


def _mask_rules(binary_rule: str, allow_lossy_masks: bool) -> MaskRules:
    return MaskRules(parse_binary_rule(binary_rule), check_allow_lossy(allow_lossy_masks))


def load_tgs(root: str | Path, binary_rule: str = "strict", allow_lossy_masks: bool = False) -> ArrayDataset:
    """Decode every image/mask pair under `root` into memory.

    Masks come from masks/*.png, binarised by `binary_rule` (`unetlab.data.formats.labels`); when
    that folder is absent, from the run-length column of train.csv (as Kaggle distributes them).
    """
    root = Path(root)
    rules = _mask_rules(binary_rule, allow_lossy_masks)
    csv_path = root / "train.csv"
    from_csv = csv_path.is_file() and not any((base / "masks").is_dir() for base in (root / "train", root))
    ids, image_paths, mask_paths = list_pairs(root, require_masks=not from_csv)
    images = [read_grey(p) for p in image_paths]
    if from_csv:
        rles = read_rle_csv(csv_path)
        missing = [i for i in ids if i not in rles]
        if missing:
            raise DataError(f"{csv_path}: no row for image '{missing[0]}' ({len(missing)} image(s) without a mask)")
        masks = [decode_rle_row(csv_path, i, rles[i], image.shape) for i, image in zip(ids, images)]
        mask_paths = [csv_path] * len(ids)
    else:
        masks = [rules.check(p, read_mask_values(p)).astype(bool) for p in mask_paths]  # type: ignore[arg-type]
    shape = images[0].shape
    for i, (image, mask) in enumerate(zip(images, masks)):
        if image.shape != shape:
            raise DataError(f"{image_paths[i]}: size {image.shape[::-1]} differs from {shape[::-1]} of the "
                            "first image; this layout needs one image size")
        if mask.shape != image.shape:
            raise DataError(f"{mask_paths[i]}: mask size {mask.shape[::-1]} differs from its image's "
                            f"{image.shape[::-1]}")
    return ArrayDataset(ids=ids, images=np.stack(images), masks=np.stack(masks),
                         depths=read_depths(root / "depths.csv"), root=root)


def read_tgs(root: str | Path, binary_rule: str = "strict", allow_lossy_masks: bool = False) -> SegmentationSamples:
    """TGS Salt (`load_tgs`) as SegmentationSamples: grey images, masks {0, 1}, depths in meta."""
    data = load_tgs(root, binary_rule, allow_lossy_masks)
    meta = {i: ({"depth": data.depths[i]} if i in data.depths else {}) for i in data.ids}
    return SegmentationSamples(ids=list(data.ids), images=[image for image in data.images],
                               masks=[mask.astype(np.uint8) for mask in data.masks],
                               class_names=list(CLASS_NAMES), ignore_index=None, root=Path(root), meta=meta)


def _stored_and_labels(rules: MaskRules, path: Path) -> tuple[np.ndarray, np.ndarray]:
    values = read_mask_values(path)
    return values, rules.labels(values)


def _rle_rows(path: Path) -> dict[str, Callable[[tuple[int, int]], np.ndarray]]:
    return {i: partial(decode_rle_row, path, i, row) for i, row in read_rle_csv(path).items()}


def tgs_layout(root: str | Path, binary_rule: str = "strict", allow_lossy_masks: bool = False) -> PairLayout:
    """Where `read_tgs` (same options) finds the files of `root` and how it decodes them (for `unetlab inspect`)."""
    root = Path(root)
    rules = _mask_rules(binary_rule, allow_lossy_masks)
    image_dir, mask_dir = _image_dir(root)
    csv_path = root / "train.csv"
    return PairLayout(image_dir, mask_dir, frozenset(IMAGE_SUFFIXES), read_grey, partial(_stored_and_labels, rules),
                      missing_masks=f"{mask_dir}: masks folder not found (nor {csv_path}); training and evaluation "
                                    "need a mask per image: add masks/ or train.csv",
                      class_names=list(CLASS_NAMES), one_size=True,
                      nonzero_is_foreground=rules.binary_rule is not None and rules.binary_rule.threshold == 0,
                      mask_table=csv_path, read_table=_rle_rows, mask_problem=rules.problem)
