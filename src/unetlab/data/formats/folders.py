"""A generic folder pair: `<root>/images/*` and `<root>/masks/*`, matched by file stem.

Optional suffixes let names differ (`images/cat.jpg` + `masks/cat_mask.png` with
`mask_suffix="_mask"`). Images: PNG, JPEG, TIFF (tifffile, N bands), BMP, GIF, 8/16-bit, grey, RGB.
Masks are class indices (palette indices, 8- or 16-bit values kept as stored); `{0, 255}` masks
are refused for a 2-class task unless a `binary_rule` maps them to {0, 1} (`strict`, `nonzero`,
`threshold:T`: `formats/labels.py`). Lossy (JPEG) mask files are refused unless `allow_lossy_masks`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from unetlab.data.formats.labels import BinaryRule, MaskRules, check_allow_lossy, parse_binary_rule
from unetlab.data.formats.layout import PairLayout, scan_folder
from unetlab.data.io import read_image, read_index_mask
from unetlab.data.formats.samples import (BINARY_CLASSES, SegmentationSamples, harmonise_channels,
                                          infer_class_names)
from unetlab.errors import DataError

FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


def list_files(folder: Path, suffix: str = "", role: str = "image") -> dict[str, Path]:
    """id -> path for the image files in `folder` (hidden files skipped); id = stem minus `suffix`."""
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "folder not found"
        raise DataError(f"{folder}: {role} {what}; check the path or pass the right folder name")
    return scan_folder(folder, FILE_SUFFIXES, suffix, role).check()


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


def mask_rules(binary_rule: str | None, ignore_index: int | None, allow_lossy_masks: bool = False) -> MaskRules:
    """The label rules of a folders read: `binary_rule` None keeps the values as class indices."""
    rule: BinaryRule | None = None if binary_rule is None else parse_binary_rule(binary_rule)
    return MaskRules(rule, check_allow_lossy(allow_lossy_masks), ignore_index)


def read_pairs(root: Path, pairs: list[tuple[str, Path, Path]], *, class_names: list[str] | None,
               ignore_index: int | None, binary_rule: str | None = None, channels: int | None = None,
               mask_reader=read_index_mask, allow_lossy_masks: bool = False) -> SegmentationSamples:
    """Decode (id, image, mask) pairs into checked SegmentationSamples (mask rules: `mask_rules`)."""
    rules = mask_rules(binary_rule, ignore_index, allow_lossy_masks)
    images = [read_image(image, channels=channels) for _, image, _ in pairs]
    if channels is None:
        images = harmonise_channels(images, [image for _, image, _ in pairs])
    masks = [rules.check(mask_path, mask_reader(mask_path)) for _, _, mask_path in pairs]
    if class_names is None:
        class_names = list(BINARY_CLASSES) if binary_rule else infer_class_names(masks, ignore_index)
    meta = {i: {"image": str(image), "mask": str(mask)} for i, image, mask in pairs}
    samples = SegmentationSamples(ids=[i for i, _, _ in pairs], images=images, masks=masks,
                                  class_names=list(class_names), ignore_index=ignore_index, root=root, meta=meta)
    return samples.check()


def _class_names(class_names: list[str] | None, num_classes: int | None, binary_rule: str | None
                 ) -> list[str] | None:
    """The classes the options name; None: inferred from the mask values."""
    if class_names is not None:
        return list(class_names)
    if num_classes is not None:
        return list(BINARY_CLASSES) if num_classes == 2 else [f"class_{k}" for k in range(num_classes)]
    return list(BINARY_CLASSES) if binary_rule else None


def folders_layout(root: str | Path, images: str = "images", masks: str = "masks", mask_suffix: str = "",
                   image_suffix: str = "", binary_rule: str | None = None, class_names: list[str] | None = None,
                   num_classes: int | None = None, ignore_index: int | None = None,
                   channels: int | None = None, allow_lossy_masks: bool = False) -> PairLayout:
    """Where `read_folders` (same options) finds the files of `root` and how it decodes them."""
    root = Path(root)
    rules = mask_rules(binary_rule, ignore_index, allow_lossy_masks)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass the folder that holds {images}/ and {masks}/")
    return PairLayout(root / images, root / masks, frozenset(FILE_SUFFIXES), partial(read_image, channels=channels),
                      partial(_stored_and_labels, rules),
                      missing_masks=f"{root / masks}: mask folder not found; add the masks or pass the right folder "
                                    "name (--set-option masks=NAME)",
                      class_names=_class_names(class_names, num_classes, binary_rule), ignore_index=ignore_index,
                      image_suffix=image_suffix, mask_suffix=mask_suffix, mask_problem=rules.problem)


def _stored_and_labels(rules: MaskRules, path: Path) -> tuple[np.ndarray, np.ndarray]:
    values = read_index_mask(path)
    return values, rules.labels(values)


def read_folders(root: str | Path, images: str = "images", masks: str = "masks", mask_suffix: str = "",
                 image_suffix: str = "", binary_rule: str | None = None, class_names: list[str] | None = None,
                 num_classes: int | None = None, ignore_index: int | None = None,
                 channels: int | None = None, allow_lossy_masks: bool = False) -> SegmentationSamples:
    """Read `<root>/<images>/` and `<root>/<masks>/` matched by stem (minus the optional suffixes).

    binary_rule: None keeps mask values as class indices; "strict" maps 0/1, 0/255 or 0/65535 masks to
    {0, 1} and refuses others, "nonzero" maps mask > 0 to 1, "threshold:T" mask > T (2 classes).
    allow_lossy_masks: accept JPEG / lossy WebP mask files (refused by default: compression noise).
    class_names / num_classes: the task's classes; by default inferred from the mask values
    ({0, 1} or {0, 255} -> 2 classes; otherwise 0..max). ignore_index: a value that marks
    unlabelled pixels (kept as is). channels: force 1 (grey) or 3 (RGB); by default images keep
    their channels (grey files among RGB ones are repeated to RGB).
    """
    layout = folders_layout(root, images, masks, mask_suffix, image_suffix, binary_rule, class_names, num_classes,
                            ignore_index, channels, allow_lossy_masks)
    pairs = pair_by_stem(layout.image_dir, layout.mask_dir, image_suffix, mask_suffix)
    return read_pairs(Path(root), pairs, class_names=layout.class_names, ignore_index=ignore_index,
                      binary_rule=binary_rule, channels=channels, allow_lossy_masks=allow_lossy_masks)
