"""Salt prediction on SEG-Y volumes (`unetlab predict RUN volume.sgy`): owns reading a volume's
geometry from its trace headers, the amplitude -> 8-bit grey mapping, slice-by-slice prediction in
bounded memory, and the outputs (SEG-Y with the input's headers, NPY, PNG previews, a JSON sidecar).

Geometry (docs/seismic-volumes.md). The file is opened with segyio's `ignore_geometry=True` and every
trace is placed by its own inline and crossline numbers (bytes 189 and 193 unless told otherwise):
sorted by inline or by crossline, unsorted, or with missing traces (gaps, filled with zero amplitude
for the model and left out of the SEG-Y output). A file whose traces share one inline or one
crossline number, or whose positions would fill less than a quarter of their inline x crossline
grid, is a 2-D line: one section of traces in file order. Two traces at one position (prestack data,
or the numbers are at other bytes) is an error.

Memory. An inline or crossline slice is read trace by trace; time slices come from blocks of at most
`block_bytes` of amplitudes (every trace's samples k0..k1). Outputs are memory-mapped files written
slice by slice, so only a slice (or a block) of the volume is ever held.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import segyio

from unetlab.data.io import save_png
from unetlab.errors import ConfigError, DataError, UnetlabError
from unetlab.files import atomic_path, atomic_write_text
from unetlab.inference.predictor import decoding_options, decoding_text
from unetlab.viz import overlay_boundary

SEGY_SUFFIXES = (".sgy", ".segy")
AXES = ("inline", "crossline", "time")
WRITES = ("probability", "mask")
FORMATS = ("segy", "npy")

#: Sample formats segyio decodes (binary header, bytes 3225-3226); other codes are garbage or exotic.
_READABLE_FORMATS = {1: "IBM float", 2: "int32", 3: "int16", 5: "IEEE float", 6: "IEEE double", 8: "int8",
                     9: "int64", 10: "uint32", 11: "uint16", 12: "uint64", 16: "uint8"}
_IEEE_FLOAT = 5
_FORMAT_OFFSET = 3224  # the sample-format code in the file: 2 bytes after the 3200-byte text header + 24
_HEADERS = 3600  # textual (3200) + binary (400) header
_TRACE_HEADER = 240
#: Amplitudes read to estimate a clip percentile: a bounded random sample of whole traces.
_SAMPLE_VALUES = 2_000_000
#: Default bound on the amplitudes held while slicing along time (bytes of float32).
BLOCK_BYTES = 16 << 20
#: Bytes written through the output memory maps before they are dropped and reopened (bounded memory).
_REMAP_BYTES = 32 << 20
#: A grid holding fewer traces than this share of its positions is taken as a 2-D line.
_MIN_FILL = 0.25


def is_segy(path: str | os.PathLike) -> bool:
    """Whether `predict` treats `path` as a SEG-Y volume: by name (.sgy, .segy), so that a wrong file
    so named gets a SEG-Y error rather than an image-decoding one."""
    return Path(path).suffix.lower() in SEGY_SUFFIXES


# ----------------------------------------------------------------------------- opening


def _open_error(path: Path, exc: Exception) -> DataError:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    size = path.stat().st_size
    if size < _HEADERS + _TRACE_HEADER:
        why = f"only {size} bytes, shorter than the 3600-byte SEG-Y headers and one trace"
    elif "no data traces" in reason or "trace index out of range" in reason:
        why = ("no whole trace fits after the 3600-byte headers (not SEG-Y, or a wrong sample count in the "
               "binary header)")
    elif "inconsistent with file size" in reason:
        why = "its size is not the headers plus a whole number of traces (truncated, or traces of varying length)"
    else:
        why = reason
    return DataError(f"{path}: not a readable SEG-Y file: {why}; check that it is a complete SEG-Y file")


def _try_open(path: Path, endian: str) -> tuple[Any, str | None]:
    """(open segyio file, None), or (None, why it is not a SEG-Y file in this byte order)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # segyio warns and guesses on an unknown sample format: we refuse instead
            handle = segyio.open(str(path), "r", ignore_geometry=True, endian=endian)
    except Exception as exc:  # segyio raises RuntimeError, OSError, IndexError, ValueError on bad files
        return None, str(_open_error(path, exc))
    code = int(handle.bin[segyio.BinField.Format])
    if code not in _READABLE_FORMATS:
        handle.close()
        return None, (f"{path}: not a readable SEG-Y file: sample format code {code} in the binary header "
                      f"(readable: {', '.join(f'{k} {v}' for k, v in _READABLE_FORMATS.items())})")
    if len(handle.samples) == 0 or handle.tracecount == 0:
        handle.close()
        return None, f"{path}: not a readable SEG-Y file: {len(handle.samples)} samples x {handle.tracecount} traces"
    return handle, None


def _open_segy(path: Path) -> tuple[Any, str]:
    """A segyio handle and its byte order: big-endian (the standard) first, then little-endian."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file; give the SEG-Y volume itself")
    handle, why = _try_open(path, "big")
    if handle is not None:
        return handle, "big"
    little, _ = _try_open(path, "little")
    if little is not None:
        return little, "little"
    raise DataError(why)


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class SegyGeometry:
    """Where each trace sits: `trace_at[i, j]` is the trace index at inline `inlines[i]`, crossline
    `crosslines[j]` (-1: no trace). A 2-D line has one inline and one crossline per trace (1, 2, ...)."""

    kind: str  # "cube" or "line"
    inlines: np.ndarray
    crosslines: np.ndarray
    samples: np.ndarray  # time or depth of each sample, as segyio reads them
    trace_at: np.ndarray
    note: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.inlines), len(self.crosslines), len(self.samples)

    @property
    def missing(self) -> int:
        return int((self.trace_at < 0).sum())

    def lines(self, axis: str) -> np.ndarray:
        """The numbers naming the slices along `axis`: inline / crossline numbers, or sample times."""
        return {"inline": self.inlines, "crossline": self.crosslines, "time": self.samples}[axis]

    def describe(self) -> dict[str, Any]:
        def span(values: np.ndarray) -> list[float]:
            return [float(values[0]), float(values[-1])] if len(values) else []

        return {"kind": self.kind, "shape": list(self.shape), "inlines": span(self.inlines),
                "crosslines": span(self.crosslines), "samples": span(self.samples),
                "traces": int((self.trace_at >= 0).sum()), "missing_traces": self.missing,
                **({"note": self.note} if self.note else {})}


def _header_numbers(handle: Any, byte: int, what: str) -> np.ndarray:
    try:
        return np.asarray(handle.attributes(byte)[:], dtype=np.int64)
    except RuntimeError as exc:
        raise ConfigError(f"{what} {byte}: not the first byte of a trace-header field; SEG-Y keeps inline "
                          "numbers at byte 189 and crossline numbers at 193") from exc


def _line(handle: Any, inlines: np.ndarray, note: str) -> SegyGeometry:
    number = inlines[:1] if len(inlines) == 1 else np.zeros(1, np.int64)
    count = handle.tracecount
    return SegyGeometry("line", number, np.arange(1, count + 1), np.asarray(handle.samples, np.float64),
                        np.arange(count, dtype=np.int64)[None, :], note)


def read_geometry(handle: Any, path: Path, inline_byte: int = 189, crossline_byte: int = 193) -> SegyGeometry:
    """Place every trace by its header numbers (module docstring: cube, cube with gaps, or 2-D line)."""
    il = _header_numbers(handle, inline_byte, "inline_byte")
    xl = _header_numbers(handle, crossline_byte, "crossline_byte")
    inlines, il_index = np.unique(il, return_inverse=True)
    crosslines, xl_index = np.unique(xl, return_inverse=True)
    if len(inlines) == 1 or len(crosslines) == 1:
        return _line(handle, np.unique(il), "one inline or one crossline number: read as a 2-D line")
    cells = len(inlines) * len(crosslines)
    if handle.tracecount < _MIN_FILL * cells:
        return _line(handle, inlines, f"{handle.tracecount} traces on a {len(inlines)}x{len(crosslines)} grid: "
                                      "too sparse for a cube, read as a 2-D line")
    flat = il_index * len(crosslines) + xl_index
    trace_at = np.full(cells, -1, np.int64)
    trace_at[flat] = np.arange(handle.tracecount)
    placed = trace_at[flat]
    if not np.array_equal(placed, np.arange(handle.tracecount)):
        twin = int(np.flatnonzero(placed != np.arange(handle.tracecount))[0])
        raise DataError(f"{path}: traces {twin} and {int(placed[twin])} are both at inline {il[twin]}, crossline "
                        f"{xl[twin]} (bytes {inline_byte}/{crossline_byte}); unetlab reads post-stack volumes, one "
                        "trace per position: stack the gathers, or give the header bytes of the line numbers")
    return SegyGeometry("cube", inlines, crosslines, np.asarray(handle.samples, np.float64),
                        trace_at.reshape(len(inlines), len(crosslines)))


# ----------------------------------------------------------------------------- reading slices


def samples_per_block(geometry: SegyGeometry, block_bytes: int) -> int:
    """Time slices read (and written) together: every trace's amplitudes of them fit in `block_bytes`."""
    n_il, n_xl, _ = geometry.shape
    return max(1, block_bytes // (4 * n_il * n_xl))


class SegyVolume:
    """An open SEG-Y file with its geometry; a context manager. Reads slices, never the whole volume."""

    def __init__(self, path: str | os.PathLike, inline_byte: int = 189, crossline_byte: int = 193):
        self.path = Path(path)
        self.handle, self.endian = _open_segy(self.path)
        try:
            self.geometry = read_geometry(self.handle, self.path, inline_byte, crossline_byte)
        except BaseException:
            self.handle.close()
            raise
        self.sample_format = int(self.handle.bin[segyio.BinField.Format])
        self.data_start = _HEADERS + 3200 * max(int(self.handle.ext_headers), 0)

    def __enter__(self) -> "SegyVolume":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def _traces(self, trace_at: np.ndarray, samples: slice = slice(None)) -> np.ndarray:
        """Amplitudes (trace_at.shape + samples) as float32; zero where there is no trace (or not finite)."""
        count = len(range(*samples.indices(len(self.geometry.samples))))
        out = np.zeros((*trace_at.shape, count), np.float32)
        for position in zip(*np.nonzero(trace_at >= 0)):  # filled in place: no second copy of a block
            out[position] = self.handle.trace[int(trace_at[position]), samples]
        return np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    def slice(self, axis: str, index: int) -> np.ndarray:
        """One slice as an image (rows, cols): (samples, crosslines) for an inline, (samples, inlines)
        for a crossline (depth down the image, as in a seismic section), (inlines, crosslines) for time."""
        trace_at = self.geometry.trace_at
        if axis == "inline":
            return self._traces(trace_at[index]).T
        if axis == "crossline":
            return self._traces(trace_at[:, index]).T
        return self._traces(trace_at, slice(index, index + 1))[..., 0]

    def slices(self, axis: str, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """(index, image) for every slice along `axis`; time slices come from blocks of samples."""
        n_il, n_xl, n_samples = self.geometry.shape
        if axis != "time":
            for index in range(n_il if axis == "inline" else n_xl):
                yield index, self.slice(axis, index)
            return
        per_block = samples_per_block(self.geometry, block_bytes)
        for start in range(0, n_samples, per_block):
            block = self._traces(self.geometry.trace_at, slice(start, min(start + per_block, n_samples)))
            for k in range(block.shape[-1]):
                yield start + k, np.ascontiguousarray(block[..., k])

    def trace_sample(self, seed: int = 0) -> np.ndarray:
        """A random sample of whole live traces (all-zero traces left out), (traces, samples), of at most
        `_SAMPLE_VALUES` amplitudes."""
        count = self.handle.tracecount
        take = min(count, max(1, _SAMPLE_VALUES // len(self.geometry.samples)))
        picked = np.sort(np.random.default_rng(seed).choice(count, take, replace=False))
        traces = self._traces(picked)
        return traces[np.abs(traces).max(axis=1) > 0]


# ----------------------------------------------------------------------------- amplitude mapping


@dataclass(frozen=True)
class AmplitudeMapping:
    """Amplitude -> uint8 grey like the TGS renderings: clip at +-`clip`, then linear, zero at mid-grey."""

    clip: float
    source: str
    reverse_polarity: bool = False

    def to_uint8(self, amplitudes: np.ndarray) -> np.ndarray:
        sign = -1.0 if self.reverse_polarity else 1.0
        scaled = np.clip(sign * amplitudes.astype(np.float64) / self.clip, -1.0, 1.0)
        return np.rint(127.5 + 127.5 * scaled).astype(np.uint8)

    def describe(self) -> dict[str, Any]:
        sign = "-" if self.reverse_polarity else ""
        return {"clip": self.clip, "source": self.source, "reverse_polarity": self.reverse_polarity,
                "formula": f"grey = round(127.5 + 127.5 * clip({sign}amplitude / {self.clip:.6g}, -1, 1))",
                "missing_traces_filled_with": 0.0}


def amplitude_mapping(volume: SegyVolume, clip: float | None = None, clip_percentile: float = 99.0,
                      reverse_polarity: bool = False) -> AmplitudeMapping:
    """The clip given, or the `clip_percentile` of |amplitude| over a bounded random sample of live traces."""
    if clip is not None:
        if not (np.isfinite(clip) and clip > 0):
            raise ConfigError(f"clip {clip}: must be a positive amplitude (values beyond +-clip become black/white)")
        return AmplitudeMapping(float(clip), "given", reverse_polarity)
    if not 0.0 < clip_percentile <= 100.0:
        raise ConfigError(f"clip_percentile {clip_percentile}: must lie in (0, 100], e.g. 99")
    traces = volume.trace_sample()
    value = float(np.percentile(np.abs(traces), clip_percentile)) if traces.size else 0.0
    if not value > 0:
        raise DataError(f"{volume.path}: the {clip_percentile:g}th percentile of |amplitude| over the sampled "
                        "traces is 0 (mostly zero data); give the amplitude to clip at instead (clip=...)")
    source = (f"{clip_percentile:g}th percentile of |amplitude| over {len(traces)} sampled live traces "
              f"of {volume.handle.tracecount}")
    return AmplitudeMapping(value, source, reverse_polarity)


# ----------------------------------------------------------------------------- outputs


def _segy_layout(volume: SegyVolume) -> np.dtype:
    """One output trace: the input's 240-byte header, then IEEE float samples in the input's byte order."""
    order = ">" if volume.endian == "big" else "<"
    return np.dtype([("header", f"V{_TRACE_HEADER}"), ("data", f"{order}f4", (len(volume.geometry.samples),))])


def _segy_copy(volume: SegyVolume, target: Path) -> None:
    """Write `target` as the input's headers (text, binary with IEEE float samples, every trace header)
    and zero traces, mapping a bounded chunk of traces at a time."""
    n_traces, layout = volume.handle.tracecount, _segy_layout(volume)
    with volume.path.open("rb") as source:
        head = bytearray(source.read(volume.data_start))
    head[_FORMAT_OFFSET:_FORMAT_OFFSET + 2] = _IEEE_FLOAT.to_bytes(2, volume.endian)  # type: ignore[arg-type]
    with target.open("wb") as out:
        out.write(head)
        out.truncate(volume.data_start + n_traces * layout.itemsize)
    trace_bytes = (volume.path.stat().st_size - volume.data_start) // n_traces
    source_layout = np.dtype([("header", f"V{_TRACE_HEADER}"), ("rest", f"V{trace_bytes - _TRACE_HEADER}")])
    step = max(1, (_REMAP_BYTES // 4) // trace_bytes)  # input and output chunks mapped together
    for start in range(0, n_traces, step):
        count = min(step, n_traces - start)
        source_headers = np.memmap(volume.path, source_layout, mode="r", offset=volume.data_start
                                   + start * trace_bytes, shape=(count,))["header"]
        traces = np.memmap(target, layout, mode="r+", offset=volume.data_start + start * layout.itemsize,
                           shape=(count,))
        traces["header"] = source_headers
        traces.flush()
        del source_headers, traces  # unmapped: the pages leave this process's memory


class _CubeWriter:
    """Outputs filled in place through memory maps: SEG-Y trace data (traces, samples), the NPY grid.

    Time slices are gathered into blocks of samples first (one slice touches every trace), and the maps
    are dropped and reopened every `_REMAP_BYTES` written, so the pages written do not pile up in memory."""

    def __init__(self, volume: SegyVolume, write: str, temporaries: dict[str, Path], axis: str, block_bytes: int):
        self.geometry, self.paths, self.n_traces = volume.geometry, temporaries, volume.handle.tracecount
        if "segy" in temporaries:
            _segy_copy(volume, temporaries["segy"])
            self.segy_layout, self.data_start = _segy_layout(volume), volume.data_start
        dtype = np.float32 if write == "probability" else np.uint8
        if "npy" in temporaries:
            n_il, n_xl, n_samples = self.geometry.shape
            shape = (n_xl, n_samples) if self.geometry.kind == "line" else (n_il, n_xl, n_samples)
            created = np.lib.format.open_memmap(temporaries["npy"], mode="w+", dtype=dtype, shape=shape)
            del created  # header and size written; filled through `_map`
        self.gap_value = np.nan if write == "probability" else 0
        n_samples = self.geometry.shape[2]
        self.position_bytes = ((self.segy_layout.itemsize if "segy" in temporaries else 0)
                               + (n_samples * np.dtype(dtype).itemsize if "npy" in temporaries else 0))
        self.block = samples_per_block(self.geometry, block_bytes) if axis == "time" else 0
        self.pending: np.ndarray | None = None
        self.pending_start = 0
        self.since_mapped = 0
        self._map()

    def _map(self) -> None:
        self.segy = self.grid = None
        self.maps: list[np.memmap] = []
        if "segy" in self.paths:
            self.maps.append(np.memmap(self.paths["segy"], self.segy_layout, mode="r+", offset=self.data_start,
                                       shape=(self.n_traces,)))
            self.segy = self.maps[-1]["data"]
        if "npy" in self.paths:
            self.maps.append(np.load(self.paths["npy"], mmap_mode="r+"))
            self.grid = self.maps[-1].reshape(self.geometry.shape)

    def write(self, axis: str, index: int, image: np.ndarray) -> None:
        """`image` oriented as `SegyVolume.slice` returns it, put back where it was read from."""
        if axis == "inline":
            self._put((index,), image.T)
        elif axis == "crossline":
            self._put((slice(None), index), image.T)
        else:
            if self.pending is None:
                count = min(self.block, self.geometry.shape[2] - index)
                self.pending, self.pending_start = np.empty((*image.shape, count), image.dtype), index
            self.pending[..., index - self.pending_start] = image
            if index - self.pending_start + 1 == self.pending.shape[-1]:
                samples = slice(self.pending_start, index + 1)
                for row in range(len(self.pending)):  # an inline at a time: its traces' pages, not all pages
                    self._put((row, slice(None)), self.pending[row], samples)
                self.pending = None

    def _put(self, key: tuple, values: np.ndarray, samples: slice = slice(None)) -> None:
        """`values` (trace_at[key].shape + samples) into every output."""
        if self.grid is not None:
            self.grid[key + (samples,)] = values
        if self.segy is not None:
            traces = self.geometry.trace_at[key]
            present = traces >= 0
            self.segy[traces[present], samples] = values[present]
        self.since_mapped += values[..., 0].size * self.position_bytes  # pages touched, whatever the samples
        if self.since_mapped > _REMAP_BYTES:
            self.close()
            self._map()
            self.since_mapped = 0

    def finish(self) -> None:
        if self.grid is not None and self.geometry.missing:
            self.grid[self.geometry.trace_at < 0] = self.gap_value

    def close(self) -> None:
        for mapped in self.maps:
            mapped.flush()
        self.maps, self.segy, self.grid = [], None, None


def _preview(image: np.ndarray, prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Three panels side by side: the grey slice the model saw | probability (white = salt) | mask outline."""
    grey = np.repeat(image[..., None], 3, axis=-1)
    prob_grey = np.repeat(np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([grey, gap, prob_grey, gap, overlay_boundary(image, mask)], axis=1)


def _preview_indices(geometry: SegyGeometry, axis: str, previews: Sequence[float], path: Path) -> dict[int, float]:
    lines = geometry.lines(axis)
    chosen: dict[int, float] = {}
    for number in previews:
        hits = np.flatnonzero(np.isclose(lines, float(number), rtol=0, atol=1e-6))
        if not hits.size:
            span = f"{lines[0]:g}..{lines[-1]:g}" if len(lines) > 1 else f"{lines[0]:g}"
            raise UnetlabError(f"previews: {axis} {number:g} is not in {path} ({axis} numbers {span})")
        chosen[int(hits[0])] = float(lines[hits[0]])
    return chosen


def _check_options(axis: str, write: str, formats: Sequence[str]) -> None:
    if axis not in AXES:
        raise ConfigError(f"axis {axis!r}: choose one of {', '.join(AXES)}")
    if write not in WRITES:
        raise ConfigError(f"write {write!r}: choose one of {', '.join(WRITES)}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"formats {list(formats)!r}: choose one or more of {', '.join(FORMATS)}")


def _model_image(image: np.ndarray, channels: int) -> np.ndarray:
    # A grey slice for a grey model; repeated into RGB for a model trained on RGB-stored images.
    return image if channels == 1 else np.repeat(image[..., None], channels, axis=-1)


def _check_axis(geometry: SegyGeometry, axis: str, path: Path) -> None:
    if geometry.kind == "line" and axis != "inline":
        raise UnetlabError(f"{path} is a 2-D line ({geometry.note}); it has one section: use axis inline")


def _predict_slices(predictor: Any, volume: SegyVolume, axis: str, mapping: AmplitudeMapping, writer: _CubeWriter,
                    decoding: tuple[float, int, int], write: str, views: tuple[str, int | None, int | None],
                    wanted: dict[int, float],
                    block_bytes: int, log: Callable[[str], None]) -> dict[int, tuple[np.ndarray, ...]]:
    """Every slice through the model into `writer`; returns (image, probability, mask) of the `wanted` slices.
    `views` is (TTA, tile, tile overlap) as `Predictor.predict_proba` takes them."""
    tta, tile, overlap = views
    channels = predictor.config.model.in_channels
    lines = volume.geometry.lines(axis)
    report_every = max(1, len(lines) // 10)
    kept: dict[int, tuple[np.ndarray, ...]] = {}
    for index, amplitudes in volume.slices(axis, block_bytes):
        image = mapping.to_uint8(amplitudes)
        prob = predictor.predict_proba([_model_image(image, channels)], tta=tta, tile=tile, overlap=overlap)[0]
        mask = predictor.labels(prob, *decoding) if write == "mask" or index in wanted else None
        writer.write(axis, index, prob if write == "probability" else mask)
        if index in wanted:
            kept[index] = (image, prob, mask)
        if (index + 1) % report_every == 0:
            log(f"  {axis} {lines[index]:g}: {index + 1}/{len(lines)} slices")
    return kept


def predict_segy(predictor: Any, path: str | os.PathLike, out_dir: str | os.PathLike, *, axis: str = "inline",
                 clip: float | None = None, clip_percentile: float = 99.0, reverse_polarity: bool = False,
                 write: str = "probability", formats: Sequence[str] = ("segy",), previews: Sequence[float] = (),
                 threshold: float | None = None, min_area: int | None = None, min_component: int | None = None,
                 tta: str | None = None, inline_byte: int = 189, crossline_byte: int = 193,
                 tile: int | None = None, tile_overlap: int | None = None,
                 block_bytes: int = BLOCK_BYTES, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict salt on every `axis` slice of the SEG-Y volume `path`; write the probability (float32)
    or 0/1 mask cube to `out_dir` as `<stem>-salt-<write>.sgy` (the input's headers and trace order,
    IEEE float samples) and/or `.npy` ((inlines, crosslines, samples), or (traces, samples) for a
    2-D line; missing traces NaN / 0), PNG previews of the slices numbered in `previews` (inline or
    crossline numbers, or sample times) and `<stem>-salt.json` (geometry, amplitude mapping,
    decoding, files). The cubes appear only when complete; slices larger than `tile` (default the run's
    eval.tile) are predicted in overlapping tiles. Returns the sidecar's content."""
    _check_options(axis, write, formats)
    if predictor.task.name != "binary":
        raise UnetlabError(f"SEG-Y prediction writes a salt cube and needs a binary run; this run is "
                           f"{predictor.task.name}")
    if predictor.config.model.in_channels not in (1, 3):
        raise UnetlabError(f"SEG-Y prediction feeds grey slices; this run's model takes "
                           f"{predictor.config.model.in_channels} channels")
    decoding = decoding_options(predictor, threshold, min_area, min_component)
    tta = predictor.config.eval.tta if tta is None else tta
    path, out_dir = Path(path), Path(out_dir)
    stem = f"{path.stem}-salt"
    with SegyVolume(path, inline_byte, crossline_byte) as volume:
        geometry = volume.geometry
        _check_axis(geometry, axis, path)
        wanted = _preview_indices(geometry, axis, previews, path)
        mapping = amplitude_mapping(volume, clip, clip_percentile, reverse_polarity)
        log(f"{path.name}: {geometry.kind} {'x'.join(map(str, geometry.shape))} (inline x crossline x sample"
            f"{f', {geometry.missing} missing traces' if geometry.missing else ''}); "
            f"{len(geometry.lines(axis))} {axis} slices; amplitudes clipped at +-{mapping.clip:.4g} ({mapping.source})")
        targets = {fmt: out_dir / f"{stem}-{write}.{'sgy' if fmt == 'segy' else 'npy'}" for fmt in formats}
        with contextlib.ExitStack() as stack:
            temporaries = {fmt: stack.enter_context(atomic_path(target)) for fmt, target in targets.items()}
            writer = _CubeWriter(volume, write, temporaries, axis, block_bytes)
            try:
                kept = _predict_slices(predictor, volume, axis, mapping, writer, decoding, write,
                                       (tta, tile, tile_overlap), wanted, block_bytes, log)
                writer.finish()
            finally:
                writer.close()
        input_format = f"{_READABLE_FORMATS[volume.sample_format]}, {volume.endian}-endian"
    written = [str(p) for p in targets.values()]
    for index, panels in kept.items():
        preview = out_dir / "previews" / f"{path.stem}-{axis}-{wanted[index]:g}.png"
        written.append(str(save_png(preview, _preview(*panels))))
    summary = {"input": str(path), "input_format": input_format, "geometry": geometry.describe(), "axis": axis,
               "amplitude_mapping": mapping.describe(), "write": write, "threshold": decoding[0],
               "min_area": decoding[1], "min_component": decoding[2],
               "decoding": decoding_text(predictor, *decoding), "tta": tta, "files": written}
    sidecar = atomic_write_text(out_dir / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    log(f"wrote {', '.join(Path(p).name for p in written)} and {sidecar.name} in {out_dir}")
    return {**summary, "sidecar": str(sidecar)}


def preview_segy(path: str | os.PathLike, out_png: str | os.PathLike, *, axis: str = "inline",
                 line: float | None = None, clip: float | None = None, clip_percentile: float = 99.0,
                 reverse_polarity: bool = False, inline_byte: int = 189,
                 crossline_byte: int = 193) -> dict[str, Any]:
    """Write one slice as the model would see it (8-bit grey), no model needed: to check the amplitude
    mapping against training images before predicting a volume. `line` defaults to the middle slice."""
    _check_options(axis, "mask", ("npy",))
    path = Path(path)
    with SegyVolume(path, inline_byte, crossline_byte) as volume:
        _check_axis(volume.geometry, axis, path)
        lines = volume.geometry.lines(axis)
        number = float(lines[len(lines) // 2]) if line is None else line
        (index, number), = _preview_indices(volume.geometry, axis, [number], path).items()
        mapping = amplitude_mapping(volume, clip, clip_percentile, reverse_polarity)
        save_png(out_png, mapping.to_uint8(volume.slice(axis, index)))
    return {"file": str(out_png), "axis": axis, "line": number, "amplitude_mapping": mapping.describe()}
