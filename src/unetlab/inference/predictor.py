"""Turning images into salt probabilities with a trained model; shared by validation, evaluate and predict."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetlab.config import Config, config_from_dict
from unetlab.data.sizing import Sizing
from unetlab.data.tensors import images_to_tensor, normalize
from unetlab.engine.checkpoint import load_checkpoint
from unetlab.engine.device import autocast, resolve_device
from unetlab.errors import UnetlabError
from unetlab.models import create_model
from unetlab.run_folder import RunFolder
from unetlab.tasks import build_task


def _default_class_names(config: Config) -> list[str]:
    # Checkpoints written before class names were stored: binary salt, or numbered classes.
    if config.task == "binary":
        return ["background", "salt"]
    return [f"class_{k}" for k in range(config.model.classes)]


@torch.no_grad()
def forward_probs(model: nn.Module, x: torch.Tensor, precision: str = "fp32",
                  channels_last: bool = False, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """Probabilities (float32) for normalised, model-sized inputs: sigmoid, or the task's `activation`."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, precision):
        logits = model(x)
    return (activation or torch.sigmoid)(logits.float()).float()


@torch.no_grad()
def predict_batch(model: nn.Module, images: torch.Tensor, sizing: Sizing, mean: Sequence[float],
                  std: Sequence[float], precision: str = "fp32", tta: str = "none",
                  channels_last: bool = False, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) at their own size -> probabilities (N, 1 or classes, H, W).

    Test-time flips are applied to the original image, before sizing, so that the result is
    exactly mirror-symmetric even when padding is not (101 -> 128 pads 13 and 14 pixels).
    """
    height, width = images.shape[-2:]

    def once(x: torch.Tensor) -> torch.Tensor:
        probs = forward_probs(model, normalize(sizing.images(x), mean, std), precision, channels_last, activation)
        return sizing.restore(probs, height, width)

    probs = once(images)
    if tta == "hflip":
        probs = 0.5 * (probs + once(images.flip(-1)).flip(-1))
    return probs


def decoding_options(predictor: "Predictor", threshold: float | None, min_area: int | None) -> tuple[float, int]:
    """`--threshold` and `--min-area` checked, each defaulting to the run's; min area is binary-only."""
    threshold = predictor.threshold if threshold is None else threshold
    if not 0.0 < threshold < 1.0:
        raise UnetlabError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    if min_area is None:
        return threshold, predictor.config.eval.min_area
    if min_area < 0:
        raise UnetlabError(f"--min-area {min_area}: must be 0 (keep every prediction) or a pixel count")
    if min_area and predictor.task.name != "binary":
        raise UnetlabError(f"--min-area {min_area}: only binary runs empty small predictions; this run is "
                           f"{predictor.task.name} (drop the option)")
    return threshold, min_area


class Predictor:
    """A model with its sizing, normalisation and threshold, as stored in a checkpoint."""

    def __init__(self, model: nn.Module, config: Config, mean: Sequence[float], std: Sequence[float],
                 threshold: float, device: torch.device, epoch: int | None = None,
                 class_names: list[str] | None = None, palette: list[tuple[int, int, int]] | None = None):
        self.model = model.to(device).eval()
        self.task = build_task(config.task, class_names or _default_class_names(config), threshold,
                               config.eval.min_area, palette)
        self.epoch = epoch
        self.config, self.mean, self.std = config, list(mean), list(std)
        self.threshold, self.device = threshold, device
        self.sizing = Sizing(config.data.sizing, config.data.input_size)
        self.precision = config.train.precision
        self.channels_last = config.train.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, which: str = "best", device: str = "auto") -> "Predictor":
        path = RunFolder.resolve_checkpoint(run_or_checkpoint, which)
        payload = load_checkpoint(path)
        config = config_from_dict(payload["config"], source=str(path))
        # The checkpoint holds every weight: never fetch pretrained ones again just to overwrite them.
        options = config.model.options()
        if "encoder_weights" in options:
            options["encoder_weights"] = None
        model = create_model(config.model.name, **options)
        model.load_state_dict(payload["model_state"])
        return cls(model, config, payload["mean"], payload["std"], float(payload["threshold"]),
                   resolve_device(device), epoch=payload.get("epoch"), class_names=payload.get("class_names"),
                   palette=payload.get("palette"))

    def _batches(self, images: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
        # Batch images of equal size together, so mixed-size folders still run batched.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(index)
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                yield indices[start : start + batch_size]

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 32,
                      tta: str | None = None) -> list[np.ndarray]:
        """uint8 images of any sizes -> float32 probabilities at each image's own size: (H, W) of the
        foreground for binary tasks, (classes, H, W) for multiclass."""
        tta = self.config.eval.tta if tta is None else tta
        out: list[np.ndarray | None] = [None] * len(images)
        for indices in self._batches(images, batch_size):
            x = images_to_tensor(np.stack([images[i] for i in indices]), self.device)
            probs = predict_batch(self.model, x, self.sizing, self.mean, self.std, self.precision, tta,
                                  self.channels_last, self.task.probabilities)
            probs = (probs[:, 0] if self.task.name == "binary" else probs).cpu().numpy()
            for slot, prob in zip(indices, probs):
                out[slot] = prob
        return out  # type: ignore[return-value]

    def labels(self, probs: np.ndarray, threshold: float | None = None, min_area: int | None = None) -> np.ndarray:
        """One image's probabilities from `predict_proba` -> uint8 (H, W) labels (binary: 0/1 at the threshold,
        all 0 when fewer than `min_area` pixels pass it; both default to the run's)."""
        batch = torch.from_numpy(probs[None, None] if probs.ndim == 2 else probs[None])
        return self.task.decode(batch, self.threshold if threshold is None else threshold, min_area)[0].numpy()
