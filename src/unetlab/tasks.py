"""The task switch (`task: binary | multiclass`) as two small named pieces.

Everything that differs between a one-logit sigmoid task and a C-logit softmax task lives here:
the activation, how predictions are decoded, the metrics accumulator, the split strata and the keys
a log line shows. The task also carries the data's classes: their names and, where the format has
its own, their colours (`palette`, None = generic colours; `viz.label_palette(n, task.palette)`).
The trainer, evaluation and prediction ask the task instead of branching on its name.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from unetlab.data.dataset import ArrayDataset
from unetlab.data.splits import coverage_classes, dominant_class_strata
from unetlab.metrics import (BinarySegmentationMetrics, MulticlassSegmentationMetrics, drop_small_predictions,
                             remove_small_components)

Palette = list[tuple[int, int, int]]  # one (r, g, b) per class, as `ArrayDataset.palette`


def _checked_palette(palette: Palette | None, class_names: list[str]) -> Palette | None:
    if palette is None:
        return None
    if len(palette) != len(class_names):
        raise ValueError(f"{len(palette)} palette colours for {len(class_names)} classes; give one per class or none")
    return [tuple(int(c) for c in rgb) for rgb in palette]  # type: ignore[misc]


class BinaryTask:
    """One logit per pixel; probability = sigmoid; foreground where probability > threshold, then (in this
    order) without its connected components (8-connected) of fewer than `min_component` pixels, and none
    at all in an image left with fewer than `min_area` foreground pixels. The metrics accumulator applies
    the same rules in the same order, so validation, `evaluate` and `predict` agree."""

    name = "binary"
    summary_keys = ("val/iou", "val/tgs_map")
    strata_name = "salt coverage"

    def __init__(self, class_names: list[str] | None = None, threshold: float = 0.5, min_area: int = 0,
                 palette: Palette | None = None, min_component: int = 0):
        self.class_names = list(class_names or ["background", "salt"])
        self.palette = _checked_palette(palette, self.class_names)
        self.threshold = threshold
        self.min_area = min_area
        self.min_component = min_component

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) float32 foreground probabilities."""
        return torch.sigmoid(logits.float())

    def decode(self, probs: torch.Tensor, threshold: float | None = None, min_area: int | None = None,
               min_component: int | None = None) -> torch.Tensor:
        """(N, H, W) uint8 labels: 1 where probability > threshold, less the components of fewer than
        min_component pixels, in images left with at least min_area such pixels (each defaults to the task's)."""
        pred = probs[:, 0] > (self.threshold if threshold is None else threshold)
        pred = remove_small_components(pred, self.min_component if min_component is None else min_component)
        return drop_small_predictions(pred, self.min_area if min_area is None else min_area).to(torch.uint8)

    def new_metrics(self) -> BinarySegmentationMetrics:
        return BinarySegmentationMetrics(self.threshold, self.min_area, self.min_component)

    def update_metrics(self, metrics: Any, probs: torch.Tensor, truth: torch.Tensor,
                       valid: torch.Tensor | None = None) -> None:
        metrics.update(probs, truth, threshold=self.threshold, valid=valid)

    def strata(self, dataset: ArrayDataset, bins: int) -> np.ndarray:
        return coverage_classes(dataset.coverage, bins)


class MulticlassTask:
    """C logits per pixel; probabilities = softmax; label = argmax. Ignored pixels count nowhere."""

    name = "multiclass"
    summary_keys = ("val/miou", "val/pixel_accuracy")
    strata_name = "dominant class"

    def __init__(self, class_names: list[str], threshold: float = 0.5, min_area: int = 0,
                 palette: Palette | None = None, min_component: int = 0):
        self.class_names = list(class_names)
        self.palette = _checked_palette(palette, self.class_names)
        self.threshold = threshold  # unused: argmax decides (min_area too: the config refuses it here)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float32 class probabilities."""
        return torch.softmax(logits.float(), dim=1)

    def decode(self, probs: torch.Tensor, threshold: float | None = None, min_area: int | None = None,
               min_component: int | None = None) -> torch.Tensor:
        """(N, H, W) uint8 class indices."""
        return probs.argmax(dim=1).to(torch.uint8)

    def new_metrics(self) -> MulticlassSegmentationMetrics:
        return MulticlassSegmentationMetrics(len(self.class_names), self.class_names)

    def update_metrics(self, metrics: Any, probs: torch.Tensor, truth: torch.Tensor,
                       valid: torch.Tensor | None = None) -> None:
        metrics.update(probs, truth, valid=valid)

    def strata(self, dataset: ArrayDataset, bins: int) -> np.ndarray:
        return dominant_class_strata(list(dataset.masks), len(self.class_names))


TASKS: dict[str, Callable[..., BinaryTask | MulticlassTask]] = {"binary": BinaryTask, "multiclass": MulticlassTask}


def build_task(name: str, class_names: list[str] | None, threshold: float = 0.5, min_area: int = 0,
               palette: Palette | None = None, min_component: int = 0) -> BinaryTask | MulticlassTask:
    if name == "multiclass" and not class_names:
        raise ValueError("task multiclass needs the class names of the data")
    return TASKS[name](class_names, threshold, min_area, palette, min_component)
