"""Reading and writing image files, with the errors a user can act on.

Files are decoded by content (Pillow sniffs the format; TIFF, BigTIFF included, goes to tifffile and
NumPy's .npy to numpy by their magic bytes), never by extension. Grey data stored as RGB with
identical channels (TGS) is reduced to one channel; 16-bit masks keep their values.

Images become uint8, the range every model is trained on (`data/tensors.py` divides by 255), by one
rule, `_scale_to_uint8`, for training and prediction alike: uint8 as stored; bool 0/255; wider
integers (16/32-bit, signed too) linearly from [min(0, image min), image max] to [0, 255]; floats
min-max per image to [0, 255], NaN and infinities counted as 0. The scale is per image: a 16-bit
image that only uses 0..4095 is stretched to the full range (scale amplitudes yourself when the
absolute level matters, and keep training and prediction files alike).

Every reader refuses an image of more than `max_pixels()` pixels (height x width) before decoding it:
a decompression bomb (a small file that claims a huge size) or an image too large to hold. The
limit is `DEFAULT_MAX_PIXELS` unless a stage sets its config's `data.max_pixels` with `pixel_limit`.
Pillow's own limit (a warning above 89 M pixels, an error above 179 M) gives way to this one.
"""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from unetlab.errors import DataError
from unetlab.files import atomic_path

# 16384 x 16384: a 12000 x 12000 seismic section (or any image up to the common 16 K texture size) is
# read, while an image's own arrays stay a few hundred MB (256 MiB grey, 768 MiB RGB as uint8) and a
# compressed bomb claiming gigapixels is refused before a byte of it is decoded.
DEFAULT_MAX_PIXELS = 16384 * 16384
MAX_PIXELS_OPTION = "data.max_pixels"
_limit = {"pixels": DEFAULT_MAX_PIXELS, "option": MAX_PIXELS_OPTION}
_PILLOW_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is process-wide


def max_pixels() -> int:
    """The pixels per image the readers accept now (see the module docstring)."""
    return _limit["pixels"]


@contextlib.contextmanager
def pixel_limit(pixels: int | None, option: str = MAX_PIXELS_OPTION) -> Iterator[None]:
    """Readers inside refuse images of more than `pixels` pixels (None: keep the current limit); their
    error names `option`, the setting that raises the limit."""
    saved = dict(_limit)
    if pixels is not None:
        _limit.update(pixels=int(pixels), option=option)
    try:
        yield
    finally:
        _limit.update(saved)


def check_pixels(path: Path, shape: Sequence[int]) -> None:
    """Refuse an image of `shape` (height, width, ...) over the limit, before it is decoded."""
    height, width = int(shape[0]), int(shape[1])
    pixels = height * width
    if pixels > _limit["pixels"]:
        raise DataError(f"{path}: {width} x {height} = {pixels:,} pixels, more than the {_limit['pixels']:,} "
                        f"per image allowed ({_limit['option']}); a decompression bomb or an image too large "
                        f"to hold: raise {_limit['option']} only for a genuine image you have the memory for")


def _open(path: Path) -> Image.Image:
    try:
        with _PILLOW_LOCK:  # the header only: our limit replaces Pillow's, checked before decoding
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        try:
            check_pixels(path, image.size[::-1])
            image.load()
        except BaseException:
            image.close()
            raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError:  # a later frame (GIF) larger than Pillow's own limit
        raise DataError(f"{path}: a frame has more pixels than Pillow decodes safely ({Image.MAX_IMAGE_PIXELS * 2:,}); "
                        "save very large images as TIFF or .npy") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc.__class__.__name__}); the file is corrupt "
                        "or not an image: replace or remove it") from None
    return image


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image as uint8 (H, W). RGB(A) files are converted to luminance; 16-bit grey is scaled."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("P", "PA"):  # palette indices are not grey levels
        image = image.convert("LA" if image.mode == "PA" else "L")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        array = array[..., 0]
    if array.ndim == 3:
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            array = rgb[..., 0]  # grey stored as RGB: take it exactly, no rounding
        else:
            array = np.asarray(image.convert("L"))
    if array.dtype.kind in "ui" and array.dtype.itemsize > 1:  # 16/32-bit, either byte order
        array = (array.astype(np.float64) / max(float(array.max()), 1.0) * 255.0).round()
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_mask_values(path: str | Path) -> np.ndarray:
    """Read a mask's values as stored (H, W): colour channels reduced by their max, alpha dropped,
    bilevel masks as {0, 1} uint8; 16-bit values are kept."""
    path = Path(path)
    array = np.asarray(_open(path))
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] >= 3 else array[..., 0]  # drop alpha
    return array.astype(np.uint8) if array.dtype == bool else array


def read_binary_mask(path: str | Path) -> np.ndarray:
    """Read a mask as bool (H, W): any non-zero value is foreground (8-bit {0,255}, 16-bit {0,65535}, {0,1})."""
    return read_mask_values(path) > 0


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 grey/RGB array (or a bool mask as 0/255) as PNG, atomically."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    with atomic_path(path) as tmp:  # encoded straight into the file: no copy of a huge PNG in memory
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return Path(path)


# --- multi-channel images and class-index masks (used by unetlab.data.formats) ----------------------

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, either byte order
_NPY_MAGIC = b"\x93NUMPY"


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.__class__.__name__}); check its permissions") from None


def _is_tiff(path: Path) -> bool:
    return _head(path)[:4] in _TIFF_MAGIC


def _read_npy(path: Path) -> np.ndarray:
    """A NumPy .npy image (H, W) or (H, W, C) of numbers, memory-mapped (read as it is scaled)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated header or data, pickled objects, ...
        raise DataError(f"{path}: cannot read .npy ({exc.__class__.__name__}); the file is corrupt or holds "
                        "objects: save the image with numpy.save") from None
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or array.dtype.kind not in "buif":
        raise DataError(f"{path}: .npy holds {array.dtype} of shape {array.shape}; expected one image of numbers, "
                        "(H, W) or (H, W, C)")
    check_pixels(path, array.shape)
    return array


def _read_tiff(path: Path) -> np.ndarray:
    """Decode a TIFF with tifffile as (H, W) or (H, W, C); planar (C, H, W) is moved to channels-last.

    Alpha samples (ExtraSamples 1 or 2 on an RGB page) are dropped; other extra samples are kept.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _check_tiff_pixels(path, series.shape, series.axes)
            array = series.asarray()
            axes = series.axes
            page = tif.pages[0]
            extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
            photometric = int(getattr(page, "photometric", 0) or 0)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(f"{path}: cannot decode TIFF ({exc.__class__.__name__}); the file is corrupt: "
                        "replace or remove it") from None
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and not axes.endswith("S"):
        array = np.moveaxis(array, 0, -1)  # planar samples or one band per page (C, H, W) -> (H, W, C)
    if array.ndim == 3 and photometric == 2 and array.shape[-1] >= 4 and any(e in (1, 2) for e in extrasamples):
        array = array[..., :3]  # RGB + alpha
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: TIFF holds an array of shape {array.shape} ({axes}); expected one image "
                        "(H, W) or (H, W, C): split stacks into one file per image")
    return array


def _check_tiff_pixels(path: Path, shape: Sequence[int], axes: str) -> None:
    """The limit on a TIFF series: its Y x X plane, times any further planes (pages) but samples or channels."""
    planes = math.prod(n for n, axis in zip(shape, axes) if axis not in "YXSC")
    height = math.prod(n for n, axis in zip(shape, axes) if axis == "Y") * planes
    width = math.prod(n for n, axis in zip(shape, axes) if axis == "X")
    check_pixels(path, (height, width))


def _row_bands(array: np.ndarray, elements: int = 1 << 22) -> list[slice]:
    """Row slices of about `elements` values each: float64 temporaries stay small for huge images."""
    rows = max(1, elements // max(array[:1].size, 1))
    return [slice(start, start + rows) for start in range(0, array.shape[0], rows)]


def _as_float(block: np.ndarray) -> np.ndarray:
    return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 unchanged; bool -> 0/255; wider integers from [min(0, min), max] and floats min-max (NaN and
    infinities as 0) linearly to 0..255, rounded; computed in row bands (see the module docstring)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind not in "uif":
        raise DataError(f"unsupported pixel type {array.dtype}")
    out = np.empty(array.shape, np.uint8)
    if not array.size:
        return out
    bands = _row_bands(array)
    if array.dtype.kind in "ui":
        low = min(int(array.min()), 0)
        scale = max(float(array.max()) - low, 1.0)
    else:
        lows, highs = zip(*((float(b.min()), float(b.max())) for b in (_as_float(array[rows]) for rows in bands)))
        low, scale = min(lows), max(max(highs) - min(lows), 1e-12)
    for rows in bands:
        out[rows] = ((_as_float(array[rows]) - low) / scale * 255.0).round()
    return out


def _grey(array: np.ndarray, path: Path) -> np.ndarray:
    """uint8 (H, W[, C]) -> (H, W) by `read_grey`'s rules: grey kept, alpha dropped, grey stored as colour
    taken exactly, colour as luminance (Pillow's ITU-R 601-2, as `read_grey`)."""
    if array.ndim == 2:
        return array
    if array.shape[-1] <= 2:  # grey, or grey + alpha
        return array[..., 0]
    rgb = array[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    if array.shape[-1] > 4:
        raise DataError(f"{path}: image has {array.shape[-1]} channels, the model takes 1 (grey); convert the "
                        "file or predict with a model of that many input channels")
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image as uint8 (H, W) or (H, W, C), keeping its channels, decoded by content.

    Grey (+alpha) -> (H, W); RGB(A), palette, CMYK, YCbCr -> (H, W, 3) (alpha dropped); TIFF and
    BigTIFF (tifffile) and .npy arrays (H, W) or (H, W, C) keep every sample, so multi-band images
    stay (H, W, C). Values become uint8 by the module docstring's rule. `channels=3` returns RGB
    (grey is repeated), `channels=1` grey by `read_grey`'s rules; other counts must match.
    """
    path = Path(path)
    head = _head(path)
    if head[:4] in _TIFF_MAGIC or head == _NPY_MAGIC:
        array = _scale_to_uint8(_read_tiff(path) if head[:4] in _TIFF_MAGIC else _read_npy(path))
        if channels == 1:
            array = _grey(array, path)
    elif channels == 1:
        return read_grey(path)
    else:
        with _open(path) as image:  # closed here: multi-frame formats (GIF) keep their file open
            if image.mode in ("1", "L", "LA", "La") or image.mode.startswith("I") or image.mode == "F":
                array = np.asarray(image.convert("LA") if image.mode == "La" else image)
                if array.ndim == 3:  # grey + alpha: keep the grey
                    array = array[..., 0]
            else:  # palette, RGBA, CMYK, YCbCr, ...: RGB, alpha dropped
                array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        array = _scale_to_uint8(array)
    if channels is not None:
        if channels == 3 and array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        got = 1 if array.ndim == 2 else array.shape[-1]
        if got != channels:
            raise DataError(f"{path}: image has {got} channel(s), {channels} expected; convert the file or "
                            "change the expected channel count")
    if isinstance(array, np.memmap):  # a uint8 .npy as mapped: read it into memory, leave the file alone
        array = np.array(array)
    return np.ascontiguousarray(array)


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask as (H, W): uint8 when every value fits, else int64. Values are kept.

    Palette PNGs give their palette indices (VOC), 16-bit masks keep their values ({0, 65535} stays),
    bilevel masks give {0, 1}. Colour (RGB) masks are refused unless the three channels are equal:
    they need a colour table (`unetlab.data.formats.camvid.read_rgb_masks`). Alpha is dropped.
    """
    path = Path(path)
    if _is_tiff(path):
        array = _read_tiff(path)
    else:
        with _open(path) as image:
            array = np.asarray(image)
            if image.mode in ("LA", "La", "PA") and array.ndim == 3:  # palette / grey + alpha: drop alpha
                array = array[..., 0]
    if array.ndim == 3:
        channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not all(np.array_equal(channels[..., 0], channels[..., k]) for k in range(1, channels.shape[-1])):
            raise DataError(f"{path}: mask is a colour (RGB) image, not class indices; read it with a colour "
                            "table (read_rgb_masks) or save the mask as 8-bit grey / palette PNG")
        array = channels[..., 0]
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: mask holds non-integer values; class masks must hold whole numbers")
        array = array.astype(np.int64)
    if array.dtype.kind not in "ui":
        raise DataError(f"{path}: unsupported mask pixel type {array.dtype}")
    if array.size and int(array.min()) < 0:
        raise DataError(f"{path}: mask holds negative value {int(array.min())}; class indices start at 0")
    if array.dtype != np.uint8:
        array = array.astype(np.uint8) if (not array.size or int(array.max()) <= 255) else array.astype(np.int64)
    return np.ascontiguousarray(array)


def read_rgb_mask(path: str | Path) -> np.ndarray:
    """Read a colour-coded mask as uint8 (H, W, 3) exactly as stored (palette expanded, alpha dropped)."""
    path = Path(path)
    if _is_tiff(path):
        array = _read_tiff(path)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.dtype != np.uint8 or array.shape[-1] < 3:
            raise DataError(f"{path}: colour mask must be 8-bit RGB, got {array.dtype} with {array.shape[-1]} "
                            "channel(s)")
        return np.ascontiguousarray(array[..., :3])
    with _open(path) as image:
        return np.ascontiguousarray(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
