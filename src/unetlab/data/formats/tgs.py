"""TGS Salt layout: train/images/<id>.png, train/masks/<id>.png, optional train.csv and depths.csv.

Also accepts a folder that directly holds images/ and masks/. Images are grey (often stored as RGB
with three equal channels), masks 8-bit or 16-bit, binarised with `mask > 0`.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from unetlab.data.dataset import ArrayDataset
from unetlab.data.formats.layout import PairLayout, scan_folder
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.data.io import read_binary_mask, read_grey, read_mask_values
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
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "z"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns 'id,z'")
        for line, row in enumerate(reader, start=2):
            try:
                depths[row["id"]] = float(row["z"])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {line}: depth {row.get('z')!r} is not a number") from None
    return depths


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


def read_rle_csv(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "rle_mask"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns 'id,rle_mask' (Kaggle run-length encoding)")
        return {row["id"]: row["rle_mask"] or "" for row in reader}


def load_tgs(root: str | Path) -> ArrayDataset:
    """Decode every image/mask pair under `root` into memory.

    Masks come from masks/*.png; when that folder is absent, from the run-length column of
    train.csv (as Kaggle distributes them).
    """
    root = Path(root)
    csv_path = root / "train.csv"
    from_csv = csv_path.is_file() and not any((base / "masks").is_dir() for base in (root / "train", root))
    ids, image_paths, mask_paths = list_pairs(root, require_masks=not from_csv)
    images = [read_grey(p) for p in image_paths]
    if from_csv:
        rles = read_rle_csv(csv_path)
        missing = [i for i in ids if i not in rles]
        if missing:
            raise DataError(f"{csv_path}: no row for image '{missing[0]}' ({len(missing)} image(s) without a mask)")
        masks = [rle_decode(rles[i], image.shape) for i, image in zip(ids, images)]
        mask_paths = [csv_path] * len(ids)
    else:
        masks = [read_binary_mask(p) for p in mask_paths]  # type: ignore[arg-type]
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


def read_tgs(root: str | Path) -> SegmentationSamples:
    """TGS Salt (`load_tgs`) as SegmentationSamples: grey images, masks {0, 1}, depths in meta."""
    data = load_tgs(root)
    meta = {i: ({"depth": data.depths[i]} if i in data.depths else {}) for i in data.ids}
    return SegmentationSamples(ids=list(data.ids), images=[image for image in data.images],
                               masks=[mask.astype(np.uint8) for mask in data.masks],
                               class_names=list(CLASS_NAMES), ignore_index=None, root=Path(root), meta=meta)


def _stored_and_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    values = read_mask_values(path)
    return values, (values > 0).astype(np.uint8)


def _rle_rows(path: Path) -> dict[str, Callable[[tuple[int, int]], np.ndarray]]:
    return {i: partial(rle_decode, rle) for i, rle in read_rle_csv(path).items()}


def tgs_layout(root: str | Path) -> PairLayout:
    """Where `read_tgs` finds the files of `root` and how it decodes them (for `unetlab inspect`)."""
    root = Path(root)
    image_dir, mask_dir = _image_dir(root)
    csv_path = root / "train.csv"
    return PairLayout(image_dir, mask_dir, frozenset(IMAGE_SUFFIXES), read_grey, _stored_and_binary,
                      missing_masks=f"{mask_dir}: masks folder not found (nor {csv_path}); training and evaluation "
                                    "need a mask per image: add masks/ or train.csv",
                      class_names=list(CLASS_NAMES), one_size=True, nonzero_is_foreground=True,
                      mask_table=csv_path, read_table=_rle_rows)
