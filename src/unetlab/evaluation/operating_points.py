"""Operating points of binary runs: the threshold and the image-level rules a named criterion chooses.

An operating point is a decoding: salt where probability > ``threshold``; then connected components
(8-connected, `metrics.COMPONENT_CONNECTIVITY`) of fewer than ``min_component`` pixels removed; then an
image left with fewer than ``min_area`` predicted pixels predicted empty (the order of
`tasks.BinaryTask.decode` and `metrics.BinarySegmentationMetrics`). Precision, recall, F1 (the Dice of
salt pixels) and IoU are over all valid salt pixels of the set; TGS is the mean per-image TGS metric.

Criteria (`parse_criterion`), each maximised over the search space below:

* ``max-f1``, ``max-iou``, ``max-tgs``: the largest F1, IoU or TGS metric;
* ``max-fbeta:B``: the largest F-beta = (1 + B²) TP / ((1 + B²) TP + B² FN + FP); B > 1 weighs recall
  more, B < 1 precision (1.0 when the set has no salt and none is predicted, as F1);
* ``precision@recall>=R``: the largest precision among the points with recall >= R (R in (0, 1]);
* ``recall@precision>=P``: the largest recall among the points with precision >= P (P in (0, 1]).
  When no point meets the constraint the criterion is *unreachable*: the point says so (with the best
  value of the constrained metric that was reached) and has no threshold, rather than a made-up one.

Ties: among equal goals, a constrained criterion prefers the larger constrained metric and max-tgs (whose
values step by 1/(10 N)) the larger F1; what is still tied goes to the simplest rule, the first candidate in
the order (min_component, min_area, threshold), all ascending.

Search space: thresholds k / STEPS (k = 1 .. STEPS - 1, STEPS = 1000), ``min_area`` in AREAS and
``min_component`` in COMPONENTS.

One pass, exact. Each pixel's probability is bucketed among the grid thresholds (``torch.bucketize``
against the thresholds rounded to the probabilities' dtype, which is how ``probs > t`` compares them)
and counted per image in three histograms: valid salt, valid background and ignored pixels (`valid`
False: counted only for the min-area rule, which counts every predicted pixel of the image, like
`metrics.drop_small_predictions`). Reverse cumulative sums give every image's exact tp, fp, fn, tn and
predicted-pixel count at all 999 thresholds at once: the thresholds are the bin edges, so "p > t" counts
are the reference accumulator's, bit for bit, not interpolations. The min-area rule acts on these
per-image counts alone (an image with fewer predicted pixels than A gives up its tp to fn and its fp to
tn), so every (threshold, min_area) pair is scored exactly from the same histograms.

The smallest-component rule cannot come from histograms: whether a pixel survives depends on its
neighbours. It is searched honestly on a coarse grid instead: for every criterion, its best threshold
without components +/- NEIGHBOURHOOD (or every 0.05 when that criterion is unreachable there), the
predicted masks of the whole set are labelled once per threshold (scipy.ndimage.label, one call for the
stack, components never spanning two images); each component's size, salt and background pixel counts
are tallied once, and every K of COMPONENTS is then a filter on component sizes, summed back per image.
These counts are exact too, only at fewer thresholds; a component point can therefore win only where it
beats the fine threshold-only grid on the coarse one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from unetlab.errors import UnetlabError
from unetlab.metrics import component_labels, set_scores

STEPS = 1000
AREAS = (0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300)
COMPONENTS = (0, 5, 10, 20, 50, 100)
NEIGHBOURHOOD = (-0.1, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1)
COARSE = tuple(round(0.05 * k, 2) for k in range(1, 20))  # component thresholds of an unreachable criterion
CRITERIA_HELP = "max-f1, max-iou, max-tgs, max-fbeta:B, precision@recall>=R or recall@precision>=P"
_TP, _FP, _FN, _TN, _PRED = range(5)
_CHUNK_PIXELS = 1 << 22  # pixels bucketed at once (bounds the int64 key buffer to 32 MiB)
_GOALS = {"max-f1": "dice", "max-iou": "iou", "max-tgs": "tgs_map"}


# --------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class Criterion:
    """A parsed criterion: maximise `goal` (a score key, or "fbeta"), where `constraint` >= `bound` if given."""

    text: str
    goal: str
    beta: float | None = None
    constraint: str | None = None
    bound: float | None = None


def _number(text: str, value: str, what: str, low_open: float, high: float | None) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    inside = math.isfinite(number) and number > low_open and (high is None or number <= high)
    if not inside:
        where = f"({low_open:g}, {high:g}]" if high is not None else f"(0, inf), e.g. {text.split(':')[0]}:2"
        raise UnetlabError(f"--choose {text}: {what} must lie in {where}")
    return number


def parse_criterion(text: str) -> Criterion:
    """`max-f1`, `max-iou`, `max-tgs`, `max-fbeta:B`, `precision@recall>=R`, `recall@precision>=P` (spaces and
    case ignored); anything else is a one-line UnetlabError naming the option and the valid forms."""
    name = "".join(str(text).split()).lower()
    if name in _GOALS:
        return Criterion(name, _GOALS[name])
    if name.startswith("max-fbeta:"):
        beta = _number(name, name.split(":", 1)[1], "B", 0.0, None)
        return Criterion(f"max-fbeta:{beta:g}", "fbeta", beta=beta)
    match = re.fullmatch(r"(precision|recall)@(precision|recall)>=(.*)", name)
    if match and match[1] != match[2]:
        letter = "R" if match[2] == "recall" else "P"
        bound = _number(name, match[3], letter, 0.0, 1.0)
        return Criterion(f"{match[1]}@{match[2]}>={bound:g}", match[1], constraint=match[2], bound=bound)
    raise UnetlabError(f"--choose {text!r}: unknown criterion; use {CRITERIA_HELP}")


def parse_criteria(texts: Sequence[str]) -> list[Criterion]:
    """Parsed criteria, each once (in the given order)."""
    criteria: dict[str, Criterion] = {}
    for text in texts:
        criterion = parse_criterion(text)
        criteria.setdefault(criterion.text, criterion)
    return list(criteria.values())


# --------------------------------------------------------------------------- counts


def grid_thresholds(steps: int = STEPS) -> np.ndarray:
    """The grid k / steps, k = 1 .. steps - 1 (float64, each the double nearest k / steps)."""
    return np.arange(1, steps, dtype=np.int64) / steps


def _checked(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if probs.ndim != 3 or not probs.is_floating_point() or probs.shape[0] == 0:
        raise ValueError(f"probs: expected float probabilities (N, H, W) with N >= 1, got {probs.dtype} "
                         f"{tuple(probs.shape)}")
    if truth.shape != probs.shape or (valid is not None and valid.shape != probs.shape):
        raise ValueError(f"probs, truth and valid shapes differ: {tuple(probs.shape)}, {tuple(truth.shape)}, "
                         f"{None if valid is None else tuple(valid.shape)}")
    truth = truth.to(probs.device, torch.bool) if truth.dtype == torch.bool else (truth != 0).to(probs.device)
    valid = None if valid is None else valid.to(probs.device, torch.bool)
    return probs, truth, valid


def _categories(truth: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Per pixel: 0 valid background, 1 valid salt, 2 ignored."""
    category = truth.to(torch.int64)
    return category if valid is None else torch.where(valid, category, 2)


def threshold_counts(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None = None,
                     steps: int = STEPS) -> torch.Tensor:
    """int64 (T, N, 5) ``[tp, fp, fn, tn, predicted]`` per image at every threshold of `grid_thresholds`,
    from one pass of per-image histograms (module docstring). tp..tn count valid pixels only; `predicted`
    counts every pixel above the threshold, ignored ones included (what the min-area rule counts)."""
    probs, truth, valid = _checked(probs, truth, valid)
    n, h, w = probs.shape
    work = torch.float32 if probs.dtype in (torch.float16, torch.bfloat16) else probs.dtype
    bounds = torch.tensor(grid_thresholds(steps), dtype=probs.dtype, device=probs.device).to(work)
    bins = len(bounds) + 1
    hist = torch.empty((n, 3, bins), dtype=torch.int64, device=probs.device)
    per_chunk = max(1, _CHUNK_PIXELS // (h * w))
    for start in range(0, n, per_chunk):
        p = probs[start : start + per_chunk].to(work).reshape(-1, h * w)
        m = p.shape[0]
        bucket = torch.bucketize(p, bounds, right=False).masked_fill(torch.isnan(p), 0)  # thresholds below p
        category = _categories(truth[start : start + m], None if valid is None else valid[start : start + m])
        key = (torch.arange(m, device=p.device)[:, None] * 3 + category.reshape(m, -1)) * bins + bucket
        hist[start : start + m] = torch.bincount(key.reshape(-1), minlength=m * 3 * bins).reshape(m, 3, bins)
    above = hist.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # (N, 3, T): pixels in buckets > j, i.e. p > t_j
    tp, fp = above[:, 1], above[:, 0]
    fn = hist[:, 1].sum(-1, keepdim=True) - tp
    tn = hist[:, 0].sum(-1, keepdim=True) - fp
    return torch.stack([tp, fp, fn, tn, above.sum(1)], dim=-1).transpose(0, 1)


def rule_counts(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None, thresholds: Sequence[float],
                components: Sequence[int]) -> torch.Tensor:
    """int64 (T, K, N, 5) per image at each threshold and smallest-component rule: the masks of a threshold
    are labelled once, and each K keeps the components of at least K pixels (module docstring)."""
    probs, truth, valid = _checked(probs, truth, valid)
    n, h, w = probs.shape
    truth_np = truth.cpu().numpy()
    valid_np = np.ones_like(truth_np) if valid is None else valid.cpu().numpy()
    salt, background = truth_np & valid_np, ~truth_np & valid_np
    n_salt, n_background = salt.sum((1, 2)), background.sum((1, 2))
    salt, background = salt.ravel(), background.ravel()
    out = np.empty((len(thresholds), len(components), n, 5), dtype=np.int64)
    for i, threshold in enumerate(thresholds):
        pred = (probs > float(threshold)).cpu().numpy()  # torch's comparison, as the accumulator's
        labels, count = component_labels(pred)
        at = np.flatnonzero(labels)  # the predicted pixels, each in one component
        label = labels.ravel()[at]
        size = np.bincount(label, minlength=count + 1)
        comp_tp = np.bincount(label, weights=salt[at], minlength=count + 1)
        comp_fp = np.bincount(label, weights=background[at], minlength=count + 1)
        image_of = np.zeros(count + 1, dtype=np.int64)
        image_of[label] = at // (h * w)
        for j, smallest in enumerate(components):
            keep = size >= max(int(smallest), 1)
            keep[0] = False
            per_image = [np.bincount(image_of[keep], weights=values[keep], minlength=n).round().astype(np.int64)
                         for values in (comp_tp, comp_fp, size)]
            tp, fp, predicted = per_image
            out[i, j] = np.stack([tp, fp, n_salt - tp, n_background - fp, predicted], axis=-1)
    return torch.from_numpy(out)


def with_min_area(counts: torch.Tensor, min_area: int) -> torch.Tensor:
    """(..., N, 4) ``[tp, fp, fn, tn]`` from (..., N, 5) counts, images predicting fewer than `min_area`
    pixels predicted empty (their tp become fn, their fp tn)."""
    tp, fp, fn, tn, predicted = counts.unbind(-1)
    if min_area <= 0:
        return torch.stack([tp, fp, fn, tn], dim=-1)
    small = predicted < min_area
    zero = torch.zeros_like(tp)
    return torch.stack([torch.where(small, zero, tp), torch.where(small, zero, fp),
                        torch.where(small, fn + tp, fn), torch.where(small, tn + fp, tn)], dim=-1)


def scores(counts: torch.Tensor) -> dict[str, np.ndarray]:
    """float64 arrays of `metrics.set_scores` (…, N, 4) -> (…): the set's metrics, exactly the accumulator's."""
    return {key: value.numpy() for key, value in set_scores(counts.cpu()).items()}


def fbeta(totals: np.ndarray, beta: float) -> np.ndarray:
    """F-beta of summed counts (..., 4): (1 + b²) TP / ((1 + b²) TP + b² FN + FP), 1.0 when that is 0/0."""
    tp, fp, fn = (totals[..., k].astype(np.float64) for k in (_TP, _FP, _FN))
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return np.where(den > 0, (1 + b2) * tp / np.where(den > 0, den, 1.0), 1.0)


# --------------------------------------------------------------------------- search


@dataclass
class OperatingPoint:
    """What a criterion chose: the decoding and the set's metrics there, or why nothing could be chosen."""

    criterion: str
    threshold: float | None
    min_area: int | None
    min_component: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    unreachable: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "threshold": self.threshold, "min_area": self.min_area,
                "min_component": self.min_component, "metrics": self.metrics, "unreachable": self.unreachable}


@dataclass
class _Candidates:
    """Scored decodings, in tie-break order (min_component, min_area, threshold ascending)."""

    threshold: list[np.ndarray] = field(default_factory=list)
    min_area: list[np.ndarray] = field(default_factory=list)
    min_component: list[np.ndarray] = field(default_factory=list)
    totals: list[np.ndarray] = field(default_factory=list)
    score_rows: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, thresholds: np.ndarray, min_area: int, min_component: int, counts: torch.Tensor) -> None:
        """`counts`: (T, N, 4) at `thresholds` under these rules."""
        self.threshold.append(np.asarray(thresholds, dtype=np.float64))
        self.min_area.append(np.full(len(thresholds), min_area, dtype=np.int64))
        self.min_component.append(np.full(len(thresholds), min_component, dtype=np.int64))
        self.totals.append(counts.sum(dim=-2).numpy())
        self.score_rows.append(scores(counts))

    def table(self) -> dict[str, np.ndarray]:
        keys = self.score_rows[0]
        rule = np.stack([np.concatenate(self.min_component), np.concatenate(self.min_area),
                         np.concatenate(self.threshold)])
        order = np.lexsort((rule[2], rule[1], rule[0]))  # stable; the last key sorts first
        table = {key: np.concatenate([row[key] for row in self.score_rows])[order] for key in keys}
        table.update(threshold=rule[2][order], min_area=rule[1][order].astype(np.int64),
                     min_component=rule[0][order].astype(np.int64), totals=np.concatenate(self.totals)[order])
        return table


def _goal_values(table: dict[str, np.ndarray], criterion: Criterion) -> np.ndarray:
    return fbeta(table["totals"], criterion.beta) if criterion.goal == "fbeta" else table[criterion.goal]


def pick(table: dict[str, np.ndarray], criterion: Criterion) -> int | None:
    """Index of the candidate `criterion` chooses (first of the ties), None when none meets its constraint."""
    goal = _goal_values(table, criterion)
    allowed = np.ones(goal.shape, dtype=bool) if criterion.constraint is None else \
        table[criterion.constraint] >= criterion.bound
    if not allowed.any():
        return None
    primary = np.where(allowed, goal, -np.inf)
    tied = primary == primary.max()
    second = criterion.constraint or ("dice" if criterion.goal == "tgs_map" else None)
    if second is not None:
        secondary = np.where(tied, table[second], -np.inf)
        tied &= secondary == secondary.max()
    return int(np.argmax(tied))


def _point(table: dict[str, np.ndarray], criterion: Criterion, at: int | None) -> OperatingPoint:
    if at is None:
        best = int(np.argmax(table[criterion.constraint]))
        reached = float(table[criterion.constraint][best])
        return OperatingPoint(criterion.text, None, None, None, unreachable=(
            f"no threshold in {1 / STEPS:g}..{1 - 1 / STEPS:g} (with any min area and smallest component) reaches "
            f"{criterion.constraint} >= {criterion.bound:g} on these images; the highest {criterion.constraint} "
            f"is {reached:.4f} (threshold {table['threshold'][best]:g})"))
    metrics = {key: float(table[key][at]) for key in ("precision", "recall", "dice", "iou", "tgs_map",
                                                      "pixel_accuracy", "mean_image_iou")}
    if criterion.goal == "fbeta":
        metrics["fbeta"] = float(fbeta(table["totals"][at], criterion.beta))
    return OperatingPoint(criterion.text, float(table["threshold"][at]), int(table["min_area"][at]),
                          int(table["min_component"][at]), metrics)


class OperatingPointSearch:
    """The one pass over a set's probabilities (`threshold_counts`), and everything read from it: metric
    curves, counts at given thresholds and rules, and the operating points of criteria.

    `probs` float (N, H, W) probabilities, `truth` bool (N, H, W), `valid` bool (N, H, W) or None."""

    def __init__(self, probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None = None,
                 steps: int = STEPS):
        self.probs, self.truth, self.valid = _checked(probs, truth, valid)
        self.steps = steps
        self.thresholds = grid_thresholds(steps)
        self.counts = threshold_counts(self.probs, self.truth, self.valid, steps).cpu()  # (T, N, 5)

    def _grid_index(self, thresholds: Sequence[float]) -> np.ndarray | None:
        """Indices of `thresholds` in the grid, or None when one is not a grid value."""
        k = np.rint(np.asarray(thresholds, dtype=np.float64) * self.steps).astype(np.int64)
        on_grid = (k >= 1) & (k < self.steps) & (k / self.steps == np.asarray(thresholds, dtype=np.float64))
        return k - 1 if on_grid.all() else None

    def counts_at(self, thresholds: Sequence[float], min_component: int = 0) -> torch.Tensor:
        """int64 (T, N, 5) at `thresholds` with the smallest-component rule: read from the histograms when
        they are grid values and there is no component rule, else labelled (`rule_counts`)."""
        index = self._grid_index(thresholds)
        if index is not None and min_component <= 1:
            return self.counts[torch.from_numpy(index)]
        return rule_counts(self.probs, self.truth, self.valid, thresholds, [min_component])[:, 0]

    def scores_at(self, thresholds: Sequence[float], min_area: int = 0, min_component: int = 0
                  ) -> dict[str, np.ndarray]:
        """The set's metrics (`metrics.set_scores` keys) at each of `thresholds` under these rules."""
        return scores(with_min_area(self.counts_at(thresholds, min_component), min_area))

    def curve(self, min_area: int = 0) -> dict[str, np.ndarray]:
        """Metrics at every grid threshold (no component rule), with "threshold"."""
        return {"threshold": self.thresholds, **scores(with_min_area(self.counts, min_area))}

    def choose(self, criteria: Sequence[Criterion], areas: Sequence[int] = AREAS,
               components: Sequence[int] = COMPONENTS) -> list[OperatingPoint]:
        """Each criterion's operating point over thresholds x `areas` x `components` (module docstring)."""
        candidates = _Candidates()
        for area in areas:
            candidates.add(self.thresholds, int(area), 0, with_min_area(self.counts, int(area)))
        components = sorted({int(k) for k in components if int(k) > 1})
        if components:
            fine = candidates.table()
            coarse = sorted({t for c in criteria for t in self._neighbourhood(fine, c)})
            counts = rule_counts(self.probs, self.truth, self.valid, coarse, components)  # (T, K, N, 5)
            for j, smallest in enumerate(components):
                for area in areas:
                    candidates.add(np.asarray(coarse), int(area), smallest, with_min_area(counts[:, j], int(area)))
        table = candidates.table()
        return [_point(table, c, pick(table, c)) for c in criteria]

    def _neighbourhood(self, table: dict[str, np.ndarray], criterion: Criterion) -> list[float]:
        """Grid thresholds around the criterion's best threshold without components (COARSE if none)."""
        at = pick(table, criterion)
        around = COARSE if at is None else [table["threshold"][at] + d for d in NEIGHBOURHOOD]
        k = np.unique(np.clip(np.rint(np.asarray(around) * self.steps), 1, self.steps - 1).astype(np.int64))
        return [int(v) / self.steps for v in k]
