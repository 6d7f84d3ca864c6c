"""Checkpoints: written atomically (temp file, then rename), read with `weights_only=True`.

A checkpoint is a plain dict of tensors, numbers and strings, never pickled objects, so that
loading one never runs code. It carries everything `predict` needs: the resolved config, the
input normalisation and the operating threshold.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from unetlab.errors import UnetlabError

FORMAT = "unetlab-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def resolve_checkpoint(run_or_file: str | Path, which: str = "best") -> Path:
    """A run folder (-> checkpoints/<which>.pt) or a checkpoint file."""
    path = Path(run_or_file)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file():
            raise UnetlabError(f"{path}: no checkpoints/{which}.pt in this run folder; "
                               "pass a run folder written by 'unetlab train'")
        return candidate
    if not path.exists():
        raise UnetlabError(f"{path}: run folder or checkpoint not found")
    return path
