"""`inspect_dataset`: what is in a data set before training, with every problem found in one pass.

The readers (`unetlab.data.formats`) raise on the first bad file; this module does not. For the
formats that pair image and mask files (`registry.LAYOUTS`: `tgs`, `folders`) it asks the format
for its `PairLayout` (folders, suffixes, decoders), lists the folders as the reader does and
decodes every file on its own, so one run lists every orphan mask, image without mask, duplicated
stem, corrupt file and size mismatch. Other formats go through their reader: a `DataError` there
becomes one fatal problem.

Then it summarises what is readable: counts, image sizes and modes, the mask values (as stored and
as class indices after the format's mapping, e.g. TGS's `binary_rule`); masks the reader would
refuse (`formats/labels.py`: lossy files, values the binary rule does not take) are fatal problems, pixel share per class, empty
masks and foreground coverage, per-channel mean/std (`stats.RunningMoments`, [0, 1] units).
`print_report` renders rich tables; with `out_dir`, `samples.png` (image/mask pairs, empty and
non-empty mixed) and `inspection.json` (every number and problem) are written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.table import Table

from unetlab.data.formats.layout import FolderScan, PairLayout
from unetlab.data.formats.registry import format_options, pair_layout, read_dataset, resolve_format
from unetlab.data.formats.samples import infer_class_names
from unetlab.data.stats import RunningMoments
from unetlab.errors import DataError

SEVERITIES = ("fatal", "warning")
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
COVERAGE_BINS = ((0.0, 0.01, "(0, 1%]"), (0.01, 0.1, "(1, 10%]"), (0.1, 0.25, "(10, 25%]"),
                 (0.25, 0.5, "(25, 50%]"), (0.5, 0.75, "(50, 75%]"), (0.75, 1.0, "(75, 100%]"))
GRID_SAMPLES = 12
SHOWN_PROBLEMS = 40


@dataclass
class Problem:
    severity: str  # "fatal" (the reader or training would fail) | "warning"
    message: str  # `file: what; fix`
    kind: str = ""  # short tag: orphan-mask, missing-mask, duplicate, unreadable, size, values, ...

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        self.message = " ".join(self.message.split())  # one line, always


@dataclass
class InspectionReport:
    root: str
    format: str
    options: dict[str, Any] = field(default_factory=dict)
    num_images: int = 0  # image files found (readable or not)
    num_masks: int = 0  # mask files (or train.csv rows) found
    num_pairs: int = 0  # image + mask both readable and of the same size
    unmatched_images: list[str] = field(default_factory=list)  # images without a mask
    orphan_masks: list[str] = field(default_factory=list)  # masks without an image
    duplicate_stems: list[str] = field(default_factory=list)  # files whose stem was already taken
    unreadable: list[str] = field(default_factory=list)  # files that could not be decoded
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> images, most common first
    image_modes: dict[str, int] = field(default_factory=dict)  # "RGB 8-bit", "grey 16-bit", ... -> images
    mask_modes: dict[str, int] = field(default_factory=dict)
    mask_values: dict[int, int] = field(default_factory=dict)  # stored value -> pixels
    mask_value_sets: dict[str, int] = field(default_factory=dict)  # "0,65535" -> masks holding exactly those
    class_names: list[str] = field(default_factory=list)
    ignore_index: int | None = None
    class_pixels: dict[int, int] = field(default_factory=dict)  # class index (after mapping) -> pixels
    class_share: dict[int, float] = field(default_factory=dict)  # of labelled pixels
    empty_masks: int = 0  # masks with no labelled pixel outside class 0
    empty_share: float = 0.0
    coverage_quantiles: dict[str, float] = field(default_factory=dict)  # over all masks
    coverage_quantiles_nonempty: dict[str, float] = field(default_factory=dict)
    coverage_bins: dict[str, int] = field(default_factory=dict)
    channels: int | None = None
    mean: list[float] = field(default_factory=list)  # per channel, [0, 1] units
    std: list[float] = field(default_factory=list)
    pixels_per_channel: int = 0
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # what was written: {"samples": ..., "json": ...}

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "fatal"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.fatal

    def summary(self) -> str:
        """One line: 'N fatal problem(s); first: ...' (or 'no fatal problems')."""
        fatal = self.fatal
        if not fatal:
            return f"no fatal problems ({len(self.warnings)} warning(s))"
        return f"{len(fatal)} fatal problem(s); first: {fatal[0].message}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("mask_values", "class_pixels", "class_share"):
            data[key] = {str(k): v for k, v in data[key].items()}
        data["num_fatal"] = len(self.fatal)
        data["num_warnings"] = len(self.warnings)
        return data


# ----------------------------------------------------------------------------- the accumulator


class _Collector:
    """Streams decoded files into the report's numbers; keeps only what the sample grid needs."""

    def __init__(self, report: InspectionReport) -> None:
        self.report = report
        self.sizes: Counter[str] = Counter()
        self.image_modes: Counter[str] = Counter()
        self.mask_modes: Counter[str] = Counter()
        self.values: Counter[int] = Counter()
        self.value_sets: Counter[str] = Counter()
        self.mapped: Counter[int] = Counter()
        self.mapped_files: dict[tuple[int, ...], list[str]] = {}  # distinct class values -> mask files
        self.coverages: list[float] = []
        self.moments: dict[int, RunningMoments] = {}
        self.moment_images: Counter[int] = Counter()
        self.pairs: list[tuple[str, bool, Callable[[], tuple[np.ndarray, np.ndarray]]]] = []
        self.refused_masks: dict[str, list[str]] = {}  # kind ("lossy", "values") -> the reader's messages

    def problem(self, severity: str, message: str, kind: str = "") -> None:
        self.report.problems.append(Problem(severity, message, kind))

    def image(self, image: np.ndarray, mode: str) -> None:
        self.sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
        self.image_modes[mode] += 1
        channels = 1 if image.ndim == 2 else image.shape[-1]
        self.moments.setdefault(channels, RunningMoments(channels)).update(image)
        self.moment_images[channels] += 1

    def mask(self, stored_values: Counter[int], mapped: np.ndarray, mode: str, where: str,
             ignore_index: int | None) -> bool:
        """Add one mask (stored value histogram + class indices); returns True when it is empty."""
        self.mask_modes[mode] += 1
        self.values.update(stored_values)
        self.value_sets[",".join(str(v) for v in sorted(stored_values))] += 1
        counts = _value_counts(mapped)
        self.mapped.update(counts)
        self.mapped_files.setdefault(tuple(sorted(counts)), []).append(where)
        labelled = sum(n for v, n in counts.items() if v != ignore_index)
        foreground = sum(n for v, n in counts.items() if v not in (0, ignore_index))
        coverage = foreground / labelled if labelled else 0.0
        self.coverages.append(coverage)
        return foreground == 0


def _value_counts(array: np.ndarray) -> Counter[int]:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.uint8:
        counts = np.bincount(array.ravel(), minlength=256)
        return Counter({int(v): int(counts[v]) for v in np.flatnonzero(counts)})
    values, counts = np.unique(array, return_counts=True)
    return Counter({int(v): int(n) for v, n in zip(values, counts)})


def _mode_label(image: Any) -> str:
    """A PIL image's storage: grey / RGB / palette ..., with the bit depth."""
    mode = image.mode
    if mode == "1":
        return "bilevel 1-bit"
    if mode == "L":
        return "grey 8-bit"
    if mode.startswith("I;16") or mode == "I":
        return "grey 16-bit" if mode.startswith("I;16") else "grey 32-bit"
    if mode == "F":
        return "grey float"
    names = {"LA": "grey+alpha 8-bit", "RGB": "RGB 8-bit", "RGBA": "RGBA 8-bit", "P": "palette 8-bit",
             "PA": "palette+alpha", "CMYK": "CMYK 8-bit", "YCbCr": "YCbCr 8-bit"}
    return names.get(mode, mode)


def _array_mode(array: np.ndarray) -> str:
    channels = 1 if array.ndim == 2 else array.shape[-1]
    kind = {1: "grey", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    bits = "float" if array.dtype.kind == "f" else f"{array.dtype.itemsize * 8}-bit"
    return f"{kind} {bits}"


def _file_mode(path: Path) -> str:
    """Mode of a file from its header (cheap); TIFFs that Pillow cannot parse by their array."""
    from PIL import Image

    from unetlab.data.io import _is_tiff, _read_tiff

    try:
        with Image.open(path) as image:
            label = _mode_label(image)
            if image.mode == "RGB":  # grey stored as RGB (TGS) is worth telling apart
                array = np.asarray(image)
                if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
                    label = "RGB 8-bit (grey)"
            return label
    except Exception:
        if _is_tiff(path):
            return "TIFF " + _array_mode(_read_tiff(path))
        raise


def _mask_mode(path: Path, values: np.ndarray) -> str:
    """Mode of a mask file from its header; TIFFs that Pillow cannot parse by their array."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _mode_label(image)
    except Exception:  # noqa: BLE001 - a TIFF read by tifffile
        return "TIFF " + _array_mode(values)


def _error_text(exc: BaseException, path: Path) -> str:
    text = str(exc) if isinstance(exc, DataError) else (
        f"{path}: cannot read ({exc.__class__.__name__}: {exc}); replace or remove the file")
    return text


# ----------------------------------------------------------------------------- walking a format's files


def _taken(col: _Collector, scan: FolderScan) -> dict[str, Path]:
    """The files a reader takes from `scan`; each file it refuses becomes a fatal problem."""
    for refused in scan.refused:
        if refused.kind == "duplicate":
            col.report.duplicate_stems.append(str(refused.path))
        col.problem("fatal", refused.message, refused.kind)
    return scan.files


def _mask_sources(col: _Collector, layout: PairLayout
                  ) -> tuple[dict[str, Path] | None, dict[str, Callable[[tuple[int, int]], np.ndarray]] | None]:
    """Mask files by id, else (no mask folder) the mask table's rows by id; a problem when there is neither."""
    if layout.mask_dir.is_dir():
        scan = layout.scan_masks()
        masks = _taken(col, scan)
        col.report.num_masks = len(masks) + len(scan.duplicates())
        return masks, None
    if layout.mask_table is not None and layout.read_table is not None and layout.mask_table.is_file():
        try:
            rows = layout.read_table(layout.mask_table)
        except DataError as exc:
            col.problem("fatal", str(exc), "unreadable")
            rows = {}
        col.report.num_masks = len(rows)
        return None, rows
    col.problem("fatal", layout.missing_masks, "missing-mask")
    return None, None


def _pairing(col: _Collector, layout: PairLayout, images: dict[str, Path], masks: dict[str, Path] | None,
             rows: dict | None) -> set[str]:
    """Orphan masks (or table rows) and images without a mask as problems; the ids that have a mask."""
    report = col.report
    if masks is not None:
        for stem in sorted(set(masks) - set(images)):
            report.orphan_masks.append(str(masks[stem]))
            col.problem("fatal", f"{masks[stem]}: mask without its image (id '{stem}' not in {layout.image_dir}); "
                                 "add the image, remove the mask or check the suffixes", "orphan-mask")
    elif rows is not None:
        extra = sorted(set(rows) - set(images))
        if extra:
            report.orphan_masks.extend(f"{layout.mask_table}#{i}" for i in extra)
            col.problem("warning", f"{layout.mask_table}: {len(extra)} row(s) without an image in {layout.image_dir} "
                                   f"(first id '{extra[0]}'); the reader ignores them: add the images or drop the "
                                   "rows", "orphan-mask")
    mask_ids = set(masks if masks is not None else rows or {})
    for stem in sorted(set(images) - mask_ids):
        report.unmatched_images.append(str(images[stem]))
        where = f"a row in {layout.mask_table}" if rows is not None else (
            f"{layout.mask_dir}/{stem}{layout.mask_suffix}.png" if masks is not None else "a mask")
        col.problem("fatal", f"{images[stem]}: image without its mask (expected {where}); add the mask or "
                             "remove the image", "missing-mask")
    return mask_ids


def _decode_images(col: _Collector, layout: PairLayout, images: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """Decode every image into the numbers; (H, W) by id of those that decode; size problems."""
    decoded: dict[str, tuple[int, int]] = {}
    for stem, path in images.items():
        try:
            image = layout.read_image(path)
            mode = _file_mode(path)
        except Exception as exc:  # noqa: BLE001 - every decoder failure is a problem to list
            col.report.unreadable.append(str(path))
            col.problem("fatal", _error_text(exc, path), "unreadable")
            continue
        col.image(image, mode)
        decoded[stem] = image.shape[:2]
    common = Counter(decoded.values()).most_common(1)[0][0] if decoded else None
    if layout.one_size and common is not None:
        for stem, shape in decoded.items():
            if shape != common:
                col.problem("fatal", f"{images[stem]}: size {shape[1]}x{shape[0]} differs from the common "
                                     f"{common[1]}x{common[0]}; this layout needs one image size: resize or "
                                     "remove the image", "size")
    return decoded


def _decode_mask(col: _Collector, layout: PairLayout, stem: str, path: Path | None, rows: dict | None,
                 shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, str, str] | None:
    """(values as stored, class indices, mode, where) of one mask; None (and a problem) when it cannot be read."""
    if path is not None:
        try:
            values, classes = layout.read_mask(path)
        except Exception as exc:  # noqa: BLE001
            col.report.unreadable.append(str(path))
            col.problem("fatal", _error_text(exc, path), "unreadable")
            return None
        refused = layout.mask_problem(path, values) if layout.mask_problem is not None else None
        if refused is not None:  # the reader's own check: counted here, reported once per kind in _finish
            col.refused_masks.setdefault(refused[0], []).append(refused[1])
        return values, classes, _mask_mode(path, values), str(path)
    if shape is None:
        return None  # a row needs its image's size to be decoded
    where = f"{layout.mask_table} row '{stem}'"
    try:
        values = rows[stem](shape).astype(np.uint8)  # type: ignore[index]
    except Exception as exc:  # noqa: BLE001
        col.report.unreadable.append(where)
        col.problem("fatal", str(exc) if isinstance(exc, DataError) else
                    f"{where}: cannot decode the run-length mask ({exc}); fix or remove the row", "unreadable")
        return None
    return values, values, f"{layout.mask_table.name} run-length", where  # type: ignore[union-attr]


def _walk_layout(col: _Collector, layout: PairLayout) -> None:
    """Decode every image and mask file of a paired layout; record numbers and problems; keep readable pairs."""
    report = col.report
    report.class_names = list(layout.class_names or [])
    report.ignore_index = layout.ignore_index
    if not layout.image_dir.is_dir():
        raise DataError(f"{layout.image_dir}: image folder not found; check the path or pass the right folder "
                        "name (--set-option images=NAME)")
    scan = layout.scan_images()
    images = _taken(col, scan)
    report.num_images = len(images) + len(scan.duplicates())
    if not images:
        col.problem("fatal", f"{layout.image_dir}: no image files ({', '.join(sorted(layout.suffixes))}); the "
                             "folder is empty: put the images there or point at the right folder", "empty")
    masks, rows = _mask_sources(col, layout)
    mask_ids = _pairing(col, layout, images, masks, rows)
    decoded = _decode_images(col, layout, images)
    common = Counter(decoded.values()).most_common(1)[0][0] if decoded else None
    for stem in sorted(mask_ids):
        mask_path = masks[stem] if masks is not None else None
        mask = _decode_mask(col, layout, stem, mask_path, rows, decoded.get(stem))
        if mask is None:
            continue
        values, classes, mode, where = mask
        if stem in decoded and values.shape != decoded[stem]:
            col.problem("fatal", f"{where}: mask size {values.shape[1]}x{values.shape[0]} differs from its image's "
                                 f"{decoded[stem][1]}x{decoded[stem][0]}; resize or replace the mask", "size")
            continue
        empty = col.mask(_value_counts(values), classes, mode, where, layout.ignore_index)
        if stem in decoded and (not layout.one_size or decoded[stem] == common):
            col.pairs.append((stem, empty, _loader(layout, images[stem], mask_path, rows, stem, decoded[stem])))
    report.num_pairs = len(col.pairs)
    _mixed_images(col, layout)


def _loader(layout: PairLayout, image_path: Path, mask_path: Path | None, rows: dict | None, stem: str,
            shape: tuple[int, int]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        image = layout.read_image(image_path)
        mask = layout.read_mask(mask_path)[1] if mask_path is not None else rows[stem](shape)  # type: ignore[index]
        return image, mask
    return load


def _mixed_images(col: _Collector, layout: PairLayout) -> None:
    """Images of several channel counts, or of several sizes where the layout allows that."""
    kinds = sorted(col.moments)
    if len(kinds) > 1:
        if kinds == [1, 3]:
            col.problem("warning", f"{layout.image_dir}: {col.moment_images[1]} grey image(s) among "
                                   f"{col.moment_images[3]} RGB ones; the reader repeats grey to RGB "
                                   "(or pass --set-option channels=1 or 3)", "channels")
        else:
            col.problem("fatal", f"{layout.image_dir}: images with {', '.join(map(str, kinds))} channels; all images "
                                 "of a data set need the same channels: convert them or pass --set-option "
                                 "channels=N", "channels")
    if not layout.one_size and len(col.sizes) > 1:
        col.problem("warning", f"{layout.image_dir}: {len(col.sizes)} image sizes; binary training (ArrayDataset) "
                               "needs one size: resize or crop the images first", "size")


def _walk_reader(col: _Collector, fmt: str, root: Path, options: dict[str, Any]) -> None:
    """Formats without a folder walk: read with the reader; its first DataError is one fatal problem."""
    try:
        samples = read_dataset(fmt, root, **options)
    except DataError as exc:
        col.problem("fatal", str(exc), "reader")
        return
    report = col.report
    report.class_names = list(samples.class_names)
    report.ignore_index = samples.ignore_index
    report.num_images = report.num_masks = len(samples)
    for k, (sample_id, image, mask) in enumerate(zip(samples.ids, samples.images, samples.masks)):
        col.image(image, _array_mode(image))
        where = samples.meta.get(sample_id, {}).get("mask") or f"sample '{sample_id}'"
        empty = col.mask(_value_counts(mask), mask, _array_mode(mask), str(where), samples.ignore_index)
        col.pairs.append((sample_id, empty, lambda image=image, mask=mask: (image, mask)))
    report.num_pairs = len(col.pairs)


# ----------------------------------------------------------------------------- the whole inspection


def inspect_dataset(root: str | Path, format: str = "tgs", options: dict[str, Any] | None = None,
                    num_classes: int | None = None, out_dir: str | Path | None = None,
                    console: Any = None) -> InspectionReport:
    """Inspect the data set at `root` read as `format` (see `unetlab.data.formats.FORMATS`).

    Every file problem found is collected (`report.problems`, severity "fatal" or "warning"), never
    raised; only an unknown format/option or a missing root folder raise `DataError`. `num_classes`
    makes mask values >= num_classes (other than the ignore index) fatal. The report is printed to
    `console` (a rich Console; a new one on stdout by default; pass `console=False` for silence).
    With `out_dir`, `samples.png` and `inspection.json` are written there.
    """
    root = Path(root)
    key, options = resolve_format(format, options)
    if num_classes is not None and num_classes < 1:
        raise DataError(f"--classes {num_classes}: the number of classes must be at least 1")
    if not root.exists():
        raise DataError(f"{root}: data folder not found; check the path")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass the data set's top folder")

    report = InspectionReport(root=str(root), format=key, options=options)
    col = _Collector(report)
    layout = pair_layout(key, root, **options)
    if layout is not None:
        _walk_layout(col, layout)
    else:
        _walk_reader(col, key, root, options)
    _finish(col, key, num_classes, nonzero_is_foreground=layout is not None and layout.nonzero_is_foreground)
    if console is not False:
        print_report(report, console)
    if out_dir is not None:
        _write_outputs(col, Path(out_dir))
        if console is not False:
            _console(console).print(f"wrote {report.files.get('samples', '(no sample figure)')} and "
                                    f"{report.files['json']}")
    return report


def _finish(col: _Collector, fmt: str, num_classes: int | None, nonzero_is_foreground: bool = False) -> None:
    report = col.report
    report.image_sizes = dict(col.sizes.most_common())
    report.image_modes = dict(col.image_modes.most_common())
    report.mask_modes = dict(col.mask_modes.most_common())
    report.mask_values = dict(sorted(col.values.items()))
    report.mask_value_sets = dict(col.value_sets.most_common())
    if not report.class_names and col.mapped:
        report.class_names = infer_class_names([np.array(sorted(col.mapped))], report.ignore_index)
    ignore = report.ignore_index
    report.class_pixels = {int(v): int(n) for v, n in sorted(col.mapped.items())}
    labelled = sum(n for v, n in col.mapped.items() if v != ignore)
    report.class_share = {v: (n / labelled if labelled else 0.0) for v, n in report.class_pixels.items()
                          if v != ignore}

    coverages = np.asarray(col.coverages, dtype=np.float64)
    if coverages.size:
        report.empty_masks = int(np.count_nonzero(coverages == 0))
        report.empty_share = report.empty_masks / coverages.size
        report.coverage_quantiles = {f"q{int(q * 100):02d}": float(np.quantile(coverages, q)) for q in QUANTILES}
        nonempty = coverages[coverages > 0]
        if nonempty.size:
            report.coverage_quantiles_nonempty = {f"q{int(q * 100):02d}": float(np.quantile(nonempty, q))
                                                  for q in QUANTILES}
        bins = {"empty": report.empty_masks}
        for low, high, label in COVERAGE_BINS:
            bins[label] = int(np.count_nonzero((coverages > low) & (coverages <= high)))
        report.coverage_bins = bins

    if col.moments:
        channels, _ = max(col.moment_images.items(), key=lambda item: item[1])
        moments = col.moments[channels]
        report.channels = channels
        report.mean = moments.mean.tolist()
        report.std = moments.std.tolist()
        report.pixels_per_channel = moments.count

    # --- mask values: what the reader refuses, the 0/255 warning and values beyond the classes ---
    for kind, messages in col.refused_masks.items():
        more = f" ({len(messages)} such masks in all)" if len(messages) > 1 else ""
        col.problem("fatal", messages[0] + more, kind)
    stored = set(col.values)
    if nonzero_is_foreground and stored - {0}:
        high = sorted(stored - {0})
        if set(high) <= {255, 65535}:
            which = " and ".join(f"0/{v}" for v in high)
            col.problem("warning", f"{report.root}: masks are {which} (seen: "
                                   f"{', '.join('{' + s.replace(',', ', ') + '}' for s in report.mask_value_sets)});"
                                   f" binarised with > 0 by the {fmt} reader; for index masks set a mapping "
                                   "(e.g. --format folders with class indices)", "values")
        elif len(high) > 1 and "values" not in col.refused_masks:  # else refused above (binary_rule=strict)
            col.problem("warning", f"{report.root}: masks hold {len(high)} non-zero values ({high[:8]}); the "
                                   f"{fmt} reader makes every value > 0 foreground: anti-aliased or resampled "
                                   "masks? Re-export them as 0/255, or read index masks with --format folders",
                        "values")
    n = num_classes if num_classes is not None else (len(report.class_names) or None)
    if n is not None:
        bad_values: set[int] = set()
        bad_files: list[str] = []
        for values, files in col.mapped_files.items():
            bad = [v for v in values if v >= n and v != ignore]
            if bad:
                bad_values.update(bad)
                bad_files.extend(files)
        if bad_files:
            shown = sorted(bad_values)
            binary = set(shown) <= {255, 65535} and n == 2
            nonzero_option = "binary_rule" in format_options(fmt)
            fix = ("read 0/255 masks with --set-option binary_rule=nonzero" if binary and nonzero_option else
                   "remap the masks, pass the right --classes" + (", or set ignore_index" if ignore is None else ""))
            source = "--classes" if num_classes is not None else "the format's classes"
            col.problem("fatal", f"{bad_files[0]}: mask values {shown[:8]} exceed {n} classes (0..{n - 1} from "
                                 f"{source}{f', ignore {ignore}' if ignore is not None else ''}) in "
                                 f"{len(bad_files)} mask(s); fix: {fix}", "values")
    if report.num_pairs and report.empty_share == 1.0:
        col.problem("warning", f"{report.root}: every mask is empty (all background); a model learns nothing "
                               "from them: check the mask files or the mapping", "values")


# ----------------------------------------------------------------------------- output


def _console(console: Any):
    if console is None:
        from rich.console import Console

        return Console()
    return console


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def print_report(report: InspectionReport, console: Any = None) -> None:
    """Rich tables: overview, sizes and modes, mask values, classes, coverage, problems."""
    console = _console(console)
    console.print(_overview_table(report))
    console.print(_files_table(report))
    for table in _value_tables(report):
        console.print(table)
    console.print(_class_table(report))
    for table in _coverage_tables(report):
        console.print(table)
    if report.problems:
        console.print(_problems_table(report))
    else:
        console.print("no problems found")


def _overview_table(report: InspectionReport):
    overview = Table(title=f"{report.root} ({report.format})", show_header=False, title_justify="left")
    overview.add_column("what")
    overview.add_column("value", justify="right")
    rows = [("images", report.num_images), ("masks", report.num_masks), ("readable pairs", report.num_pairs),
            ("images without mask", len(report.unmatched_images)), ("masks without image", len(report.orphan_masks)),
            ("duplicated stems", len(report.duplicate_stems)), ("unreadable files", len(report.unreadable)),
            ("empty masks", f"{report.empty_masks} ({_pct(report.empty_share)})")]
    if report.mean:
        rows.append((f"mean ({report.channels} ch, [0, 1])", ", ".join(f"{v:.4f}" for v in report.mean)))
        rows.append((f"std ({report.channels} ch, [0, 1])", ", ".join(f"{v:.4f}" for v in report.std)))
    for name, value in rows:
        overview.add_row(name, str(value))
    return overview


def _files_table(report: InspectionReport):
    files = Table(title="Images and masks", title_justify="left")
    files.add_column("image size (WxH)")
    files.add_column("images", justify="right")
    files.add_column("image mode")
    files.add_column("images", justify="right")
    files.add_column("mask mode")
    files.add_column("masks", justify="right")
    sizes = list(report.image_sizes.items())
    top = sizes[:8]
    if len(sizes) > 8:
        top.append((f"{len(sizes) - 8} other sizes", sum(n for _, n in sizes[8:])))
    modes, mask_modes = list(report.image_modes.items()), list(report.mask_modes.items())
    for k in range(max(len(top), len(modes), len(mask_modes))):
        cells = []
        for items in (top, modes, mask_modes):
            cells += [str(items[k][0]), str(items[k][1])] if k < len(items) else ["", ""]
        files.add_row(*cells)
    return files


def _value_tables(report: InspectionReport) -> list:
    values = Table(title="Mask values as stored", title_justify="left")
    values.add_column("value", justify="right")
    values.add_column("pixels", justify="right")
    values.add_column("share", justify="right")
    total = sum(report.mask_values.values()) or 1
    items = list(report.mask_values.items())
    for value, count in items[:12]:
        values.add_row(str(value), f"{count:,}", _pct(count / total))
    if len(items) > 12:
        values.add_row(f"{len(items) - 12} more", f"{sum(n for _, n in items[12:]):,}", "")
    sets = Table(title="Distinct values per mask", title_justify="left")
    sets.add_column("values")
    sets.add_column("masks", justify="right")
    for value_set, count in list(report.mask_value_sets.items())[:8]:
        sets.add_row("{" + value_set.replace(",", ", ") + "}", str(count))
    return [values, sets]


def _class_table(report: InspectionReport):
    classes = Table(title="Classes (after the format's mapping)", title_justify="left")
    classes.add_column("class", justify="right")
    classes.add_column("name")
    classes.add_column("pixels", justify="right")
    classes.add_column("share", justify="right")
    for value, count in list(report.class_pixels.items())[:24]:
        name = "(ignored)" if value == report.ignore_index else (
            report.class_names[value] if 0 <= value < len(report.class_names) else "(beyond the classes)")
        share = report.class_share.get(value)
        classes.add_row(str(value), name, f"{count:,}", _pct(share) if share is not None else "")
    return classes


def _coverage_tables(report: InspectionReport) -> list:
    if not report.coverage_quantiles:
        return []
    coverage = Table(title="Foreground coverage per mask", title_justify="left")
    coverage.add_column("masks")
    for q in report.coverage_quantiles:
        coverage.add_column(q, justify="right")
    coverage.add_row("all", *[_pct(v) for v in report.coverage_quantiles.values()])
    if report.coverage_quantiles_nonempty:
        coverage.add_row("non-empty", *[_pct(v) for v in report.coverage_quantiles_nonempty.values()])
    bins = Table(title="Coverage bins", title_justify="left")
    for label in report.coverage_bins:
        bins.add_column(label, justify="right")
    bins.add_row(*[str(v) for v in report.coverage_bins.values()])
    return [coverage, bins]


def _problems_table(report: InspectionReport):
    problems = Table(title=f"Problems: {len(report.fatal)} fatal, {len(report.warnings)} warning(s)",
                     title_justify="left")
    problems.add_column("severity")
    problems.add_column("problem")
    ordered = report.fatal + report.warnings
    for p in ordered[:SHOWN_PROBLEMS]:
        problems.add_row("[bold red]fatal[/]" if p.severity == "fatal" else "[yellow]warning[/]", p.message)
    if len(ordered) > SHOWN_PROBLEMS:
        problems.add_row("", f"... {len(ordered) - SHOWN_PROBLEMS} more (all of them in inspection.json with --out)")
    return problems


def _grid_choice(pairs: list, count: int = GRID_SAMPLES) -> list:
    """Up to `count` pairs, half empty and half not when both exist, spread evenly over the data."""
    empty = [p for p in pairs if p[1]]
    full = [p for p in pairs if not p[1]]
    want_full = min(len(full), max(count // 2, count - len(empty)))
    want_empty = min(len(empty), count - want_full)

    def spread(items: list, n: int) -> list:
        if n <= 0:
            return []
        picks = np.linspace(0, len(items) - 1, n).round().astype(int)
        return [items[i] for i in sorted(set(picks.tolist()))]

    return spread(full, want_full) + spread(empty, want_empty)


def _display_image(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
        return image[..., :3] if image.shape[-1] > 3 else image[..., 0]
    return image


def _write_outputs(col: _Collector, out_dir: Path) -> None:
    from unetlab.files import atomic_write_text
    from unetlab.viz import save_sample_grid

    report = col.report
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = _grid_choice(col.pairs)
    if chosen:
        images, masks, labels = [], [], []
        for sample_id, empty, load in chosen:
            try:
                image, mask = load()
            except Exception:  # noqa: BLE001 - a file changed under us: leave it out of the figure
                continue
            if report.ignore_index is not None:
                mask = np.where(mask == report.ignore_index, 0, mask)
            images.append(_display_image(image))
            masks.append(mask)
            labels.append(f"{sample_id} {'empty' if empty else 'mask'}")
        if images:
            report.files["samples"] = str(save_sample_grid(out_dir / "samples.png", images, masks, labels=labels))
    report.files["json"] = str(out_dir / "inspection.json")
    atomic_write_text(out_dir / "inspection.json", json.dumps(report.to_dict(), indent=2) + "\n")
