"""Oxford-IIIT Pet: `images/<id>.jpg` + `annotations/trimaps/<id>.png` (1 pet, 2 background, 3 border).

The official splits are `annotations/trainval.txt` and `annotations/test.txt` (lines
`Abyssinian_100 1 1 1`: id, class id, species, breed id). Without the list, every trimap with a
matching image is read. Images are decoded by content and converted to RGB: in the full data set
some `.jpg` files are a PNG with alpha, a GIF, grey or CMYK JPEGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetlab.data.io import read_image, read_index_mask
from unetlab.data.formats.folders import list_files
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.errors import DataError

BORDER_RULES = ("ignore", "pet", "background")
SPLITS = ("trainval", "test", "all")
IGNORE = 255
CLASS_NAMES = ["background", "pet"]
SPECIES = {"1": "cat", "2": "dog"}


def read_split_list(path: Path) -> dict[str, dict]:
    """id -> {"class_id", "species", "breed_id"} from an official list (comments '#' skipped)."""
    entries: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        info: dict = {}
        if len(fields) >= 4:
            info = {"class_id": int(fields[1]) if fields[1].isdigit() else fields[1],
                    "species": SPECIES.get(fields[2], fields[2]),
                    "breed_id": int(fields[3]) if fields[3].isdigit() else fields[3]}
        if fields[0] in entries:
            raise DataError(f"{path}: line {number}: id '{fields[0]}' listed twice; remove the duplicate line")
        entries[fields[0]] = info
    if not entries:
        raise DataError(f"{path}: the list is empty; expected lines like 'Abyssinian_100 1 1 1'")
    return entries


def trimap_to_mask(trimap: np.ndarray, border: str, path: Path) -> np.ndarray:
    values = np.unique(trimap)
    unknown = sorted(set(int(v) for v in values) - {1, 2, 3})
    if unknown:
        raise DataError(f"{path}: trimap values {unknown[:6]} outside 1 (pet), 2 (background), 3 (border); "
                        "replace the file with the official trimap")
    mask = (trimap == 1).astype(np.uint8)
    border_value = {"ignore": IGNORE, "pet": 1, "background": 0}[border]
    if border_value:
        mask[trimap == 3] = border_value
    return mask


def _find_root(root: Path) -> Path:
    for base in (root, root / "oxford-iiit-pet"):
        if (base / "annotations" / "trimaps").is_dir():
            return base
    raise DataError(f"{root}: no annotations/trimaps/ folder; point at the Oxford-IIIT Pet folder that holds "
                    "images/ and annotations/ (from images.tar.gz and annotations.tar.gz)")


def read_oxford_pet(root: str | Path, split: str = "trainval", border: str = "ignore") -> SegmentationSamples:
    """Read an Oxford-IIIT Pet split as a binary task: pet -> 1, background -> 0.

    border: "ignore" -> 255 with ignore_index=255 (the usual choice), "pet" -> 1, "background" -> 0.
    split: "trainval" or "test" (official lists; all trimaps with an image when the list is absent),
    or "all" (every trimap with an image).
    """
    if border not in BORDER_RULES:
        raise DataError(f"border={border!r}: unknown rule; choose one of {', '.join(BORDER_RULES)}")
    if split not in SPLITS:
        raise DataError(f"split={split!r}: unknown split; choose one of {', '.join(SPLITS)}")
    root = _find_root(Path(root))
    trimap_dir, image_dir = root / "annotations" / "trimaps", root / "images"
    trimaps = list_files(trimap_dir, role="trimap")
    images = list_files(image_dir, role="image")
    list_path = root / "annotations" / f"{split}.txt"
    if split != "all" and list_path.is_file():
        listed = read_split_list(list_path)
        for sample_id in listed:
            if sample_id not in images:
                raise DataError(f"{list_path}: '{sample_id}' has no image {image_dir / sample_id}.jpg; "
                                "restore the image or remove the line")
            if sample_id not in trimaps:
                raise DataError(f"{list_path}: '{sample_id}' has no trimap {trimap_dir / sample_id}.png; "
                                "restore the trimap or remove the line")
        ids = list(listed)
    else:
        listed = {}
        ids = sorted(i for i in trimaps if i in images)
        if not ids:
            raise DataError(f"{trimap_dir}: no trimap has a matching image in {image_dir}; check the folders")
    out_images, out_masks, meta = [], [], {}
    for sample_id in ids:
        image = read_image(images[sample_id], channels=3)  # by content: PNG+alpha, GIF, grey, CMYK -> RGB
        mask = trimap_to_mask(read_index_mask(trimaps[sample_id]), border, trimaps[sample_id])
        out_images.append(image)
        out_masks.append(mask)
        meta[sample_id] = {"image": str(images[sample_id]), "mask": str(trimaps[sample_id]),
                           **listed.get(sample_id, {})}
    samples = SegmentationSamples(ids=ids, images=out_images, masks=out_masks, class_names=list(CLASS_NAMES),
                                  ignore_index=IGNORE if border == "ignore" else None, root=root, meta=meta)
    return samples.check()
