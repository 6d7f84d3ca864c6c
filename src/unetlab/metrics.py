"""Binary segmentation metrics (salt = positive class) on torch tensors, on any device.

Everything here is derived from per-image confusion counts ``[tp, fp, fn, tn]`` (int64),
so the metrics are exact up to one final division, and streaming, merging across processes
and threshold sweeps all give the same numbers as one pass over the whole set.

Binarising
----------
* Predictions: bool tensors are used as they are; integer tensors count as positive where
  non-zero; floating tensors are probabilities and are positive where ``probs > threshold``
  (**strictly above**, default threshold 0.5). With sigmoid outputs, ``> 0.5`` is the same as
  ``logit > 0``; a probability exactly equal to the threshold is background. The comparison is
  done in the probabilities' own dtype (as ``probs > threshold`` does in PyTorch), and
  :func:`scores_over_thresholds` uses the very same comparison, so a sweep matches the
  accumulator run at each threshold bit for bit.
* Targets: bool as is; integer non-zero; floating ``> 0.5`` (so 0./1. float masks work).

Shapes: ``(N, H, W)`` or ``(N, 1, H, W)`` (the channel axis is squeezed); pred and target must
have the same shape after squeezing.

Micro (pixel) metrics -- computed from the counts summed over every pixel of the set
-------------------------------------------------------------------------------------
With TP, FP, FN, TN the set-wide totals:

* ``pixel_accuracy`` = (TP + TN) / all pixels
* ``iou``            = TP / (TP + FP + FN); **1.0** when TP + FP + FN == 0 (no salt predicted, none there)
* ``dice``           = 2TP / (2TP + FP + FN); **1.0** when the denominator is 0 (same case)
* ``precision``      = TP / (TP + FP); when TP + FP == 0 (nothing predicted): **1.0** if there is
  also no salt in the truth (nothing to find, nothing claimed), else **0.0** (all salt missed)
* ``recall``         = TP / (TP + FN); **1.0** when TP + FN == 0 (no salt in the truth)

These match ``sklearn.metrics`` on the flattened pixels wherever sklearn's value is defined; in
the 0/0 cases sklearn returns its ``zero_division`` argument and we return the values above, so
an all-background set with an all-background prediction scores 1.0 everywhere and never NaN.

Per-image metrics -- computed per image, then averaged with each image weighing the same
-----------------------------------------------------------------------------------------
* ``mean_image_iou``: mean of per-image IoU = tp / (tp + fp + fn), 1.0 for an empty/empty image.
* ``tgs_map``: mean of the TGS Salt Identification (Kaggle) score. Per image, for each IoU
  threshold t in 0.50, 0.55, ..., 0.95 the image is a hit when its IoU is **strictly above** t
  (Kaggle: "IoU above the threshold"); the score is the fraction of the 10 thresholds hit.
  Empty truth and empty prediction scores 1.0; empty truth with any predicted salt scores 0.0;
  salt in the truth with an empty prediction scores 0.0 (IoU 0 is above no threshold).

Why exact rational comparison: IoUs exactly on a threshold are common on small masks (10/20,
11/20, ...), and in floating point ``11/20`` and ``0.55`` -- or ``0.55 * 20`` and ``11`` -- need not
compare the way the fractions do, so whether such an image counts would depend on rounding. We
compare integers instead: the IoU tp/u is above t = k/100 exactly when ``100 * tp > k * u``.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "TGS_IOU_THRESHOLDS",
    "binary_counts",
    "image_iou",
    "tgs_image_scores",
    "micro_scores",
    "BinarySegmentationMetrics",
    "scores_over_thresholds",
]

#: The 10 IoU thresholds of the TGS Salt metric, as percentages (exact integers).
_TGS_THRESHOLDS_PCT: tuple[int, ...] = tuple(50 + 5 * i for i in range(10))
#: The 10 IoU thresholds of the TGS Salt metric: (0.5, 0.55, ..., 0.95), each the float nearest k/100.
TGS_IOU_THRESHOLDS: tuple[float, ...] = tuple(k / 100 for k in _TGS_THRESHOLDS_PCT)

_TP, _FP, _FN, _TN = 0, 1, 2, 3
_MICRO_KEYS = ("pixel_accuracy", "iou", "dice", "precision", "recall")
# Pixels per chunk in scores_over_thresholds (bounds the int64 bucket-index buffer to ~128 MiB).
_SWEEP_CHUNK_PIXELS = 1 << 24


# --------------------------------------------------------------------------- helpers


def _squeeze_masks(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(
                f"{name}: 4-D input must be (N, 1, H, W) with one channel, got shape {tuple(x.shape)}"
            )
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name}: images must have at least one pixel, got shape {tuple(x.shape)}")
    return x


def _target_to_bool(target: torch.Tensor) -> torch.Tensor:
    if target.dtype == torch.bool:
        return target
    if target.is_floating_point():
        return target > 0.5
    if target.is_complex():
        raise TypeError("target: complex tensors are not masks")
    return target != 0


def _pred_to_bool(pred: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    if pred.dtype == torch.bool:
        return pred
    if pred.is_floating_point():
        return pred > threshold
    if pred.is_complex():
        raise TypeError("pred: complex tensors are neither probabilities nor masks")
    return pred != 0


def _check_counts(counts: torch.Tensor) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"counts: expected a torch.Tensor, got {type(counts).__name__}")
    if counts.ndim != 2 or counts.shape[1] != 4:
        raise ValueError(f"counts: expected shape (N, 4) [tp, fp, fn, tn], got {tuple(counts.shape)}")
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"counts: expected an integer tensor, got {counts.dtype}")
    return counts.to(torch.int64)


# --------------------------------------------------------------------------- functions


def binary_counts(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image confusion counts.

    ``pred``, ``target``: masks of shape (N, H, W) or (N, 1, H, W) -- bool, integer (non-zero is
    salt) or float (``> 0.5`` is salt; threshold probabilities yourself, or use
    :class:`BinarySegmentationMetrics`). ``valid`` (same shape, optional): only these pixels are
    counted -- ignored pixels (e.g. the Oxford Pet trimap border) are in no count at all, so they
    change neither IoU nor pixel accuracy. Returns int64 (N, 4): ``[tp, fp, fn, tn]`` per image,
    on ``pred``'s device. Sync-free (no ``.item()``); ``target`` is moved to ``pred``'s device.
    """
    p = _squeeze_masks(pred, "pred")
    t = _squeeze_masks(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    p = _target_to_bool(p)  # 0/1 masks: same rule as targets
    t = _target_to_bool(t).to(p.device)
    if valid is None:
        n_pixels = torch.full((p.shape[0],), p.shape[1] * p.shape[2], dtype=torch.int64, device=p.device)
    else:
        v = _squeeze_masks(valid, "valid")
        if v.shape != p.shape:
            raise ValueError(f"valid and pred shapes differ: {tuple(valid.shape)} vs {tuple(pred.shape)}")
        v = _target_to_bool(v).to(p.device)
        p, t = p & v, t & v
        n_pixels = v.sum(dim=(1, 2), dtype=torch.int64)
    tp = (p & t).sum(dim=(1, 2), dtype=torch.int64)
    n_pred = p.sum(dim=(1, 2), dtype=torch.int64)
    n_true = t.sum(dim=(1, 2), dtype=torch.int64)
    fp = n_pred - tp
    fn = n_true - tp
    tn = n_pixels - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1)


def image_iou(counts: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-image IoU tp / (tp + fp + fn) from (N, 4) counts; 1.0 for an empty/empty image."""
    c = _check_counts(counts)
    tp = c[:, _TP]
    union = tp + c[:, _FP] + c[:, _FN]
    iou = tp.to(dtype) / union.clamp_min(1).to(dtype)
    return torch.where(union == 0, torch.ones_like(iou), iou)


def _tgs_hits(counts: torch.Tensor) -> torch.Tensor:
    """int64 (N,): thresholds hit per image, with empty/empty counted as all 10 (exact integers)."""
    c = _check_counts(counts)
    tp = c[:, _TP]
    union = tp + c[:, _FP] + c[:, _FN]
    pct = torch.tensor(_TGS_THRESHOLDS_PCT, dtype=torch.int64, device=c.device)
    # IoU = tp/union > k/100  <=>  100*tp > k*union  (union > 0); exact in int64.
    hits = (100 * tp[:, None] > pct[None, :] * union[:, None]).sum(dim=1)
    # union == 0: empty truth and empty prediction -> perfect score. Every other "empty" case
    # has tp == 0 and union > 0, so it hits no threshold and scores 0 by the rule above.
    return torch.where(union == 0, torch.full_like(hits, len(_TGS_THRESHOLDS_PCT)), hits)


def tgs_image_scores(counts: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """TGS Salt (Kaggle) score per image from (N, 4) counts -> (N,) in {0, 0.1, ..., 1}.

    Fraction of the IoU thresholds 0.50..0.95 that the image's IoU is strictly above, compared
    exactly on integers; empty/empty = 1, empty truth xor empty prediction = 0.
    """
    return _tgs_hits(counts).to(dtype) / len(_TGS_THRESHOLDS_PCT)


def micro_scores(total: torch.Tensor) -> dict[str, torch.Tensor]:
    """Micro pixel metrics from summed counts ``total`` of shape (..., 4) ``[TP, FP, FN, TN]``.

    Returns float64 tensors of shape ``total.shape[:-1]`` for ``pixel_accuracy``, ``iou``,
    ``dice``, ``precision``, ``recall``, with the 0/0 conventions of the module docstring.
    (float64: exact for counts below 2**53; use CPU tensors on devices without float64.)
    """
    if total.shape[-1:] != (4,):
        raise ValueError(f"total: expected last dimension 4, got shape {tuple(total.shape)}")
    t = total.to(torch.int64)
    tp, fp, fn, tn = t[..., _TP], t[..., _FP], t[..., _FN], t[..., _TN]

    def ratio(num: torch.Tensor, den: torch.Tensor, if_zero: torch.Tensor | float) -> torch.Tensor:
        r = num.to(torch.float64) / den.clamp_min(1).to(torch.float64)
        fill = torch.as_tensor(if_zero, dtype=torch.float64, device=r.device).expand_as(r)
        return torch.where(den == 0, fill, r)

    no_truth = (tp + fn) == 0
    return {
        "pixel_accuracy": ratio(tp + tn, tp + fp + fn + tn, 1.0),
        "iou": ratio(tp, tp + fp + fn, 1.0),
        "dice": ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "precision": ratio(tp, tp + fp, no_truth.to(torch.float64)),
        "recall": ratio(tp, tp + fn, 1.0),
    }


# --------------------------------------------------------------------------- accumulator


class BinarySegmentationMetrics:
    """Streaming accumulator of per-image counts.

    ``update()`` never waits for the device (no ``.item()``, no copy to the host) and keeps int64
    counts on the device of the first batch; ``compute()`` syncs once and returns Python floats.

    >>> m = BinarySegmentationMetrics(threshold=0.5)
    >>> for probs, masks in loader:           # doctest: +SKIP
    ...     m.update(probs, masks)
    >>> m.compute()["tgs_map"]                # doctest: +SKIP

    Across processes: gather each process's ``state()`` (an (N_i, 4) int64 tensor), concatenate
    them and ``load_state(torch.cat(states))`` into one accumulator (or use ``merge_state``).
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._chunks: list[torch.Tensor] = []
        self._device: torch.device | None = None

    # ---- accumulation
    def update(
        self,
        probs_or_pred: torch.Tensor,
        target: torch.Tensor,
        threshold: float | None = None,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Add a batch. Float input = probabilities, salt where ``probs > threshold`` (strict;
        ``threshold`` defaults to the constructor's); bool/integer input = predicted mask
        (threshold unused). Shapes (N, H, W) or (N, 1, H, W). ``valid``: only these pixels count
        (see :func:`binary_counts`)."""
        thr = self.threshold if threshold is None else threshold
        pred = _squeeze_masks(probs_or_pred, "probs_or_pred")
        pred = _pred_to_bool(pred, thr)
        self._append(binary_counts(pred, target, valid))

    def _append(self, counts: torch.Tensor) -> None:
        if self._device is None:
            self._device = counts.device
        self._chunks.append(counts.to(self._device))

    def reset(self) -> None:
        self._chunks = []
        self._device = None

    def __len__(self) -> int:
        """Number of images accumulated."""
        return sum(c.shape[0] for c in self._chunks)

    # ---- state for merging across processes
    def state(self) -> torch.Tensor:
        """A copy of all per-image counts so far, int64 (N, 4) ``[tp, fp, fn, tn]`` (N may be 0)."""
        return self._state().clone()

    def _state(self) -> torch.Tensor:
        if not self._chunks:
            return torch.zeros((0, 4), dtype=torch.int64, device=self._device)
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks, dim=0)]
        return self._chunks[0]

    def load_state(self, counts: torch.Tensor) -> None:
        """Replace the accumulated counts by ``counts`` (N, 4), e.g. gathered from all processes."""
        c = _check_counts(counts)
        self.reset()
        self._append(c.clone())

    def merge_state(self, counts: torch.Tensor) -> None:
        """Append another accumulator's ``state()`` to this one."""
        self._append(_check_counts(counts))

    # ---- results
    def per_image(self) -> dict[str, torch.Tensor]:
        """``counts`` int64 (N, 4), ``tgs_score`` float32 (N,), ``iou`` float32 (N,), in update order."""
        c = self.state()
        return {"counts": c, "tgs_score": tgs_image_scores(c), "iou": image_iou(c)}

    def compute(self) -> dict[str, float]:
        """Keys: pixel_accuracy, iou, dice, precision, recall (micro, over all pixels of the set),
        tgs_map, mean_image_iou (per image, then averaged). Raises if nothing was added."""
        c = self._state()
        if c.shape[0] == 0:
            raise RuntimeError("BinarySegmentationMetrics.compute(): no images; call update() first")
        c = c.cpu()
        out = {k: float(v) for k, v in micro_scores(c.sum(dim=0)).items()}
        n = c.shape[0]
        out["tgs_map"] = int(_tgs_hits(c).sum()) / (len(_TGS_THRESHOLDS_PCT) * n)
        out["mean_image_iou"] = float(image_iou(c, dtype=torch.float64).sum()) / n
        return out


# --------------------------------------------------------------------------- threshold sweep


def _counts_over_thresholds(
    probs: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float]
) -> torch.Tensor:
    """int64 (T, N, 4) counts with pred = ``probs > thresholds[k]`` for each k, in one pass.

    Each pixel's probability is bucketed among the sorted thresholds (``bucketize`` = number of
    thresholds strictly below it, i.e. the thresholds at which it is predicted salt); per-image
    histograms of those buckets, over all pixels and over salt pixels, give by a reverse
    cumulative sum the predicted-positive and true-positive counts at every threshold.
    """
    p = _squeeze_masks(probs, "probs")
    t = _squeeze_masks(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"probs and target shapes differ: {tuple(probs.shape)} vs {tuple(target.shape)}")
    if not p.is_floating_point():
        raise TypeError(f"probs: expected a floating tensor of probabilities, got {p.dtype}")
    thr = [float(x) for x in thresholds]
    if len(thr) == 0:
        raise ValueError("thresholds: need at least one threshold")
    t = _target_to_bool(t).to(p.device)
    n, h, w = p.shape
    if n == 0:
        raise ValueError("probs: need at least one image")
    n_thr = len(thr)

    # Thresholds rounded to the probabilities' dtype, exactly as `probs > thr` compares them.
    bounds = torch.tensor(thr, dtype=p.dtype, device=p.device)
    work = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
    bounds = bounds.to(work)  # exact widening: comparisons are unchanged
    sorted_bounds, order = torch.sort(bounds)

    n_true = t.sum(dim=(1, 2), dtype=torch.int64)  # threshold-independent
    pred_pos = torch.empty((n, n_thr), dtype=torch.int64, device=p.device)
    true_pos = torch.empty((n, n_thr), dtype=torch.int64, device=p.device)
    per_chunk = max(1, _SWEEP_CHUNK_PIXELS // (h * w))
    nb = n_thr + 1
    for s in range(0, n, per_chunk):
        pc = p[s : s + per_chunk].to(work).reshape(-1, h * w)
        tc = t[s : s + per_chunk].reshape(-1, h * w)
        m = pc.shape[0]
        idx = torch.bucketize(pc, sorted_bounds, right=False)  # number of thresholds < prob
        idx = idx.masked_fill(torch.isnan(pc), 0)  # NaN > t is False for every t
        key = idx + nb * torch.arange(m, device=p.device)[:, None]
        hist_all = torch.bincount(key.reshape(-1), minlength=m * nb).reshape(m, nb)
        # salt pixels only: send background pixels to one extra dump bin (no boolean indexing)
        key_tp = torch.where(tc, key, m * nb)
        hist_tp = torch.bincount(key_tp.reshape(-1), minlength=m * nb + 1)[: m * nb].reshape(m, nb)
        # predicted salt at sorted threshold j <=> bucket > j: reverse cumsum over buckets j+1..T
        rev_all = hist_all.flip(1).cumsum(1).flip(1)[:, 1:]
        rev_tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:]
        pred_pos[s : s + m, order] = rev_all
        true_pos[s : s + m, order] = rev_tp

    tp = true_pos.T  # (T, N)
    fp = pred_pos.T - tp
    fn = n_true[None, :] - tp
    tn = h * w - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=2)


def scores_over_thresholds(
    probs: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Metrics at every probability threshold (salt where ``probs > threshold``), in one pass.

    Returns float64 CPU tensors of length ``len(thresholds)`` (in the given order):
    ``threshold``, ``precision``, ``recall``, ``iou``, ``dice`` (micro, as in
    :class:`BinarySegmentationMetrics`) and ``tgs_map``. Equal to running the accumulator at
    each threshold; the heavy work runs on ``probs``' device, O(pixels * log T).
    """
    counts = _counts_over_thresholds(probs, target, thresholds)  # (T, N, 4)
    n_img = counts.shape[1]
    total = counts.sum(dim=1).cpu()  # (T, 4)
    micro = micro_scores(total)
    hits = _tgs_hits(counts.reshape(-1, 4)).reshape(counts.shape[0], n_img).sum(dim=1).cpu()
    return {
        "threshold": torch.tensor([float(x) for x in thresholds], dtype=torch.float64),
        "precision": micro["precision"],
        "recall": micro["recall"],
        "iou": micro["iou"],
        "dice": micro["dice"],
        "tgs_map": hits.to(torch.float64) / (len(_TGS_THRESHOLDS_PCT) * n_img),
    }
