"""An ensemble of runs (k-fold models, seeds): probabilities averaged, then decoded once.

`EnsemblePredictor` holds several `Predictor`s and offers what predict, evaluate and the SEG-Y path use
of one (`predict_proba`, `labels`, `uses_tiles`, `task`, `config`, `threshold`, `min_area`,
`min_component`, `operating_point`, `epoch`, `device`). Each member predicts with its own sizing,
normalisation and model; the ensemble averages the probabilities (binary: sigmoid, multiclass: softmax)
at each image's own size, and decodes the mean once.

What the ensemble does once for all members comes from the options given, else from the FIRST run:
TTA, tiling (eval.tta, eval.tile, eval.tile_overlap), the pixel limit and the decoding (the checkpoint's
threshold, eval.min_area, eval.min_component). A run's saved operating point (operating-point.json) was
chosen for that one checkpoint, so it is never applied to an ensemble; `notes` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from unetlab.errors import UnetlabError
from unetlab.inference.predictor import Predictor
from unetlab.run_folder import RunFolder
from unetlab.tasks import build_task


def _signature(predictor: Predictor) -> str:
    """What members must share, in words: task, classes, input channels."""
    config = predictor.config
    return (f"{config.task} with classes {', '.join(predictor.task.class_names)} and "
            f"{config.model.in_channels} input channel(s)")


class EnsemblePredictor:
    """Several runs' models as one predictor: the mean of their probabilities, decoded at one threshold and
    image rules (the given ones, else the first run's)."""

    def __init__(self, members: Sequence[Predictor], checkpoints: Sequence[str | Path],
                 threshold: float | None = None, min_area: int | None = None, min_component: int | None = None,
                 notes: Sequence[str] = ()):
        if not members or len(members) != len(checkpoints):
            raise ValueError("an ensemble needs one checkpoint path per member, and at least one member")
        self.members = list(members)
        self.checkpoints = [Path(path) for path in checkpoints]
        for member, path in zip(self.members[1:], self.checkpoints[1:]):
            if _signature(member) != _signature(self.members[0]):
                raise UnetlabError(f"--ensemble {path}: {_signature(member)}, but {self.checkpoints[0]} is "
                                   f"{_signature(self.members[0])}; an ensemble's runs must share them")
        first = self.members[0]
        self.config, self.device = first.config, first.device
        self.threshold = first.threshold if threshold is None else float(threshold)
        self.min_area = first.min_area if min_area is None else int(min_area)
        self.min_component = first.min_component if min_component is None else int(min_component)
        self.task = build_task(self.config.task, first.task.class_names, self.threshold, self.min_area,
                               first.task.palette, self.min_component)
        #: Never a saved point: each was chosen for one member's checkpoint alone (see `notes`).
        self.operating_point = None
        self.epoch = [member.epoch for member in self.members]
        #: Lines for the log, the predict manifest and the evaluation report (operating points not applied).
        self.notes = list(notes)

    @classmethod
    def load(cls, runs_or_checkpoints: Sequence[str | Path], which: str = "best", device: str = "auto",
             threshold: float | None = None, min_area: int | None = None, min_component: int | None = None
             ) -> "EnsemblePredictor":
        """The models of checkpoint `which` of every run (or the checkpoint files given), first one first.
        Each of `threshold`, `min_area`, `min_component` given overrides the first run's; no run's saved
        operating point is applied."""
        paths = [RunFolder.resolve_checkpoint(run, which) for run in runs_or_checkpoints]
        members = [Predictor.load(path, device=device, use_operating_point=False) for path in paths]
        notes = []
        for path in paths:
            point = RunFolder.of(path).operating_point_for(path)
            if point is not None:
                notes.append(f"{RunFolder.of(path).operating_point_path} ({point['criterion']}) not applied: it was "
                             "chosen for that run's checkpoint alone; the ensemble decodes at --threshold, "
                             "--min-area, --min-component where given, else at the first run's checkpoint "
                             "threshold and eval rules")
        return cls(members, paths, threshold, min_area, min_component, notes)

    def describe(self, which: str) -> str:
        """'ensemble2-best': the name of the ensemble's results, never one model's ('best-...')."""
        return f"ensemble{len(self.members)}-{which}"

    def member_records(self) -> list[dict]:
        """Each member's run folder, checkpoint file and epoch, first run first (for JSON)."""
        return [{"run": str(RunFolder.of(path).path), "checkpoint": str(path), "epoch": member.epoch}
                for member, path in zip(self.members, self.checkpoints)]

    def uses_tiles(self, image: np.ndarray, tile: int | None = None) -> bool:
        """Whether some member predicts this image in tiles (`Predictor.uses_tiles`; tile default: the first
        run's eval.tile)."""
        tile = self.config.eval.tile if tile is None else tile
        return any(member.uses_tiles(image, tile) for member in self.members)

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 32, tta: str | None = None,
                      tile: int | None = None, overlap: int | None = None) -> list[np.ndarray]:
        """The mean of the members' `Predictor.predict_proba` (float32, each image at its own size); `tta`,
        `tile` and `overlap` default to the first run's eval.tta, eval.tile and eval.tile_overlap, for all."""
        eval_config = self.config.eval
        tta = eval_config.tta if tta is None else tta
        tile = eval_config.tile if tile is None else tile
        overlap = eval_config.tile_overlap if overlap is None else overlap
        total = self.members[0].predict_proba(images, batch_size, tta, tile, overlap)
        for member in self.members[1:]:
            for summed, probs in zip(total, member.predict_proba(images, batch_size, tta, tile, overlap)):
                summed += probs  # in place: one member's probabilities more at a time, not all of them
        if len(self.members) > 1:
            for summed in total:
                summed /= np.float32(len(self.members))
        return total

    # Decoding reads only task, threshold, min_area and min_component: the ensemble's, here.
    labels = Predictor.labels


def load_predictor(run: str | Path, which: str = "best", ensemble: Sequence[str | Path] = (),
                   device: str = "auto") -> Predictor | EnsemblePredictor:
    """`run`'s Predictor, or with `ensemble` runs (or checkpoints) the EnsemblePredictor of `run` and them."""
    if not ensemble:
        return Predictor.load(run, which, device=device)
    return EnsemblePredictor.load([run, *ensemble], which, device=device)


def run_records(predictor: Predictor | EnsemblePredictor, run: str | Path, which: str = "best") -> list[dict]:
    """The run(s) a predictor was loaded from (`run` and `which` as given to `load_predictor`), first run first:
    each one's folder, checkpoint file and epoch."""
    if isinstance(predictor, EnsemblePredictor):
        return predictor.member_records()
    path = RunFolder.resolve_checkpoint(run, which)
    return [{"run": str(RunFolder.of(path).path), "checkpoint": str(path), "epoch": predictor.epoch}]
