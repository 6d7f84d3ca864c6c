"""ISBI 2012 EM segmentation (the original U-Net data): grey slices and labels 255 = cell, 0 = membrane.

Layouts: `train/image/*.png|tif` + `train/label/*` (one file per slice, matched by stem; also
accepted without `train/`), or the challenge's stacks `train-volume.tif` + `train-labels.tif`.
The binary mask is `label == foreground`: 255 segments cells, `foreground=0` segments membranes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetlab.data.io import read_index_mask, read_image
from unetlab.data.formats.folders import pair_by_stem
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.errors import DataError

LABEL_VALUES = (0, 255)


def _class_names(foreground: int) -> list[str]:
    return ["membrane", "cell"] if foreground == 255 else ["cell", "membrane"]


def _binary(label: np.ndarray, foreground: int, path: Path | str) -> np.ndarray:
    extra = np.setdiff1d(np.unique(label), LABEL_VALUES)
    if extra.size:
        raise DataError(f"{path}: label values {extra[:6].tolist()} besides 0 (membrane) and 255 (cell); "
                        "ISBI labels are binary: re-export them without smoothing or resampling")
    return (label == foreground).astype(np.uint8)


def _read_stacks(root: Path, foreground: int) -> SegmentationSamples | None:
    volume, labels = root / "train-volume.tif", root / "train-labels.tif"
    if not volume.is_file():
        return None
    import tifffile

    if not labels.is_file():
        raise DataError(f"{labels}: labels stack not found next to {volume.name}; both are needed for training")
    stacks = []
    for path in (volume, labels):
        try:
            stacks.append(np.asarray(tifffile.imread(path)))
        except Exception as exc:
            raise DataError(f"{path}: cannot decode TIFF ({exc.__class__.__name__}); replace the file") from None
    images, label_stack = stacks
    if images.ndim == 2:
        images, label_stack = images[None], label_stack[None] if label_stack.ndim == 2 else label_stack
    if images.ndim != 3 or images.shape != label_stack.shape:
        raise DataError(f"{labels}: shape {label_stack.shape} differs from {volume.name}'s {images.shape}; "
                        "expected one label slice per image slice")
    if images.dtype != np.uint8:
        raise DataError(f"{volume}: expected 8-bit slices, got {images.dtype}")
    ids = [f"slice_{k:02d}" for k in range(len(images))]
    masks = [_binary(label_stack[k], foreground, f"{labels} slice {k}") for k in range(len(images))]
    meta = {i: {"image": f"{volume}[{k}]", "mask": f"{labels}[{k}]"} for k, i in enumerate(ids)}
    return SegmentationSamples(ids=ids, images=[np.ascontiguousarray(s) for s in images], masks=masks,
                               class_names=_class_names(foreground), ignore_index=None, root=root,
                               meta=meta).check()


def read_isbi(root: str | Path, foreground: int = 255) -> SegmentationSamples:
    """Read ISBI 2012 training slices as a binary task (mask = label == foreground)."""
    root = Path(root)
    if foreground not in LABEL_VALUES:
        raise DataError(f"foreground={foreground!r}: ISBI labels are 255 (cell) and 0 (membrane); choose one")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass the folder that holds train/image and train/label")
    stacked = _read_stacks(root, foreground)
    if stacked is not None:
        return stacked
    for base in (root / "train", root):
        if (base / "image").is_dir():
            break
    else:
        raise DataError(f"{root}: no train/image/ folder (nor train-volume.tif); expected train/image/*.png "
                        "and train/label/*.png")
    pairs = pair_by_stem(base / "image", base / "label")
    pairs.sort(key=lambda p: (0, int(p[0]), p[0]) if p[0].isdigit() else (1, 0, p[0]))  # 0, 1, 2, ... 10
    images, masks, meta = [], [], {}
    for sample_id, image_path, label_path in pairs:
        images.append(read_image(image_path, channels=1))
        masks.append(_binary(read_index_mask(label_path), foreground, label_path))
        meta[sample_id] = {"image": str(image_path), "mask": str(label_path)}
    return SegmentationSamples(ids=[p[0] for p in pairs], images=images, masks=masks,
                               class_names=_class_names(foreground), ignore_index=None, root=root,
                               meta=meta).check()
