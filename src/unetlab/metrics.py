"""Binary segmentation metrics (salt = positive class) on torch tensors, on any device.

Multiclass metrics (:func:`multiclass_confusion`, :class:`MulticlassSegmentationMetrics`) are in
their own section at the end of the module, with their definitions; the rest of this docstring is
about the binary ones.

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
* Image-level rules after the threshold (TGS post-processing), in this order: connected components
  (8-connected, :data:`COMPONENT_CONNECTIVITY`) of fewer than ``min_component`` pixels are removed
  (:func:`remove_small_components`); then an image with fewer than ``min_area`` predicted pixels left is
  predicted empty (:func:`drop_small_predictions`). Both default to 0 (off).

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

import math
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "TGS_IOU_THRESHOLDS",
    "binary_counts",
    "drop_small_predictions",
    "COMPONENT_CONNECTIVITY",
    "component_labels",
    "remove_small_components",
    "image_iou",
    "tgs_image_scores",
    "micro_scores",
    "set_scores",
    "BinarySegmentationMetrics",
    "scores_over_thresholds",
    "LABEL_ROUNDING_TOLERANCE",
    "multiclass_confusion",
    "multiclass_scores",
    "tag_safe_name",
    "MulticlassSegmentationMetrics",
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


def drop_small_predictions(pred: torch.Tensor, min_area: int) -> torch.Tensor:
    """bool (N, H, W) masks with every image that predicts fewer than `min_area` foreground pixels
    emptied (TGS post-processing: a few stray pixels on an empty image score 0, nothing scores 1)."""
    if min_area <= 0:
        return pred
    keep = pred.sum(dim=(-2, -1), dtype=torch.int64) >= min_area
    return pred & keep[:, None, None]


#: Connected components are 8-connected: pixels touching by an edge or a corner belong to one component
#: (a salt body joined only diagonally stays one body). Components never span two images of a stack.
COMPONENT_CONNECTIVITY = 8
_COMPONENT_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_COMPONENT_STRUCTURE[1] = True  # 8-connected in (H, W), nothing along the image axis


def component_labels(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of bool (N, H, W) masks (8-connected, within each image): int32 labels, 0 for
    background and 1..count for the components numbered in raster order over the stack, and count."""
    from scipy import ndimage  # imported here: scipy.ndimage costs ~0.4 s and only component rules need it

    labels, count = ndimage.label(np.asarray(masks, dtype=bool), structure=_COMPONENT_STRUCTURE)
    return labels, int(count)


def remove_small_components(pred: torch.Tensor, min_component: int) -> torch.Tensor:
    """bool (N, H, W) masks without their connected components (8-connected) of fewer than `min_component`
    pixels. Labelling runs on the host (scipy), so with `min_component` > 1 this waits for the device."""
    if min_component <= 1:  # every component has at least one pixel
        return pred
    labels, count = component_labels(pred.detach().cpu().numpy())
    if count == 0:
        return pred
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_component
    keep[0] = False
    return torch.from_numpy(keep[labels]).to(pred.device)


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

    def __init__(self, threshold: float = 0.5, min_area: int = 0, min_component: int = 0) -> None:
        if min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {min_area}")
        if min_component < 0:
            raise ValueError(f"min_component must be >= 0, got {min_component}")
        self.threshold = threshold
        self.min_area = min_area
        self.min_component = min_component
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
        (see :func:`binary_counts`). The image-level rules, in this order (as `tasks.BinaryTask.decode`):
        with ``min_component`` > 0, connected components (8-connected) of fewer pixels than that are
        removed (this one waits for the device: scipy labels on the host); then with ``min_area`` > 0, an
        image predicting fewer foreground pixels than that (counted over the whole image, ignored pixels
        included) is predicted empty."""
        thr = self.threshold if threshold is None else threshold
        pred = _squeeze_masks(probs_or_pred, "probs_or_pred")
        pred = remove_small_components(_pred_to_bool(pred, thr), self.min_component)
        pred = drop_small_predictions(pred, self.min_area)
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
        return {k: float(v) for k, v in set_scores(c.cpu()).items()}


def set_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The set's metrics from per-image counts (..., N, 4) ``[tp, fp, fn, tn]``, for any leading axes (e.g.
    one set of counts per threshold): float64 tensors of shape ``counts.shape[:-2]`` for the keys of
    :meth:`BinarySegmentationMetrics.compute`, which is this function on its (N, 4) counts."""
    if counts.ndim < 2 or counts.shape[-1] != 4 or counts.shape[-2] == 0:
        raise ValueError(f"counts: expected shape (..., N, 4) with N >= 1 images, got {tuple(counts.shape)}")
    c = _check_counts(counts.reshape(-1, 4)).reshape(counts.shape)
    n = c.shape[-2]
    out = micro_scores(c.sum(dim=-2))
    hits = _tgs_hits(c.reshape(-1, 4)).reshape(c.shape[:-1]).sum(dim=-1)  # exact integers
    out["tgs_map"] = hits.to(torch.float64) / (len(_TGS_THRESHOLDS_PCT) * n)
    out["mean_image_iou"] = image_iou(c.reshape(-1, 4), dtype=torch.float64).reshape(c.shape[:-1]).sum(dim=-1) / n
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


def _drop_small_counts(counts: torch.Tensor, min_area: int) -> torch.Tensor:
    """(..., 4) whole-image counts as if images predicting fewer than `min_area` pixels predicted none."""
    if min_area <= 0:
        return counts
    tp, fp, fn, tn = counts.unbind(-1)
    small = (tp + fp) < min_area
    zero = torch.zeros_like(tp)
    return torch.stack([torch.where(small, zero, tp), torch.where(small, zero, fp),
                        torch.where(small, fn + tp, fn), torch.where(small, tn + fp, tn)], dim=-1)


def scores_over_thresholds(
    probs: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float], min_area: int = 0
) -> dict[str, torch.Tensor]:
    """Metrics at every probability threshold (salt where ``probs > threshold``), in one pass.

    Returns float64 CPU tensors of length ``len(thresholds)`` (in the given order):
    ``threshold``, ``precision``, ``recall``, ``iou``, ``dice`` (micro, as in
    :class:`BinarySegmentationMetrics`) and ``tgs_map``. Equal to running the accumulator (with
    the same ``min_area``) at each threshold; the heavy work runs on ``probs``' device,
    O(pixels * log T).
    """
    counts = _drop_small_counts(_counts_over_thresholds(probs, target, thresholds), min_area)  # (T, N, 4)
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


# --------------------------------------------------------------------------- multiclass
#
# Multiclass metrics (CamVid, VOC, ...): everything is derived from one (C, C) int64 confusion
# matrix summed over all valid pixels of the set (rows = truth, columns = prediction), so they
# are exact up to the final divisions, and streaming / merging give the same numbers as one pass.
#
# Out-of-range values. A target (or integer prediction) outside 0..C-1 at a *valid* pixel is an
# error: the matrix cannot hold it, and silently dropping it would bias every metric. Checking it
# needs the device to report back, so the choice made here is:
#   * the accumulator never syncs in update(): such pixels are kept out of the matrix, and the
#     range of the valid values (min, max, worst distance of a float target from an integer) is
#     kept on the device as 5 numbers; compute(), confusion() and state() look at them (one small
#     copy) and raise ValueError naming the offending value -- a bad batch poisons the
#     accumulator until reset(), so a wrong number is never returned or exported;
#   * multiclass_confusion(check=True) (the default) makes that one small copy itself and raises
#     at once; check=False is sync-free and leaves out-of-range pixels out of the matrix.

#: A float target further than this from the nearest integer at a valid pixel is not a class index
#: (e.g. a label map resampled with bilinear interpolation) and is refused; closer values are rounded.
LABEL_ROUNDING_TOLERANCE = 0.01

# running range stats: [target min, target max, |target - round(target)| max, pred min, pred max]
_INF = float("inf")
_NEUTRAL_STATS = (_INF, -_INF, 0.0, _INF, -_INF)


def _stats_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _neutral_stats(device: torch.device) -> torch.Tensor:
    return torch.tensor(_NEUTRAL_STATS, dtype=_stats_dtype(device), device=device)


def _combine_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # torch.minimum / maximum propagate NaN, so a NaN target anywhere is never forgotten
    return torch.stack([
        torch.minimum(a[0], b[0]), torch.maximum(a[1], b[1]), torch.maximum(a[2], b[2]),
        torch.minimum(a[3], b[3]), torch.maximum(a[4], b[4]),
    ])


def _as_labels(x: torch.Tensor, name: str) -> torch.Tensor:
    """Class-index tensor: bool -> 0/1, integers as they are, floats rounded (checked later)."""
    if x.is_complex():
        raise TypeError(f"{name}: complex tensors are not class indices")
    if x.is_floating_point():
        return torch.round(x)
    return x.to(torch.int64)  # bool -> 0/1; any integer width compares safely with C - 1


def _value_range(x: torch.Tensor, ok: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.to(dtype)
    return torch.where(ok, xf, _INF).amin(), torch.where(ok, xf, -_INF).amax()


def _confusion_and_stats(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, valid: torch.Tensor | None, pred_checked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C) int64 confusion and the 5 range stats of the valid values, both on pred's device, sync-free."""
    c = _check_num_classes(num_classes)
    p = _squeeze_masks(pred, "pred")
    t = _squeeze_masks(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if p.is_floating_point():
        raise TypeError(
            "pred: expected class indices (integer or bool), got a floating tensor; take the argmax of "
            "the scores over the class axis first, or pass the (N, C, H, W) scores to "
            "MulticlassSegmentationMetrics.update"
        )
    device = p.device
    raw_t = t.to(device)
    t = _as_labels(raw_t, "target")
    p = _as_labels(p, "pred")
    if valid is None:
        v = torch.ones(p.shape, dtype=torch.bool, device=device)
    else:
        v = _squeeze_masks(valid, "valid")
        if v.shape != p.shape:
            raise ValueError(f"valid and pred shapes differ: {tuple(valid.shape)} vs {tuple(pred.shape)}")
        v = _target_to_bool(v).to(device)
    t_ok = (t >= 0) & (t <= c - 1)  # False for NaN
    p_ok = (p >= 0) & (p <= c - 1)
    ok = v & t_ok & p_ok
    t_idx = torch.where(ok, t, 0).to(torch.int64)  # NaN/inf never reach the integer cast
    key = torch.where(ok, t_idx * c + p, c * c)  # ignored or out-of-range pixels: one dump bin
    conf = torch.bincount(key.reshape(-1), minlength=c * c + 1)[: c * c].reshape(c, c)

    sd = _stats_dtype(device)
    if p.numel() == 0:
        return conf, _neutral_stats(device)
    t_min, t_max = _value_range(t, v, sd)
    if raw_t.is_floating_point():
        frac = torch.where(v, (raw_t.to(sd) - t.to(sd)).abs(), 0.0).amax()
    else:
        frac = torch.zeros((), dtype=sd, device=device)
    if pred_checked:  # argmax output: in range by construction
        p_min = torch.full((), _INF, dtype=sd, device=device)
        p_max = torch.full((), -_INF, dtype=sd, device=device)
    else:
        p_min, p_max = _value_range(p, v, sd)
    return conf, torch.stack([t_min, t_max, frac, p_min, p_max])


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _fmt(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else repr(value)


def _raise_if_out_of_range(stats: torch.Tensor, num_classes: int) -> None:
    """One small device -> host copy; raises ValueError naming the first bad value found."""
    t_min, t_max, frac, p_min, p_max = stats.tolist()
    top = num_classes - 1
    hint = ("; mark ignored pixels (e.g. the ignore label 255) invalid with valid=(target != ignore_index)")
    if math.isnan(t_min) or math.isnan(t_max) or math.isnan(frac):
        raise ValueError("target: NaN at valid pixels; class indices must be finite" + hint)
    seen_t, seen_p = t_min <= t_max, p_min <= p_max  # False while nothing valid was seen (+inf, -inf)
    for value in (t_min, t_max) if seen_t else ():
        if value < 0 or value > top:
            raise ValueError(f"target: value {_fmt(value)} at valid pixels is not a class in 0..{top}" + hint)
    if frac > LABEL_ROUNDING_TOLERANCE:
        raise ValueError(
            f"target: a float label {frac:.3g} away from the nearest integer at valid pixels is not a class "
            "index; resample label maps with nearest-neighbour interpolation"
        )
    for value in (p_min, p_max) if seen_p else ():
        if value < 0 or value > top:
            raise ValueError(f"pred: value {_fmt(value)} at valid pixels is not a class in 0..{top}")


def multiclass_confusion(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    valid: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Confusion matrix over all pixels of the batch: int64 (C, C), rows = truth, columns = prediction.

    ``pred``: class indices, integer or bool, (N, H, W) or (N, 1, H, W) (take the argmax of scores
    first). ``target``: class indices of the same shape -- integer, bool, or float (e.g. after
    augmentation), which is rounded to the nearest integer (2.0000001 -> 2; a value more than
    ``LABEL_ROUNDING_TOLERANCE`` from an integer is an error). ``valid`` (optional, same shape;
    bool, integer non-zero, float > 0.5): pixels where it is False are counted nowhere, whatever
    their target holds (so an ignore label such as 255 or CamVid's 11 goes there).

    Computed with one ``bincount`` on ``pred``'s device (``target`` is moved there). A target or
    prediction outside 0..C-1 at a valid pixel (or a NaN) raises ValueError naming the value; with
    ``check=True`` (default) that costs one tiny device -> host copy. ``check=False`` is sync-free and
    leaves such pixels out of the matrix silently (:class:`MulticlassSegmentationMetrics` runs
    without the sync and raises in ``compute()`` instead).
    """
    conf, stats = _confusion_and_stats(pred, target, num_classes, valid, pred_checked=False)
    if check:
        _raise_if_out_of_range(stats, num_classes)
    return conf


def tag_safe_name(name: str) -> str:
    """A class name as a metric/TensorBoard tag part: lowercase, whitespace -> '_', and any character
    other than a-z 0-9 _ . - replaced by '_' ('Sign Symbol' -> 'sign_symbol', 'a/b' -> 'a_b')."""
    out = "_".join(str(name).strip().lower().split())
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "_.-" else "_" for ch in out)


def multiclass_scores(confusion: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Scores from a (C, C) confusion matrix (rows = truth, columns = prediction); see
    :class:`MulticlassSegmentationMetrics` for the definitions. Keys: ``pixel_accuracy``,
    ``mean_accuracy``, ``miou``, ``mean_dice``, ``fw_iou`` and ``iou/<name>`` per class."""
    cm = confusion
    if not isinstance(cm, torch.Tensor):
        raise TypeError(f"confusion: expected a torch.Tensor, got {type(cm).__name__}")
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion: expected a square (C, C) matrix, got shape {tuple(cm.shape)}")
    c = cm.shape[0]
    names = _class_keys(c, class_names)
    cm = cm.detach().to("cpu", torch.float64)  # float64: exact for counts below 2**53
    tp = torch.diagonal(cm)
    truth = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    union = truth + predicted - tp
    total = float(cm.sum())
    nan = math.nan
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, nan))
    dice = torch.where(union > 0, 2 * tp / (truth + predicted).clamp_min(1), torch.full_like(tp, nan))
    recall = torch.where(truth > 0, tp / truth.clamp_min(1), torch.full_like(tp, nan))
    present = truth > 0
    defined = union > 0

    def mean(values: torch.Tensor, where: torch.Tensor) -> float:
        return float(values[where].mean()) if bool(where.any()) else nan

    out = {
        "pixel_accuracy": float(tp.sum()) / total if total > 0 else nan,
        "mean_accuracy": mean(recall, present),
        "miou": mean(iou, defined),
        "mean_dice": mean(dice, defined),
        "fw_iou": float((truth[present] * iou[present]).sum()) / total if total > 0 else nan,
    }
    for key, value in zip(names, iou.tolist()):
        out[f"iou/{key}"] = value
    return out


def _class_keys(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [f"class{k}" for k in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for {num_classes} classes")
    keys = [tag_safe_name(n) for n in names]
    seen: dict[str, str] = {}
    for name, key in zip(names, keys):
        if not key:
            raise ValueError(f"class_names: {name!r} gives an empty metric name")
        if key in seen:
            raise ValueError(f"class_names: {seen[key]!r} and {name!r} both become metric name {key!r}")
        seen[key] = name
    return keys


class MulticlassSegmentationMetrics:
    """Streaming multiclass metrics from one (C, C) int64 confusion matrix (rows = truth, columns =
    prediction) summed over every valid pixel of the set.

    ``update()`` never waits for the device (no ``.item()``): the matrix stays on the device of the
    first batch. ``compute()`` syncs once and returns Python floats.

    Definitions, with n_ij the pixels of true class i predicted as j, t_i = sum_j n_ij (truth),
    p_j = sum_i n_ij (prediction), u_i = t_i + p_i - n_ii (union) and T = all valid pixels:

    * ``pixel_accuracy`` = sum_i n_ii / T
    * ``mean_accuracy``  = mean of the recalls n_ii / t_i over the classes present in the truth
      (t_i > 0); equals sklearn's ``balanced_accuracy_score`` on the valid pixels
    * ``iou/<name>``     = n_ii / u_i per class; **NaN** when u_i == 0 (the class is neither in the
      truth nor predicted: undefined, not 0 and not 1). A class only predicted has IoU 0.
    * ``miou``           = mean of the defined per-class IoUs (classes with u_i > 0); a class absent
      from both truth and prediction is left out of the mean rather than counted as 0 or 1
    * ``mean_dice``      = mean of 2 n_ii / (t_i + p_i) over the same classes as ``miou``
    * ``fw_iou``         = sum_i (t_i / T) * IoU_i (frequency-weighted IoU; classes absent from the
      truth weigh 0)

    ``<name>`` is the class name lowercased with spaces as '_' (see :func:`tag_safe_name`), or
    ``class0``, ``class1``, ... without ``class_names``.

    Ignore: pixels where ``valid`` is False are in no count at all (they change no metric), whatever
    the target holds there -- pass ``valid = target != ignore_index`` for CamVid's 11 or VOC's 255.
    A target or prediction outside 0..C-1 at a *valid* pixel is an error, raised (naming the value) by
    the next ``compute()``, ``confusion()`` or ``state()`` -- not in ``update()``, which would cost a
    device sync per batch; the accumulator stays refused until ``reset()``.

    Undefined cases: ``compute()`` before any ``update()`` raises RuntimeError. With images but no
    valid pixel at all (everything ignored) every value is **NaN** -- nothing was scored -- rather
    than an exception that would stop a training run. A mean over no class is NaN likewise.

    State, for merging across processes: ``state()`` is a 1-D int64 tensor of length C*C + 1, the
    row-major confusion matrix followed by the number of images. States add: summing them (e.g.
    ``torch.distributed.all_reduce(state, op=SUM)``), or ``merge_state`` of each into one
    accumulator, gives the accumulator of the whole set; ``load_state`` takes one state (or a stack
    (P, C*C + 1), which it sums).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self._keys = _class_keys(num_classes, class_names)
        self.reset()

    # ---- accumulation
    def update(
        self,
        logits_probs_or_pred: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Add a batch. Float input: scores (logits or probabilities) (N, C, H, W), the prediction is
        their argmax over dim 1. Integer or bool input: the predicted class indices, (N, H, W) or
        (N, 1, H, W). ``target``/``valid`` as in :func:`multiclass_confusion`."""
        x = logits_probs_or_pred
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"logits_probs_or_pred: expected a torch.Tensor, got {type(x).__name__}")
        scores = x.is_floating_point()
        if scores:
            if x.ndim != 4 or x.shape[1] != self.num_classes:
                raise ValueError(
                    f"float input are class scores and must be (N, {self.num_classes}, H, W), got shape "
                    f"{tuple(x.shape)}; pass predicted class indices as an integer tensor"
                )
            x = x.argmax(dim=1)
        conf, stats = _confusion_and_stats(x, target, self.num_classes, valid, pred_checked=scores)
        if self._conf is None:
            self._conf, self._stats = conf, stats
        else:
            self._conf += conf.to(self._conf.device)
            self._stats = _combine_stats(self._stats, stats.to(self._stats.device, self._stats.dtype))
        self._n_images += int(x.shape[0])

    def reset(self) -> None:
        self._conf: torch.Tensor | None = None
        self._stats: torch.Tensor | None = None
        self._n_images = 0

    def __len__(self) -> int:
        """Number of images accumulated."""
        return self._n_images

    def _checked(self) -> torch.Tensor:
        if self._conf is None:
            return torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)
        _raise_if_out_of_range(self._stats, self.num_classes)
        return self._conf

    def confusion(self) -> torch.Tensor:
        """A copy of the int64 (C, C) matrix so far (rows = truth, columns = prediction)."""
        return self._checked().clone()

    # ---- state for merging across processes
    def state(self) -> torch.Tensor:
        """int64 (C*C + 1,): the row-major confusion matrix, then the image count (a copy)."""
        conf = self._checked()
        n = torch.tensor([self._n_images], dtype=torch.int64, device=conf.device)
        return torch.cat([conf.reshape(-1), n])

    def _check_state(self, state: torch.Tensor) -> torch.Tensor:
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"state: expected a torch.Tensor, got {type(state).__name__}")
        size = self.num_classes**2 + 1
        if state.ndim not in (1, 2) or state.shape[-1] != size:
            raise ValueError(f"state: expected shape ({size},) or (P, {size}) for {self.num_classes} classes, "
                             f"got {tuple(state.shape)}")
        if state.is_floating_point() or state.is_complex() or state.dtype == torch.bool:
            raise TypeError(f"state: expected an integer tensor, got {state.dtype}")
        s = state.to(torch.int64)
        return s.sum(dim=0) if s.ndim == 2 else s

    def load_state(self, state: torch.Tensor) -> None:
        """Replace everything accumulated by ``state`` (from :meth:`state`, or a stack of them, summed)."""
        s = self._check_state(state)
        self.reset()
        self._add_state(s)

    def merge_state(self, state: torch.Tensor) -> None:
        """Add another accumulator's :meth:`state` to this one."""
        self._add_state(self._check_state(state))

    def _add_state(self, s: torch.Tensor) -> None:
        c = self.num_classes
        conf = s[: c * c].reshape(c, c)
        n = int(s[c * c])
        if n < 0 or bool((conf < 0).any()):
            raise ValueError("state: negative counts")
        if self._conf is None:
            self._conf = conf.clone()
            self._stats = _neutral_stats(conf.device)
        else:
            self._conf += conf.to(self._conf.device)
        self._n_images += n

    # ---- results
    def compute(self) -> dict[str, float]:
        """pixel_accuracy, mean_accuracy, miou, mean_dice, fw_iou and iou/<name> per class (see the
        class docstring). Raises RuntimeError if nothing was added, ValueError on out-of-range labels."""
        if self._n_images == 0:
            raise RuntimeError("MulticlassSegmentationMetrics.compute(): no images; call update() first")
        return multiclass_scores(self._checked(), self._keys)
