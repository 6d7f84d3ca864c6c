"""Dataset formats by name: the one owner of which formats exist, what options each takes and how a
format is read (`read_dataset`), read through the decode cache (`cached_read_dataset`) and laid out
for `unetlab inspect` (`pair_layout`).

    samples = read_dataset("camvid", root, split="val")   # -> SegmentationSamples
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

from unetlab.data.cache import cached_read
from unetlab.data.dataset import ArrayDataset
from unetlab.data.formats.camvid import read_camvid
from unetlab.data.formats.folders import folders_layout, read_folders
from unetlab.data.formats.isbi import read_isbi
from unetlab.data.formats.labels import check_allow_lossy, parse_binary_rule
from unetlab.data.formats.layout import PairLayout
from unetlab.data.formats.oxford_pet import read_oxford_pet
from unetlab.data.formats.samples import SegmentationSamples
from unetlab.data.formats.tgs import load_tgs, read_tgs, tgs_layout
from unetlab.data.io import pixel_limit
from unetlab.errors import ConfigError, DataError, UnetlabError

FORMATS: dict[str, Callable[..., SegmentationSamples]] = {
    "tgs": read_tgs,
    "folders": read_folders,
    "oxford-pet": read_oxford_pet,
    "camvid": read_camvid,
    "isbi": read_isbi,
}

# Formats whose files `unetlab inspect` walks one by one; each takes its reader's options.
LAYOUTS: dict[str, Callable[..., PairLayout]] = {
    "tgs": tgs_layout,
    "folders": folders_layout,
}


# Option values checked when a format is resolved (config load, inspect), before any file is read.
OPTION_VALUES: dict[str, Callable[[Any, str], Any]] = {
    "binary_rule": parse_binary_rule,  # None (folders: class indices as stored) is the reader's to judge
    "allow_lossy_masks": check_allow_lossy,
}


def format_options(name: str) -> list[str]:
    """The options a format's reader accepts (besides root)."""
    return [p for p in inspect.signature(FORMATS[name]).parameters if p != "root"]


def resolve_format(name: str, options: Mapping[str, Any] | None = None, *, field: str = "format",
                   option_prefix: str = "", error: type[UnetlabError] = DataError) -> tuple[str, dict[str, Any]]:
    """The registered format `name` means ("TGS", "oxford_pet" -> "tgs", "oxford-pet") and its `options`,
    checked against the reader's signature.

    An unknown format or option raises `error` naming it (`field` and `option_prefix` say where it was
    given, e.g. "data.format" and "data.options.") and listing the valid ones.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in FORMATS:
        raise error(f"{field} {name!r}: unknown data format; choose one of {', '.join(FORMATS)}")
    options = dict(options or {})
    accepted = format_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise error(f"{field} {key!r}: unknown option(s) {', '.join(option_prefix + u for u in unknown)}; "
                    f"accepted: {', '.join(accepted) or 'none'}")
    for option, check in OPTION_VALUES.items():
        if options.get(option) is not None:
            try:
                check(options[option], option_prefix + option)
            except DataError as exc:
                raise error(str(exc)) from None
    return key, options


def read_dataset(format: str, root: str | Path, **options) -> SegmentationSamples:
    """Read `root` with the reader registered as `format`; unknown formats and options are refused by name."""
    key, options = resolve_format(format, options)
    return FORMATS[key](root, **options)


def _with_defaults(key: str, options: dict[str, Any]) -> dict[str, Any]:
    """The reader's options with its defaults filled in (`split="train"` and no split are the same read)."""
    params = inspect.signature(FORMATS[key]).parameters
    return {name: options.get(name, param.default) for name, param in params.items()
            if name != "root" and (name in options or param.default is not inspect.Parameter.empty)}


def cached_read_dataset(format: str, root: str | Path, cache_dir: str | Path | None = None,
                        **options) -> SegmentationSamples:
    """`read_dataset(format, root, **options)`, decoded once and then served from a memory-mapped cache
    (`unetlab.data.cache`). Same errors as `read_dataset` for unknown formats and options."""
    key, options = resolve_format(format, options)
    return cached_read(lambda: read_dataset(key, root, **options), root, key, _with_defaults(key, options),
                       cache_dir=cache_dir)


def pair_layout(format: str, root: str | Path, **options) -> PairLayout | None:
    """The files of a format that pairs image and mask files (`LAYOUTS`), None for other formats."""
    key, options = resolve_format(format, options)
    layout = LAYOUTS.get(key)
    return None if layout is None else layout(root, **options)


def load_arrays(format: str, root: str | Path, options: dict | None = None, cache: bool = True,
                size: int | None = None, channels: int = 1, task: str = "binary") -> ArrayDataset:
    """What the trainer, evaluate and the demo read: bool (binary) or class-index masks, a `valid` map where the
    format has an ignore label, images resized to `size` only when their sizes differ.

    With `cache`, files are decoded once into a memory-mapped cache (`unetlab.data.cache`) and later
    runs only map it; without, they are decoded every time.
    """
    key, options = resolve_format(format, options)
    if not cache:
        if key == "tgs" and channels == 1 and task == "binary":
            return load_tgs(root, **options)
        samples = read_dataset(key, root, **options)
    else:
        samples = cached_read_dataset(key, root, **options)
    return samples.to_array_dataset(task, size=size, channels=channels)


def load_for_config(config, root: str | Path) -> ArrayDataset:
    """`load_arrays` with a run config's data section and input channels (`unetlab.config.Config`)."""
    data = config.data
    size = data.input_size if data.sizing == "resize" else None
    with pixel_limit(data.max_pixels):  # every image reader refuses larger images, naming data.max_pixels
        dataset = load_arrays(data.format, root, data.options, data.cache, size=size,
                              channels=config.model.in_channels, task=config.task)
    if config.task == "multiclass" and dataset.num_classes != config.model.classes:
        raise ConfigError(f"model.classes is {config.model.classes} but {root} has {dataset.num_classes} classes "
                          f"({', '.join(dataset.class_names[:12])}); use --set model.classes={dataset.num_classes}")
    return dataset
