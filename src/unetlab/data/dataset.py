"""The decoded data set every stage consumes: images, masks and the ignore map as in-memory arrays.

Format readers (data/formats/) produce it, the trainer, evaluation and the task objects take it;
it sits below all of them so none of them imports a particular format to get the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ArrayDataset:
    """A decoded data set held in memory as arrays of one size (TGS is ~30 MB as uint8).

    Binary tasks: bool masks (salt / foreground). Multiclass: uint8 class indices, where pixels
    under the ignore label hold 0 and are False in `valid`.
    """

    ids: list[str]
    images: np.ndarray  # uint8 (N, H, W) grey or (N, H, W, C)
    masks: np.ndarray  # bool (N, H, W) for binary, uint8 class indices (N, H, W) for multiclass
    depths: dict[str, float] = field(default_factory=dict)
    root: Path | None = None
    valid: np.ndarray | None = None  # bool (N, H, W): pixels that count; None = all (no ignore label)
    class_names: list[str] = field(default_factory=lambda: ["background", "salt"])
    palette: list[tuple[int, int, int]] | None = None  # RGB per class from the format (CamVid); None: generic

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def coverage(self) -> np.ndarray:
        return self.masks.reshape(len(self), -1).mean(axis=1)
