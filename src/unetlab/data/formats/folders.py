"""A generic folder pair: `<root>/images/*` and `<root>/masks/*`, matched by file stem.

Optional suffixes let names differ (`images/cat.jpg` + `masks/cat_mask.png` with
`mask_suffix="_mask"`). Images: PNG, JPEG, TIFF (tifffile, N bands), BMP, GIF, 8/16-bit, grey, RGB.
Masks are class indices (palette indices, 8- or 16-bit values kept as stored); `{0, 255}` masks
are refused for a 2-class task unless `binary_rule="nonzero"` maps mask > 0 to 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetlab.data.io import read_image, read_index_mask
from unetlab.data.formats.samples import (BINARY_CLASSES, SegmentationSamples, harmonise_channels,
                                          infer_class_names)
from unetlab.errors import DataError

FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
BINARY_RULES = (None, "nonzero")


def list_files(folder: Path, suffix: str = "", role: str = "image") -> dict[str, Path]:
    """id -> path for the image files in `folder` (hidden files skipped); id = stem minus `suffix`."""
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "folder not found"
        raise DataError(f"{folder}: {role} {what}; check the path or pass the right folder name")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in FILE_SUFFIXES:
            continue
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix):
                raise DataError(f"{path}: {role} name does not end with '{suffix}'; rename it, move it out of "
                                f"{folder}, or change the {role}_suffix option")
            stem = stem[: -len(suffix)]
        if stem in files:
            raise DataError(f"{path}: duplicate {role} id '{stem}' (also {files[stem].name}); keep one of them")
        files[stem] = path
    return files


def pair_by_stem(image_dir: Path, mask_dir: Path, image_suffix: str = "", mask_suffix: str = ""
                 ) -> list[tuple[str, Path, Path]]:
    """(id, image, mask) for every image; an orphan mask or an image without mask is an error."""
    images = list_files(image_dir, image_suffix, "image")
    if not images:
        raise DataError(f"{image_dir}: no image files ({', '.join(sorted(FILE_SUFFIXES))}); the folder is empty")
    masks = list_files(mask_dir, mask_suffix, "mask")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{masks[orphans[0]]}: mask without its image (id '{orphans[0]}' in {image_dir}); "
                        f"{len(orphans)} such mask(s): add the images, remove the masks or check the suffixes")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"{images[missing[0]]}: image without its mask (expected {mask_dir}/{missing[0]}"
                        f"{mask_suffix}.png); {len(missing)} such image(s): add the masks or remove the images")
    return [(i, images[i], masks[i]) for i in sorted(images)]


def apply_binary_rule(mask: np.ndarray, rule: str | None) -> np.ndarray:
    if rule is None:
        return mask
    if rule == "nonzero":
        return (mask > 0).astype(np.uint8)
    raise DataError(f"binary_rule={rule!r}: unknown rule; choose one of {', '.join(map(repr, BINARY_RULES))}")


def read_pairs(root: Path, pairs: list[tuple[str, Path, Path]], *, class_names: list[str] | None,
               ignore_index: int | None, binary_rule: str | None = None, channels: int | None = None,
               mask_reader=read_index_mask) -> SegmentationSamples:
    """Decode (id, image, mask) pairs into checked SegmentationSamples."""
    if binary_rule not in BINARY_RULES:
        raise DataError(f"binary_rule={binary_rule!r}: unknown rule; choose one of "
                        f"{', '.join(map(repr, BINARY_RULES))}")
    images = [read_image(image, channels=channels) for _, image, _ in pairs]
    if channels is None:
        images = harmonise_channels(images, [image for _, image, _ in pairs])
    masks = []
    for _, _, mask_path in pairs:
        mask = mask_reader(mask_path)
        if binary_rule is not None:
            keep = mask == ignore_index if ignore_index is not None else None
            mask = apply_binary_rule(mask, binary_rule)
            if keep is not None and keep.any():
                mask[keep] = ignore_index
        masks.append(mask)
    if class_names is None:
        class_names = list(BINARY_CLASSES) if binary_rule else infer_class_names(masks, ignore_index)
    meta = {i: {"image": str(image), "mask": str(mask)} for i, image, mask in pairs}
    samples = SegmentationSamples(ids=[i for i, _, _ in pairs], images=images, masks=masks,
                                  class_names=list(class_names), ignore_index=ignore_index, root=root, meta=meta)
    return samples.check()


def read_folders(root: str | Path, images: str = "images", masks: str = "masks", mask_suffix: str = "",
                 image_suffix: str = "", binary_rule: str | None = None, class_names: list[str] | None = None,
                 num_classes: int | None = None, ignore_index: int | None = None,
                 channels: int | None = None) -> SegmentationSamples:
    """Read `<root>/<images>/` and `<root>/<masks>/` matched by stem (minus the optional suffixes).

    binary_rule: None keeps mask values as class indices; "nonzero" maps mask > 0 to 1 (2 classes).
    class_names / num_classes: the task's classes; by default inferred from the mask values
    ({0, 1} or {0, 255} -> 2 classes; otherwise 0..max). ignore_index: a value that marks
    unlabelled pixels (kept as is). channels: force 1 (grey) or 3 (RGB); by default images keep
    their channels (grey files among RGB ones are repeated to RGB).
    """
    root = Path(root)
    if binary_rule not in BINARY_RULES:
        raise DataError(f"binary_rule={binary_rule!r}: unknown rule; choose one of "
                        f"{', '.join(map(repr, BINARY_RULES))}")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass the folder that holds {images}/ and {masks}/")
    if class_names is None and num_classes is not None:
        class_names = list(BINARY_CLASSES) if num_classes == 2 else [f"class_{k}" for k in range(num_classes)]
    pairs = pair_by_stem(root / images, root / masks, image_suffix, mask_suffix)
    return read_pairs(root, pairs, class_names=class_names, ignore_index=ignore_index, binary_rule=binary_rule,
                      channels=channels)
