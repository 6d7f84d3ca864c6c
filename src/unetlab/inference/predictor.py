"""Turning images into salt probabilities with a trained model; shared by validation, evaluate and predict."""

from __future__ import annotations

import copy
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
from unetlab.inference.tiling import check_tiling, predict_tiled, tiles_per_batch
from unetlab.models import create_model
from unetlab.run_folder import RunFolder
from unetlab.tasks import build_task


def _default_class_names(config: Config) -> list[str]:
    # Checkpoints written before class names were stored: binary salt, or numbered classes.
    if config.task == "binary":
        return ["background", "salt"]
    return [f"class_{k}" for k in range(config.model.classes)]


@torch.inference_mode()
def forward_probs(model: nn.Module, x: torch.Tensor, precision: str = "fp32",
                  channels_last: bool = False, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """Probabilities (float32) for normalised, model-sized inputs: sigmoid, or the task's `activation`.

    `precision` (bf16 autocast, or fp32) and `channels_last` (NHWC activations) are the run's
    train.precision and train.channels_last: the model is fed as it was trained."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, precision):
        logits = model(x)
    return (activation or torch.sigmoid)(logits.float()).float()


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` in which every BatchNorm that directly follows a convolution inside a
    Sequential is folded into that convolution's weights and bias: the same function (equal up to fp32
    rounding) without a pass over each activation, about a third faster on the CPU. Everything else is
    copied as it is; `model` is left untouched (export and training use it)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for block in list(folded.modules()):
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                conv, norm = block[i], block[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                    block[i], block[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return folded


# Test-time augmentation: the views (quarter turns anticlockwise, after an optional horizontal flip) whose
# predictions are turned back and averaged. dihedral = all 8 symmetries of the square, for photographs;
# seismic sections have a depth direction, so only hflip suits them.
TTA_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "hflip": ((0, False), (0, True)),
    "dihedral": tuple((turns, flip) for flip in (False, True) for turns in range(4)),
}


def _view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, dims=(-2, -1)).contiguous() if turns else x


def _unview(y: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -turns, dims=(-2, -1)) if turns else y
    return y.flip(-1) if flip else y


@torch.inference_mode()
def predict_batch(model: nn.Module, images: torch.Tensor, sizing: Sizing, mean: Sequence[float],
                  std: Sequence[float], precision: str = "fp32", tta: str = "none",
                  channels_last: bool = False, activation: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) at their own size -> probabilities (N, 1 or classes, H, W).

    Test-time views (`TTA_VIEWS[tta]`) are made of the original image, before sizing, so that the
    result is exactly mirror- (and for dihedral rotation-) symmetric even when padding is not
    (101 -> 128 pads 13 and 14 pixels).
    """
    if tta not in TTA_VIEWS:
        raise UnetlabError(f"tta {tta!r}: choose one of {', '.join(TTA_VIEWS)}")

    def once(x: torch.Tensor) -> torch.Tensor:
        probs = forward_probs(model, normalize(sizing.images(x), mean, std), precision, channels_last, activation)
        return sizing.restore(probs, *x.shape[-2:])

    views = TTA_VIEWS[tta]
    probs = _unview(once(_view(images, *views[0])), *views[0])
    for turns, flip in views[1:]:
        probs = probs + _unview(once(_view(images, turns, flip)), turns, flip)
    return probs if len(views) == 1 else probs / len(views)


def decoding_options(predictor: "Predictor", threshold: float | None, min_area: int | None,
                     min_component: int | None = None) -> tuple[float, int, int]:
    """`--threshold`, `--min-area` and `--min-component` checked, each defaulting to the predictor's (the saved
    operating point, else the run's); the two image rules are binary-only."""
    threshold = predictor.threshold if threshold is None else threshold
    if not 0.0 < threshold < 1.0:
        raise UnetlabError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    rules = []
    for option, value, default, what in (("--min-area", min_area, predictor.min_area, "empty small predictions"),
                                         ("--min-component", min_component, predictor.min_component,
                                          "remove small components")):
        if value is None:
            rules.append(default)
            continue
        if value < 0:
            raise UnetlabError(f"{option} {value}: must be 0 (keep every prediction) or a pixel count")
        if value and predictor.task.name != "binary":
            raise UnetlabError(f"{option} {value}: only binary runs {what}; this run is {predictor.task.name} "
                               "(drop the option)")
        rules.append(value)
    return threshold, rules[0], rules[1]


def decoding_text(predictor: "Predictor", threshold: float, min_area: int, min_component: int) -> str:
    """'threshold 0.437, min area 20 px, min component 10 px (operating point max-tgs, chosen on val of DIR)':
    the decoding in words, naming the saved operating point when it is the one in use."""
    text = (f"threshold {threshold:g}" + (f", min area {min_area} px" if min_area else "")
            + (f", min component {min_component} px" if min_component else ""))
    point = predictor.operating_point
    if point is not None and (threshold, min_area, min_component) == (point["threshold"], point["min_area"],
                                                                      point["min_component"]):
        text += f" (operating point {point['criterion']}, chosen on {point.get('split')} of {point.get('data')})"
    return text


class Predictor:
    """A model with its sizing, normalisation and decoding (threshold, min_area, min_component), as stored in a
    checkpoint, or as the run's saved operating point sets them (`load`)."""

    def __init__(self, model: nn.Module, config: Config, mean: Sequence[float], std: Sequence[float],
                 threshold: float, device: torch.device, epoch: int | None = None,
                 class_names: list[str] | None = None, palette: list[tuple[int, int, int]] | None = None,
                 min_area: int | None = None, min_component: int | None = None,
                 operating_point: dict | None = None):
        self.model = model.to(device).eval()
        self.min_area = config.eval.min_area if min_area is None else int(min_area)
        self.min_component = config.eval.min_component if min_component is None else int(min_component)
        self.task = build_task(config.task, class_names or _default_class_names(config), threshold,
                               self.min_area, palette, self.min_component)
        #: operating-point.json's content when the decoding comes from it (see `load`), else None.
        self.operating_point = operating_point
        self.epoch = epoch
        self.config, self.mean, self.std = config, list(mean), list(std)
        self.threshold, self.device = threshold, device
        self.sizing = Sizing(config.data.sizing, config.data.input_size)
        self.precision = config.train.precision
        self.channels_last = config.train.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, which: str = "best", device: str = "auto",
             threshold: float | None = None, min_area: int | None = None, min_component: int | None = None,
             use_operating_point: bool = True) -> "Predictor":
        """The model of a checkpoint, decoding at the run's saved operating point (operating-point.json, from
        `unetlab evaluate --choose C --save`) when it was chosen for this very checkpoint file, else at the
        checkpoint's threshold and the config's eval.min_area / eval.min_component. Each of `threshold`,
        `min_area`, `min_component` given overrides that one value. `use_operating_point=False` skips the
        saved point (an ensemble's member: the point was chosen for this checkpoint alone)."""
        path = RunFolder.resolve_checkpoint(run_or_checkpoint, which)
        payload = load_checkpoint(path)
        point = RunFolder.of(path).operating_point_for(path) if use_operating_point else None
        saved = {} if point is None else {key: point[key] for key in ("threshold", "min_area", "min_component")}
        decoding = {"threshold": float(payload["threshold"]), **saved}
        given = {"threshold": threshold, "min_area": min_area, "min_component": min_component}
        decoding.update({key: value for key, value in given.items() if value is not None})
        config = config_from_dict(payload["config"], source=str(path))
        # The checkpoint holds every weight: never fetch pretrained ones again just to overwrite them.
        options = config.model.options()
        if "encoder_weights" in options:
            options["encoder_weights"] = None
        model = create_model(config.model.name, **options)
        model.load_state_dict(payload["model_state"])
        return cls(model, config, payload["mean"], payload["std"], float(decoding["threshold"]),
                   resolve_device(device), epoch=payload.get("epoch"), class_names=payload.get("class_names"),
                   palette=payload.get("palette"), min_area=decoding.get("min_area"),
                   min_component=decoding.get("min_component"), operating_point=point)

    def _batches(self, images: Sequence[np.ndarray], indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
        # Batch images of equal size together, so mixed-size folders still run batched.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index in indices:
            by_shape.setdefault(images[index].shape, []).append(index)
        for same in by_shape.values():
            for start in range(0, len(same), batch_size):
                yield same[start : start + batch_size]

    def uses_tiles(self, image: np.ndarray, tile: int | None = None) -> bool:
        """Whether `predict_proba` predicts this image in tiles: a side larger than `tile` (default
        eval.tile; 0 never tiles). Runs with data.sizing=resize never tile: they were trained on whole
        images brought to the input size, so a whole image at that size is what they know."""
        tile = self.config.eval.tile if tile is None else tile
        return tile > 0 and self.sizing.mode != "resize" and max(image.shape[:2]) > tile

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 32, tta: str | None = None,
                      tile: int | None = None, overlap: int | None = None) -> list[np.ndarray]:
        """uint8 images of any sizes -> float32 probabilities at each image's own size: (H, W) of the
        foreground for binary tasks, (classes, H, W) for multiclass.

        Images with a side larger than `tile` (default eval.tile) are predicted one at a time in
        overlapping tiles (`overlap` pixels at least, default eval.tile_overlap; inference/tiling.py),
        in bounded memory; the others whole, `batch_size` of one size at a time. `tta` (default
        eval.tta): none, hflip or dihedral, applied to whole images or to each tile."""
        tta = self.config.eval.tta if tta is None else tta
        tile = self.config.eval.tile if tile is None else tile
        overlap = self.config.eval.tile_overlap if overlap is None else overlap
        check_tiling(tile, overlap, "tile", "overlap")
        out: list[np.ndarray | None] = [None] * len(images)
        whole = []
        for index, image in enumerate(images):
            if self.uses_tiles(image, tile):
                out[index] = self._predict_tiled(image, batch_size, tta, tile, overlap)
            else:
                whole.append(index)
        for indices in self._batches(images, whole, batch_size):
            x = images_to_tensor(np.stack([images[i] for i in indices]), self.device)
            probs = self._probs_of(x, tta)
            probs = (probs[:, 0] if self.task.name == "binary" else probs).cpu().numpy()
            for slot, prob in zip(indices, probs):
                out[slot] = prob
        return out  # type: ignore[return-value]

    def _inference_model(self) -> nn.Module:
        # Folded once, and again should `model` be replaced (a Predictor's model is never changed in place).
        if getattr(self, "_folded", (None, None))[0] is not self.model:
            folded = fold_batch_norm(self.model)
            if self.channels_last:
                folded = folded.to(memory_format=torch.channels_last)
            self._folded = (self.model, folded)
        return self._folded[1]

    def _probs_of(self, x: torch.Tensor, tta: str) -> torch.Tensor:
        return predict_batch(self._inference_model(), x, self.sizing, self.mean, self.std, self.precision, tta,
                             self.channels_last, self.task.probabilities)

    def _predict_tiled(self, image: np.ndarray, batch_size: int, tta: str, tile: int, overlap: int) -> np.ndarray:
        probs = predict_tiled(image, lambda x: self._probs_of(x, tta), tile, overlap, self.config.eval.tile_window,
                              tiles_per_batch(batch_size, self.sizing.size, tile), self.device)
        return probs[0] if self.task.name == "binary" else probs

    def labels(self, probs: np.ndarray, threshold: float | None = None, min_area: int | None = None,
               min_component: int | None = None) -> np.ndarray:
        """One image's probabilities from `predict_proba` -> uint8 (H, W) labels (binary: 0/1 above the threshold,
        less components of fewer than `min_component` pixels, all 0 when fewer than `min_area` pixels are left;
        each defaults to the predictor's)."""
        batch = torch.from_numpy(probs[None, None] if probs.ndim == 2 else probs[None])
        return self.task.decode(batch, self.threshold if threshold is None else threshold,
                                self.min_area if min_area is None else min_area,
                                self.min_component if min_component is None else min_component)[0].numpy()
