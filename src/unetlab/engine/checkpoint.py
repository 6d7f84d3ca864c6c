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

FORMAT = "unetlab-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UnetlabError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UnetlabError(f"{path}: not a readable unetlab checkpoint ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UnetlabError(f"{path}: not a unetlab checkpoint (missing format tag {FORMAT!r})")
    return payload

