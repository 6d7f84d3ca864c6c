"""Train/validation splits, stratified by salt coverage, fixed by seed, saved as split.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unetlab.data.io import atomic_write_text
from unetlab.errors import DataError


def coverage_classes(coverage: np.ndarray, bins: int) -> np.ndarray:
    """Class 0 = empty mask; classes 1..bins split (0, 1] coverage into equal-width bins."""
    coverage = np.asarray(coverage, dtype=np.float64)
    classes = np.zeros(len(coverage), dtype=np.int64)
    nonempty = coverage > 0
    classes[nonempty] = 1 + np.minimum((coverage[nonempty] * bins).astype(np.int64), bins - 1)
    return classes


def stratified_split(strata: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, val) index arrays; each stratum contributes its share to validation.

    Rounding is done on the running total so the overall validation size is round(N * fraction)
    even when strata are small.
    """
    strata = np.asarray(strata)
    n = len(strata)
    if n < 2:
        raise DataError(f"need at least 2 samples to split into train and validation, got {n}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    taken, seen = 0, 0
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        rng.shuffle(members)
        seen += len(members)
        target = int(round(seen * val_fraction))
        count = max(0, min(len(members), target - taken))
        val.append(members[:count])
        taken += count
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    if len(val_idx) == 0 or len(val_idx) == n:
        raise DataError(f"validation fraction {val_fraction} of {n} samples leaves an empty split; "
                        "change data.val_fraction")
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx


def save_split(path: str | Path, ids: list[str], train_idx: np.ndarray, val_idx: np.ndarray,
               **meta: object) -> Path:
    payload = {**meta, "train": [ids[i] for i in train_idx], "val": [ids[i] for i in val_idx]}
    return atomic_write_text(path, json.dumps(payload, indent=1))


def load_split(path: str | Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Map a saved split onto `ids`; every id in the file must be present."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        train_ids, val_ids = payload["train"], payload["val"]
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: not a split file (expected JSON with 'train' and 'val' id lists)") from None
    position = {name: i for i, name in enumerate(ids)}
    missing = [name for name in list(train_ids) + list(val_ids) if name not in position]
    if missing:
        raise DataError(f"{path}: {len(missing)} id(s) of the split are not in the data (first: {missing[0]}); "
                        "use the data set the split was made from")
    return (np.array(sorted(position[i] for i in train_ids), dtype=np.int64),
            np.array(sorted(position[i] for i in val_ids), dtype=np.int64))
