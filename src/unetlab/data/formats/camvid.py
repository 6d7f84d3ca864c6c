"""CamVid (SegNet's 11-class version) and two common mask encodings: VOC palette PNGs and RGB colours.

SegNet CamVid: `train/`, `trainannot/`, `val/`, `valannot/` (and `test/`, `testannot/`) with pair
lists `train.txt`, `val.txt`, `test.txt` whose paths carry SegNet's own prefix
(`/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png`): they are resolved by file name
inside the data folder. Annotations are class indices 0..10 and 11 = Unlabelled (ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetlab.data.io import read_image, read_index_mask, read_rgb_mask
from unetlab.data.formats.folders import pair_by_stem, read_pairs
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.errors import DataError

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CAMVID_IGNORE = 11  # Unlabelled
# SegNet's colours for the classes above, in the same order (Unlabelled is black there, as unetlab's ignored pixels).
CAMVID_COLOURS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
VOC_IGNORE = 255


def _resolve(root: Path, listed: str, folder: str, list_path: Path, number: int) -> Path:
    """A path from a pair list, by file name: <root>/<folder>/<name>, else <root>/<last two parts>."""
    parts = Path(listed.replace("\\", "/")).parts
    if not parts:
        raise DataError(f"{list_path}: line {number}: empty path; expected 'image_path mask_path'")
    candidates = [root / folder / parts[-1]]
    if len(parts) >= 2:
        candidates.append(root / parts[-2] / parts[-1])
    candidates.append(root / listed.lstrip("/"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{list_path}: line {number}: {listed} not found as {candidates[0]}; "
                    "restore the file or remove the line")


def read_pair_list(root: Path, list_path: Path, image_folder: str, mask_folder: str
                   ) -> list[tuple[str, Path, Path]]:
    pairs: list[tuple[str, Path, Path]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(list_path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise DataError(f"{list_path}: line {number}: expected 'image_path mask_path', got {line.strip()!r}")
        image = _resolve(root, fields[0], image_folder, list_path, number)
        mask = _resolve(root, fields[1], mask_folder, list_path, number)
        sample_id = image.stem
        if sample_id in seen:
            raise DataError(f"{list_path}: line {number}: '{sample_id}' already listed on line {seen[sample_id]}; "
                            "remove the duplicate")
        seen[sample_id] = number
        pairs.append((sample_id, image, mask))
    if not pairs:
        raise DataError(f"{list_path}: no pairs listed; expected lines 'train/x.png trainannot/x.png'")
    return pairs


def read_camvid(root: str | Path, split: str = "train") -> SegmentationSamples:
    """Read a SegNet CamVid split ("train", "val", "test", or "trainval" = train + val)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass the CamVid folder that holds train/ and trainannot/")
    if split == "trainval":
        parts = [read_camvid(root, "train"), read_camvid(root, "val")]
        return SegmentationSamples(ids=parts[0].ids + parts[1].ids, images=parts[0].images + parts[1].images,
                                   masks=parts[0].masks + parts[1].masks, class_names=list(CAMVID_CLASSES),
                                   ignore_index=CAMVID_IGNORE, root=root, meta={**parts[0].meta, **parts[1].meta},
                                   palette=list(CAMVID_COLOURS)).check()
    image_folder, mask_folder = split, f"{split}annot"
    list_path = root / f"{split}.txt"
    if list_path.is_file():
        pairs = read_pair_list(root, list_path, image_folder, mask_folder)
    elif (root / image_folder).is_dir():
        pairs = pair_by_stem(root / image_folder, root / mask_folder)
    else:
        raise DataError(f"{root}: no {split}.txt and no {image_folder}/ folder; splits are train, val, test "
                        "(or trainval): check the split name and the folder")
    images, masks, meta = [], [], {}
    for sample_id, image_path, mask_path in pairs:
        mask = read_index_mask(mask_path)
        top = int(mask.max()) if mask.size else 0
        if top > CAMVID_IGNORE:
            raise DataError(f"{mask_path}: class value {top} > 11; SegNet CamVid masks hold 0..10 and 11 = "
                            "Unlabelled: this is not the 11-class annotation (colour masks need read_rgb_masks)")
        images.append(read_image(image_path, channels=3))
        masks.append(mask)
        meta[sample_id] = {"image": str(image_path), "mask": str(mask_path), "split": split}
    return SegmentationSamples(ids=[p[0] for p in pairs], images=images, masks=masks,
                               class_names=list(CAMVID_CLASSES), ignore_index=CAMVID_IGNORE, root=root,
                               meta=meta, palette=list(CAMVID_COLOURS)).check()


# --- VOC-style palette masks --------------------------------------------------------------------------

def read_palette_masks(root: str | Path, images: str = "JPEGImages", masks: str = "SegmentationClass",
                       split: str | None = None, class_names: list[str] | None = None,
                       ignore_index: int | None = VOC_IGNORE, image_suffix: str = "",
                       mask_suffix: str = "") -> SegmentationSamples:
    """Images + palette PNG masks whose palette indices are the classes (Pascal VOC; 255 = boundary).

    split: read ids from `<root>/ImageSets/Segmentation/<split>.txt` (VOC) instead of pairing every
    file. class_names: VOC's 21 classes by default. Colour (RGB) masks are refused: use read_rgb_masks.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass the folder that holds {images}/ and {masks}/")
    pairs = pair_by_stem(root / images, root / masks, image_suffix, mask_suffix) if split is None else \
        _voc_split_pairs(root, images, masks, split, image_suffix, mask_suffix)
    return read_pairs(root, pairs, class_names=list(class_names or VOC_CLASSES), ignore_index=ignore_index)


def _voc_split_pairs(root: Path, images: str, masks: str, split: str, image_suffix: str, mask_suffix: str
                     ) -> list[tuple[str, Path, Path]]:
    from unetlab.data.formats.folders import list_files

    list_path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_path.is_file():
        raise DataError(f"{list_path}: split list not found; pass split=None to pair every file, or a split "
                        "that exists (train, val, trainval)")
    image_files = list_files(root / images, image_suffix, "image")
    mask_files = list_files(root / masks, mask_suffix, "mask")
    pairs = []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        sample_id = line.strip().split()[0] if line.strip() else ""
        if not sample_id:
            continue
        if sample_id not in image_files or sample_id not in mask_files:
            where = root / images if sample_id not in image_files else root / masks
            raise DataError(f"{list_path}: line {number}: '{sample_id}' has no file in {where}; restore it or "
                            "remove the line")
        pairs.append((sample_id, image_files[sample_id], mask_files[sample_id]))
    if not pairs:
        raise DataError(f"{list_path}: no ids listed")
    return pairs


# --- RGB colour-coded masks ---------------------------------------------------------------------------

def rgb_to_index(rgb: np.ndarray, colours: dict[tuple[int, int, int], int], path: Path | str = "mask"
                 ) -> np.ndarray:
    """Map an (H, W, 3) colour mask to class indices with `colours` {(r, g, b): index}.

    A colour not in the table is an error naming the file, the colour, its pixel count and first pixel.
    """
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise DataError(f"{path}: colour mask must be (H, W, 3), got {rgb.shape}")
    rgb = rgb[..., :3].astype(np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table_codes = np.array([(r << 16) | (g << 8) | b for (r, g, b) in colours], dtype=np.uint32)
    table_values = np.array(list(colours.values()), dtype=np.int64)
    order = np.argsort(table_codes)
    table_codes, table_values = table_codes[order], table_values[order]
    flat = codes.ravel()
    position = np.searchsorted(table_codes, flat)
    position = np.clip(position, 0, max(len(table_codes) - 1, 0))
    known = table_codes[position] == flat if len(table_codes) else np.zeros(flat.shape, bool)
    if not known.all():
        first = int(np.flatnonzero(~known)[0])
        code = int(flat[first])
        colour = (code >> 16, (code >> 8) & 255, code & 255)
        count = int((flat == code).sum())
        y, x = divmod(first, codes.shape[1])
        raise DataError(f"{path}: unknown colour {colour} ({count} pixel(s), first at x={x}, y={y}); add it to "
                        "the colour table or fix the mask")
    values = table_values[position].reshape(codes.shape)
    return values.astype(np.uint8) if (values.size == 0 or values.max() <= 255) else values


def read_rgb_masks(root: str | Path, colours: dict[tuple[int, int, int], int], images: str = "images",
                   masks: str = "masks", class_names: list[str] | None = None, ignore_index: int | None = None,
                   image_suffix: str = "", mask_suffix: str = "") -> SegmentationSamples:
    """Images + colour-coded masks (e.g. CamVid's 32-class `*_L.png`, mask_suffix="_L").

    colours: {(r, g, b): class index}; a colour may map to `ignore_index`. class_names default to
    class_0..class_<max index>. Unknown colours are an error naming the file and the colour.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass the folder that holds {images}/ and {masks}/")
    if not colours:
        raise DataError(f"{root}: empty colour table; pass colours={{(r, g, b): class_index, ...}}")
    for colour in colours:
        if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
            raise DataError(f"colour table: {colour!r} is not an (r, g, b) triple of 0..255")
    if class_names is None:
        top = max(v for v in colours.values() if v != ignore_index)
        class_names = [f"class_{k}" for k in range(top + 1)]
    pairs = pair_by_stem(root / images, root / masks, image_suffix, mask_suffix)
    return read_pairs(root, pairs, class_names=class_names, ignore_index=ignore_index,
                      mask_reader=lambda path: rgb_to_index(read_rgb_mask(path), colours, path))
