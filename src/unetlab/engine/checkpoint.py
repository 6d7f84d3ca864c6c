"""Checkpoints: written atomically (`unetlab.files`), read with `weights_only=True`; where a run keeps
them (`checkpoints/<which>.pt`) is `RunFolder`'s business.

A checkpoint is a plain dict of tensors, numbers and strings, never pickled objects, so that
loading one never runs code. It carries everything `predict` needs: the resolved config, the
input normalisation and the operating threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unetlab.errors import UnetlabError
from unetlab.files import atomic_path
from unetlab.models.weights import load_weights_only

#: What best.pt (and a snapshot) holds: the validated weights and what predicting needs; last.pt holds these too.
BEST_KEYS = ("model_state", "config", "mean", "std", "threshold", "epoch", "class_names", "palette", "metrics")


def best_part(last: dict[str, Any]) -> dict[str, Any]:
    """best.pt's content out of a last.pt checkpoint."""
    return {key: last[key] for key in BEST_KEYS if key in last}

FORMAT = "unetlab-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UnetlabError(f"{path}: checkpoint not found")
    payload = load_weights_only(path, "use a checkpoint unetlab wrote (a run's checkpoints/best.pt or last.pt), "
                                "or re-save the weights as a state dict: torch.save(model.state_dict(), path)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UnetlabError(f"{path}: not a unetlab checkpoint (missing format tag {FORMAT!r})")
    return payload

