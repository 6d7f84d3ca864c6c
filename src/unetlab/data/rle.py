"""Kaggle run-length encoding as used by TGS Salt `train.csv`.

Pixels are numbered column-major (down the first column, then the next), starting at 1; the
encoding is `start length start length ...` of the runs of foreground pixels. An empty mask is
the empty string.
"""

from __future__ import annotations

import numpy as np

from unetlab.errors import DataError


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = foreground) as a Kaggle RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    flat = (np.asarray(mask) != 0).flatten(order="F").astype(np.int8)
    padded = np.concatenate([[0], flat, [0]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-based run edges
    starts, ends = changes[0::2], changes[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into a bool mask of `shape` (height, width)."""
    height, width = shape
    mask = np.zeros(height * width, dtype=bool)
    text = "" if rle is None else str(rle).strip()
    if text and text.lower() != "nan":
        try:
            numbers = np.array(text.split(), dtype=np.int64)
        except ValueError as exc:
            raise DataError(f"run-length string {text[:40]!r} is not a list of integers") from exc
        if numbers.size % 2:
            raise DataError(f"run-length string has an odd number of values ({numbers.size})")
        for start, length in zip(numbers[0::2], numbers[1::2]):
            if start < 1 or length < 0 or start - 1 + length > mask.size:
                raise DataError(
                    f"run {start} {length} lies outside a {height}x{width} image"
                )
            mask[start - 1 : start - 1 + length] = True
    return mask.reshape((width, height)).T
