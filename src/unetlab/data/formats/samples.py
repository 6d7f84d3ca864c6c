"""The one structure every dataset reader returns: decoded images and class-index masks in memory.

Images keep their own size and channels (uint8 (H, W) grey or (H, W, C)); masks are class indices
(H, W), uint8 or int64, with an optional `ignore_index` for pixels that carry no label (a trimap's
border, VOC's 255 boundary, CamVid's "Unlabelled"). Binary tasks use {0, 1}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from unetlab.data.dataset import ArrayDataset
from unetlab.errors import DataError

BINARY_CLASSES = ["background", "foreground"]


@dataclass
class SegmentationSamples:
    ids: list[str]
    images: list[np.ndarray]  # uint8 (H, W) or (H, W, C)
    masks: list[np.ndarray]  # uint8 or int64 (H, W) class indices
    class_names: list[str]
    ignore_index: int | None = None
    root: Path | None = None
    meta: dict[str, dict] = field(default_factory=dict)  # per id: {"image": path, "mask": path, ...}
    palette: list[tuple[int, int, int]] | None = None  # RGB per class where the format has its own colours

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    def _where(self, index: int, key: str = "mask") -> str:
        """The file a message should name for sample `index` (falls back to its id)."""
        sample_id = self.ids[index]
        path = self.meta.get(sample_id, {}).get(key)
        return f"{path} (id '{sample_id}')" if path else f"sample '{sample_id}'"

    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(image.shape[:2]) for image in self.images]  # type: ignore[misc]

    def mask_values(self) -> list[int]:
        """Sorted distinct mask values over the whole set."""
        values: set[int] = set()
        for mask in self.masks:
            if mask.dtype == np.uint8:
                values.update(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
            else:
                values.update(np.unique(mask).tolist())
        return sorted(int(v) for v in values)

    def check(self) -> SegmentationSamples:
        """Verify lengths, types, that each mask has its image's (H, W) and values in 0..classes-1 or ignore."""
        if not (len(self.ids) == len(self.images) == len(self.masks)):
            raise DataError(f"{self.root}: {len(self.ids)} ids, {len(self.images)} images and {len(self.masks)} "
                            "masks; a reader must return one image and one mask per id")
        if len(set(self.ids)) != len(self.ids):
            dup = next(i for k, i in enumerate(self.ids) if i in self.ids[:k])
            raise DataError(f"{self.root}: duplicate id '{dup}'; ids must be unique: rename or remove one")
        if self.num_classes < 1:
            raise DataError(f"{self.root}: no class names; give the classes of the task")
        if self.palette is not None and len(self.palette) != self.num_classes:
            raise DataError(f"{self.root}: {len(self.palette)} palette colours for {self.num_classes} classes; "
                            "a reader gives one colour per class or none")
        n = self.num_classes
        for k, (image, mask) in enumerate(zip(self.images, self.masks)):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise DataError(f"{self._where(k, 'image')}: image must be uint8 (H, W) or (H, W, C), got "
                                f"{image.dtype} {image.shape}")
            if mask.ndim != 2 or mask.dtype.kind not in "ui":
                raise DataError(f"{self._where(k)}: mask must be integer (H, W) class indices, got "
                                f"{mask.dtype} {mask.shape}")
            if mask.shape != image.shape[:2]:
                raise DataError(f"{self._where(k)}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its "
                                f"image's {image.shape[1]}x{image.shape[0]}; resize or replace the mask")
            bad = mask >= n
            if self.ignore_index is not None:
                bad &= mask != self.ignore_index
            if bad.any():
                values = sorted(int(v) for v in np.unique(mask[bad]))
                hint = ""
                if n == 2 and values in ([255], [65535]):
                    hint = ("; the mask looks like 0/255 binary: read it with binary_rule='strict' (0/255 -> 0/1, other "
                            "values refused) or binary_rule='nonzero' (mask > 0 -> 1)")
                ignore = f" or ignore {self.ignore_index}" if self.ignore_index is not None else ""
                raise DataError(f"{self._where(k)}: mask values {values[:8]} outside classes 0..{n - 1}{ignore} "
                                f"({n} classes: {', '.join(self.class_names[:12])}){hint}")
        return self

    def to_array_dataset(self, task: str = "binary", size: int | None = None, channels: int = 1) -> ArrayDataset:
        """An `ArrayDataset` of one image size for the trainer and evaluation.

        binary: needs 2 classes; masks become bool (mask > 0). multiclass: masks stay uint8 class
        indices. Pixels labelled `ignore_index` become `valid == False` (they count in no loss and
        no metric) and hold 0 in the mask. Images of different sizes are resized to `size` x `size`
        (bilinear; masks nearest) when `size` is given, else refused. `channels` 1 reduces RGB to
        luminance (exactly when the channels are equal); 3 keeps RGB (grey is repeated).
        """
        self.check()
        if task == "binary" and not self.is_binary:
            raise DataError(f"{self.root}: not a binary task ({self.num_classes} classes: "
                            f"{', '.join(self.class_names[:12])}); use --set task=multiclass "
                            f"--set model.classes={self.num_classes}")
        if task == "multiclass" and self.num_classes > 255:
            raise DataError(f"{self.root}: {self.num_classes} classes; unetlab stores class indices as uint8 (< 256)")
        if not self.ids:
            raise DataError(f"{self.root}: no samples; training needs at least one image")
        if channels not in (1, 3):
            raise DataError(f"{self.root}: {channels} input channels; the trainer reads grey (1) or RGB (3)")
        sizes = self.sizes()
        resize = len(set(sizes)) > 1
        if resize and size is None:
            other = next(k for k, s in enumerate(sizes) if s != sizes[0])
            raise DataError(f"{self._where(other, 'image')}: image sizes differ ({sizes[other][1]}x{sizes[other][0]} "
                            f"vs {sizes[0][1]}x{sizes[0][0]} of '{self.ids[0]}', {len(set(sizes))} sizes in all); "
                            "use --set data.sizing=resize to bring every image to data.input_size")
        images, masks, valids = [], [], []
        for k, (image, mask) in enumerate(zip(self.images, self.masks)):
            image = _grey(image, self._where(k, "image")) if channels == 1 else _rgb(image, self._where(k, "image"))
            valid = np.ones(mask.shape, bool) if self.ignore_index is None else mask != self.ignore_index
            labels = ((mask > 0) & valid) if task == "binary" else np.where(valid, mask, 0).astype(np.uint8)
            if resize:
                image = _resize(image, size, Image.BILINEAR)  # type: ignore[arg-type]
                valid = _resize(valid.astype(np.uint8), size, Image.NEAREST) > 0  # type: ignore[arg-type]
                resized = _resize(labels.astype(np.uint8), size, Image.NEAREST)  # type: ignore[arg-type]
                labels = resized > 0 if task == "binary" else resized
            images.append(image)
            masks.append(labels)
            valids.append(valid)
        depths = {i: float(self.meta[i]["depth"]) for i in self.ids if "depth" in self.meta.get(i, {})}
        valid_all = np.stack(valids)
        return ArrayDataset(ids=list(self.ids), images=np.stack(images), masks=np.stack(masks), depths=depths,
                            root=self.root, valid=None if valid_all.all() else valid_all,
                            class_names=list(self.class_names),
                            palette=None if self.palette is None else list(self.palette))


def _resize(array: np.ndarray, size: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize((size, size), resample))


def _rgb(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise DataError(f"{where}: {image.shape[-1]} channels; RGB input needs 1, 3 or 4 channels")


def _grey(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    if image.shape[-1] in (3, 4):
        rgb = image[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        weights = np.array([299, 587, 114], dtype=np.uint32)  # ITU-R 601-2, as Pillow's convert("L")
        return ((rgb.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)
    raise DataError(f"{where}: image has {image.shape[-1]} channels; a ArrayDataset holds grey images: "
                    "select the band(s) to use first")


def harmonise_channels(images: list[np.ndarray], paths: list[Path]) -> list[np.ndarray]:
    """Make every image the same channel count: grey among RGB images is repeated to RGB.

    Any other mix (e.g. 3-band and 4-band TIFFs) is an error naming the first odd file.
    """
    counts = [1 if image.ndim == 2 else image.shape[-1] for image in images]
    kinds = sorted(set(counts))
    if len(kinds) <= 1:
        return images
    if kinds == [1, 3]:
        return [np.repeat(im[..., None], 3, axis=-1) if im.ndim == 2 else im for im in images]
    first = counts[0]
    odd = next(k for k, c in enumerate(counts) if c != first)
    raise DataError(f"{paths[odd]}: image has {counts[odd]} channel(s), {paths[0].name} has {first}; "
                    "all images of a data set need the same channels (or pass channels=...)")


def infer_class_names(masks: list[np.ndarray], ignore_index: int | None) -> list[str]:
    """Classes 0..max of the masks (ignore excluded); a set that looks like {0, k}, k > 1, is binary."""
    values: set[int] = set()
    for mask in masks:
        values.update(int(v) for v in np.unique(mask))
    values.discard(ignore_index)  # type: ignore[arg-type]
    if not values or values <= {0, 1} or (len(values) == 2 and 0 in values and max(values) > 1
                                          and max(values) in (255, 65535)):
        return list(BINARY_CLASSES)
    return [f"class_{k}" for k in range(max(values) + 1)]
