"""Reading and writing image files, with the errors a user can act on.

Files are decoded by content (Pillow sniffs the format), never by extension. Grey data stored as
RGB with identical channels (TGS) is reduced to one channel; 16-bit masks keep their values.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unetlab.errors import DataError


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
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


def read_binary_mask(path: str | Path) -> np.ndarray:
    """Read a mask as bool (H, W): any non-zero value is foreground (8-bit {0,255}, 16-bit {0,65535}, {0,1})."""
    path = Path(path)
    array = np.asarray(_open(path))
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] >= 3 else array[..., 0]  # drop alpha
    return array > 0


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 grey/RGB array (or a bool mask as 0/255) as PNG, atomically."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
