"""Dataset formats by name: `read_dataset("camvid", root, split="val")` -> SegmentationSamples."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import numpy as np

from unetlab.data.formats.camvid import read_camvid
from unetlab.data.formats.folders import read_folders
from unetlab.data.formats.isbi import read_isbi
from unetlab.data.formats.oxford_pet import read_oxford_pet
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.data.dataset import ArrayDataset
from unetlab.data.formats.tgs import load_tgs
from unetlab.errors import ConfigError, DataError


def read_tgs(root: str | Path) -> SegmentationSamples:
    """TGS Salt (`load_tgs`) as SegmentationSamples: grey images, masks {0, 1}, depths in meta."""
    data = load_tgs(root)
    meta = {i: ({"depth": data.depths[i]} if i in data.depths else {}) for i in data.ids}
    return SegmentationSamples(ids=list(data.ids), images=[image for image in data.images],
                               masks=[mask.astype(np.uint8) for mask in data.masks],
                               class_names=["background", "salt"], ignore_index=None,
                               root=Path(root), meta=meta)


FORMATS: dict[str, Callable[..., SegmentationSamples]] = {
    "tgs": read_tgs,
    "folders": read_folders,
    "oxford-pet": read_oxford_pet,
    "camvid": read_camvid,
    "isbi": read_isbi,
}


def format_options(name: str) -> list[str]:
    """The options a format's reader accepts (besides root)."""
    return [p for p in inspect.signature(FORMATS[name]).parameters if p != "root"]


def read_dataset(format: str, root: str | Path, **options) -> SegmentationSamples:
    """Read `root` with the reader registered as `format`; unknown formats and options are refused by name."""
    key = format.strip().lower().replace("_", "-")
    if key not in FORMATS:
        raise DataError(f"format {format!r}: unknown data format; choose one of {', '.join(FORMATS)}")
    accepted = format_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(f"format {key!r}: unknown option(s) {', '.join(unknown)}; accepted: "
                        f"{', '.join(accepted) or 'none'}")
    return FORMATS[key](root, **options)


def load_arrays(format: str, root: str | Path, options: dict | None = None, cache: bool = True,
                size: int | None = None, channels: int = 1, task: str = "binary") -> ArrayDataset:
    """What the trainer, evaluate and the demo read: bool (binary) or class-index masks, a `valid` map where the
    format has an ignore label, images resized to `size` only when their sizes differ.

    With `cache`, files are decoded once into a memory-mapped cache (`unetlab.data.cache`) and later
    runs only map it; without, they are decoded every time.
    """
    if not cache:
        if format.strip().lower() == "tgs" and not options and channels == 1 and task == "binary":
            return load_tgs(root)
        samples = read_dataset(format, root, **(options or {}))
    else:
        from unetlab.data.cache import cached_read_dataset

        samples = cached_read_dataset(format, root, **(options or {}))
    return samples.to_array_dataset(task, size=size, channels=channels)


def load_for_config(config, root: str | Path) -> ArrayDataset:
    """`load_arrays` with a run config's data section and input channels (`unetlab.config.Config`)."""
    data = config.data
    size = data.input_size if data.sizing == "resize" else None
    dataset = load_arrays(data.format, root, data.options, data.cache, size=size, channels=config.model.in_channels,
                          task=config.task)
    if config.task == "multiclass" and dataset.num_classes != config.model.classes:
        raise ConfigError(f"model.classes is {config.model.classes} but {root} has {dataset.num_classes} classes "
                          f"({', '.join(dataset.class_names[:12])}); use --set model.classes={dataset.num_classes}")
    return dataset
