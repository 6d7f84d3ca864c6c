"""TGS Salt layout: train/images/<id>.png, train/masks/<id>.png, optional train.csv and depths.csv.

Also accepts a folder that directly holds images/ and masks/. Images are grey (often stored as RGB
with three equal channels), masks 8-bit or 16-bit, binarised with `mask > 0`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from unetlab.data.dataset import ArrayDataset
from unetlab.data.io import read_binary_mask, read_grey
from unetlab.data.rle import rle_decode
from unetlab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def _image_dir(root: Path) -> tuple[Path, Path]:
    for base in (root / "train", root):
        if (base / "images").is_dir():
            return base / "images", base / "masks"
    raise DataError(f"{root}: no images/ folder found (expected {root}/train/images/*.png as in TGS Salt, "
                    f"or {root}/images/); point --data at the data set's top folder")


def _list_images(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise DataError(f"{path}: duplicate id '{path.stem}' (also {files[path.stem].name}); keep one")
            files[path.stem] = path
    return files


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
    images = _list_images(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no image files (.png, .jpg, .tif); the folder is empty")
    if not mask_dir.is_dir():
        if require_masks:
            raise DataError(f"{mask_dir}: masks folder not found; training and evaluation need a mask per image")
        ids = list(images)
        return ids, [images[i] for i in ids], [None] * len(ids)
    masks = _list_images(mask_dir)
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
