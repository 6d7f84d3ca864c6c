"""Train/validation splits, stratified by salt coverage (or by dominant class), fixed by seed.

Single splits are saved as split.json (`save_split` / `load_split`), k-fold cross-validation folds as
folds.json (`save_kfold` / `load_kfold`); both store ids, not positions, so they survive a data set
that lists its files in another order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from unetlab.errors import DataError
from unetlab.files import atomic_write_text


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


def read_split_ids(path: str | Path) -> tuple[list[str], list[str]] | None:
    """A saved split's (train ids, val ids), each sorted; None when the file is missing or not a split file
    (for comparing runs' splits, where no split is an answer rather than an error)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return sorted(payload["train"]), sorted(payload["val"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


# ----------------------------------------------------------------------------- multi-class strata


def dominant_class_strata(masks: Iterable[np.ndarray], num_classes: int, ignore_index: int | None = None,
                          min_fraction: float = 0.01) -> np.ndarray:
    """One stratum per image for multi-class data: its dominant foreground class, else 0.

    The rule, per image: among the classes other than the background class 0, take those that
    cover at least `min_fraction` (1 %) of the image's labelled pixels (pixels equal to
    `ignore_index` are not counted, neither as a class nor in the total); the stratum is the most
    frequent of them (ties: the lowest class index). If there is none (only background, foreground
    below 1 %, or nothing labelled) the stratum is 0. Returns int64 (N,), values in [0, num_classes).

    Values outside [0, num_classes) other than `ignore_index` raise ValueError naming the value.
    """
    from unetlab.data.stats import class_pixel_counts_per_image

    counts = class_pixel_counts_per_image(masks, num_classes, ignore_index)
    strata = np.zeros(len(counts), dtype=np.int64)
    if counts.shape[1] < 2 or len(counts) == 0:
        return strata
    labelled = counts.sum(axis=1)
    foreground = counts[:, 1:]
    # at least min_fraction of the labelled pixels (relative tolerance for 1 % of e.g. 10000 pixels)
    qualifies = (foreground > 0) & (foreground >= min_fraction * labelled[:, None] * (1 - 1e-12))
    best = np.argmax(np.where(qualifies, foreground, -1), axis=1)  # argmax: first (lowest) on ties
    has = qualifies.any(axis=1)
    strata[has] = best[has] + 1
    return strata


# ----------------------------------------------------------------------------- k-fold


def kfold_splits(strata: Sequence | np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold cross-validation: k sorted (train_idx, val_idx) int64 pairs.

    Every index is in exactly one validation fold (and in the training part of the other k - 1);
    the validation folds' sizes differ by at most 1, and so do the numbers of each stratum's members
    in each fold (a stratum of m members puts floor(m / k) or ceil(m / k) in every fold, the same
    per-stratum fold sizes as sklearn's StratifiedKFold). A stratum smaller than k simply leaves some
    folds without it. Deterministic by seed; different seeds shuffle differently.

    Method: each stratum is shuffled, the strata are laid end to end, and position p goes to fold
    p mod k (any run of consecutive positions spreads evenly over the folds); the fold numbers are
    then permuted at random so that the folds which get one extra sample are not always the first.
    """
    strata = np.asarray(strata)
    n = len(strata)
    if int(k) != k or k < 2:
        raise DataError(f"k-fold cross-validation needs k >= 2 folds, got k={k}")
    k = int(k)
    if k > n:
        raise DataError(f"cannot make {k} folds of {n} samples: every fold needs a validation sample; "
                        f"use k <= {n}")
    rng = np.random.default_rng(seed)
    order: list[np.ndarray] = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        rng.shuffle(members)
        order.append(members)
    ordered = np.concatenate(order)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[ordered] = rng.permutation(k)[np.arange(n) % k]
    everything = np.arange(n, dtype=np.int64)
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


def save_kfold(path: str | Path, ids: list[str], folds: Sequence[tuple[np.ndarray, np.ndarray]],
               **meta: object) -> Path:
    """Write folds as JSON {**meta, "k": k, "folds": [{"train": [ids], "val": [ids]}, ...]}, atomically."""
    payload = {**meta, "k": len(folds),
               "folds": [{"train": [ids[i] for i in train], "val": [ids[i] for i in val]} for train, val in folds]}
    return atomic_write_text(path, json.dumps(payload, indent=1))


def load_kfold(path: str | Path, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Map saved folds onto `ids`: sorted int64 (train_idx, val_idx) per fold; every id must be present."""
    path = Path(path)
    not_kfold = f"{path}: not a k-fold file (expected JSON with 'k' and 'folds': [{{'train': [...], 'val': [...]}}])"
    try:
        payload = json.loads(path.read_text())
        k, folds = payload["k"], payload["folds"]
        pairs = [(list(fold["train"]), list(fold["val"])) for fold in folds]
        if not all(isinstance(name, str) for train, val in pairs for name in train + val):
            raise TypeError
    except FileNotFoundError:
        raise DataError(f"{path}: k-fold file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(not_kfold) from None
    if not isinstance(k, int) or isinstance(k, bool) or k != len(pairs):
        raise DataError(f"{path}: the file says k={k!r} but holds {len(pairs)} fold(s); the file is damaged")
    position = {name: i for i, name in enumerate(ids)}
    missing = list(dict.fromkeys(name for train, val in pairs for name in train + val if name not in position))
    if missing:
        raise DataError(f"{path}: {len(missing)} id(s) of the folds are not in the data (first: {missing[0]}); "
                        "use the data set the folds were made from")
    return [(np.array(sorted(position[i] for i in train), dtype=np.int64),
             np.array(sorted(position[i] for i in val), dtype=np.int64)) for train, val in pairs]
