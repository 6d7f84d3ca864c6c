"""Sliding-window prediction of images larger than a tile, in bounded memory.

An image is covered by a grid of equal tiles that share at least `overlap` pixels with their
neighbours. Along each axis the tiles are as few as a side of at most `tile` allows, and only as
large as they must be to cover the axis with that many (rounded up to a multiple of 32, which
every model of the zoo takes without padding): 4096 pixels with tile 1024 and overlap 64 take five
tiles of 896, not five of 1024. Tile starts are spread evenly and mirror-symmetric, so a flipped or
rotated image gets the flipped or rotated grid. Each
tile's probabilities are weighted by a smooth window (Gaussian, sigma = side / 8 as in nnU-Net, or a
raised cosine) that is high in the tile's centre, where the network sees the most context, and low
at its borders, where zero padding distorts it; the weighted sum is divided by the summed weights.
Where one tile alone covers a pixel the result is that tile's prediction; across a seam it fades
from one tile to the next.

Memory: tiles are cut from the uint8 image and predicted a few at a time (`tiles_per_batch`), and
their weighted probabilities are added straight into the float32 output array. Because all tiles
share one window and lie on a grid, the summed weight at pixel (y, x) is the product of a column
sum and a row sum, two 1-D arrays, so no image-sized weight buffer exists. Beyond the input image
and the output, memory is a batch of tiles and the model's activations on it, whatever the
image's size.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from unetlab.data.tensors import images_to_tensor
from unetlab.errors import UnetlabError

WINDOWS = ("gaussian", "cosine")
TILE_MULTIPLE = 32  # U-Nets pad to a multiple of 2**depth (16 at depth 4), ResNet encoders to 32


def check_tiling(tile: int, overlap: int, tile_name: str = "--tile", overlap_name: str = "--tile-overlap") -> None:
    """Refuse a tile side / overlap pair the grid cannot use, naming the options."""
    if tile < 0 or 0 < tile < 16:
        raise UnetlabError(f"{tile_name} {tile}: use 0 (never tile) or a tile side of at least 16 pixels")
    if overlap < 0 or (tile and overlap >= tile):
        raise UnetlabError(f"{overlap_name} {overlap}: neighbouring tiles must share 0 to {max(tile - 1, 0)} "
                           f"pixels (less than the tile side {tile})")


def tile_side(length: int, tile: int, overlap: int) -> int:
    """The side of the tiles along an axis of `length` pixels: the whole axis when it fits in `tile`, else
    the smallest multiple of TILE_MULTIPLE (at most `tile`) that covers the axis with the fewest tiles."""
    if length <= tile:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    needed = math.ceil((length + (count - 1) * overlap) / count)
    return min(tile, math.ceil(needed / TILE_MULTIPLE) * TILE_MULTIPLE)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering [0, length), neighbours sharing at least `overlap`
    pixels; spread evenly, first at 0, last at length - tile, mirror-symmetric."""
    if length <= tile:
        return [0]
    span = length - tile
    count = math.ceil(span / (tile - overlap)) + 1
    first_half = [i * span // (count - 1) for i in range((count + 1) // 2)]
    return first_half + [span - start for start in reversed(first_half[: count // 2])]


def window(size: int, kind: str = "gaussian") -> np.ndarray:
    """1-D blending weights (float64, positive everywhere, symmetric, 1 at the centre) for a tile side."""
    offset = np.arange(size) - (size - 1) / 2
    if kind == "gaussian":
        return np.exp(-0.5 * (offset / (size / 8)) ** 2)
    if kind == "cosine":  # a Hann window stretched so that even its end samples stay above 0
        return 0.5 * (1.0 + np.cos(np.pi * offset / (size / 2)))
    raise UnetlabError(f"tile window {kind!r}: choose one of {', '.join(WINDOWS)}")


def coverage(length: int, starts: list[int], weights: np.ndarray) -> np.ndarray:
    """The summed window weight at each of `length` positions: the 1-D factor of the total weight."""
    total = np.zeros(length)
    for start in starts:
        total[start : start + len(weights)] += weights
    return total


def tiles_per_batch(batch_size: int, input_size: int, tile: int) -> int:
    """As many tiles as hold the pixels of `batch_size` images of the model's input size (at least one):
    the activation memory of a tile batch is then that of a training-size batch."""
    return max(1, batch_size * input_size**2 // tile**2)


def predict_tiled(image: np.ndarray, probs_of: Callable[[torch.Tensor], torch.Tensor], tile: int, overlap: int,
                  kind: str = "gaussian", batch: int = 1, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 image (H, W) or (H, W, C) -> float32 probabilities (K, H, W), blended from overlapping tiles.

    `probs_of` maps float images in [0, 1] (N, C, h, w) at tile size to probabilities (N, K, h, w)
    (sizing, normalisation, the model and test-time augmentation all happen inside it); it is
    called with at most `batch` tiles at a time.
    """
    height, width = image.shape[:2]
    tile_h, tile_w = tile_side(height, tile, overlap), tile_side(width, tile, overlap)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    window_y, window_x = window(tile_h, kind), window(tile_w, kind)
    weight = torch.from_numpy(np.outer(window_y, window_x).astype(np.float32))
    positions = [(y, x) for y in ys for x in xs]
    out: np.ndarray | None = None
    for first in range(0, len(positions), batch):
        chunk = positions[first : first + batch]
        tiles = images_to_tensor(np.stack([image[y : y + tile_h, x : x + tile_w] for y, x in chunk]), device)
        probs = probs_of(tiles).float().cpu()
        if out is None:
            out = np.zeros((probs.shape[1], height, width), np.float32)
            total = torch.from_numpy(out)
        for (y, x), prob in zip(chunk, probs):
            total[:, y : y + tile_h, x : x + tile_w].addcmul_(prob, weight)
    assert out is not None
    # The summed weight is separable (one window on a grid): divide by its row and column factors in place.
    total.div_(torch.from_numpy(coverage(height, ys, window_y).astype(np.float32)).view(-1, 1))
    total.div_(torch.from_numpy(coverage(width, xs, window_x).astype(np.float32)).view(1, -1))
    return out
