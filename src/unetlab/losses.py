"""Segmentation losses on logits, composable with weights from the config.

`build_loss(cfg, task, classes, class_weights)` returns a callable
`loss(logits, target, progress=0.0, valid=None) -> scalar float32 Tensor`: a weighted sum of terms,
each of which joins once training progress (0..1) reaches its `start` and, when it has a `stop`,
leaves when progress reaches that (BCE first, then Lovász alone). The terms come from
`cfg.terms` or from the preset `cfg.name` (`PRESETS`: data, not if-chains in the trainer).

Each term is one registered builder (`register_loss`, `list_losses`): its registration records the
tasks it fits, the term to use instead for the other task, and the LossConfig options it reads;
the config checks term names against the registry and preset names against `PRESETS`, so a new
term is one decorated function here (plus its row in the table below).

Tasks and shapes
- binary: logits (N, 1, H, W); target (N, 1, H, W) float, 0/1 (soft values work for bce/dice/focal/tversky).
- multiclass: logits (N, C, H, W), C = classes >= 2; target (N, 1, H, W) or (N, H, W) holding class
  indices, integer or float (rounded to the nearest integer).
Logits may be bf16; every term is computed in float32.

Terms and the tasks they fit
=========  ========  ==========  ============================================================
term       binary    multiclass  definition
=========  ========  ==========  ============================================================
bce        yes       no          binary cross-entropy with logits; `pos_weight` weighs positives
ce         no        yes         softmax cross-entropy (= F.cross_entropy with weight/ignore_index)
dice       yes       yes         1 - soft Dice: binary on sigmoid(foreground); multiclass the mean
                                 over *all* classes of the per-class soft Dice of the softmax
                                 probabilities against one-hot targets (absent classes included:
                                 predicting them costs, not predicting them scores ~0 loss)
tversky    yes       yes         1 - Tversky index, same reductions as dice; `tversky_alpha` weighs
                                 false positives, `tversky_beta` false negatives; alpha = beta = 0.5
                                 is exactly the soft Dice
focal      yes       yes         focal loss (Lin et al., 2017): per-pixel cross-entropy times
                                 (1 - p_true)^gamma; gamma = 0 is exactly bce / ce. `focal_alpha`
                                 (binary only) weighs positives alpha and negatives 1 - alpha
lovasz     yes       yes         binary: Lovász hinge (errors through elu + 1), per image;
                                 multiclass: Lovász-softmax (Berman et al., 2018) over the classes
                                 present in each image, per image; both averaged over the images
=========  ========  ==========  ============================================================

Reductions: bce/ce/focal are means over the valid pixels of the batch (weighted means with class
weights); dice/tversky over the whole batch (`dice_mode="batch"`) or per image then averaged over
the images with at least one valid pixel (`dice_mode="image"`); `smooth` is added to numerator and
denominator (Dice: 1 - (2 TP + s) / (2 TP + FP + FN + s)) so that empty masks stay finite.

Class weights (`class_weights`, one per class; binary: [background, foreground]) weigh bce, ce and
focal per pixel by the weight of the pixel's true class, and those terms become weighted means
sum(w_i l_i) / sum(w_i) over the valid pixels, as F.cross_entropy(weight=...) does. dice, tversky
and lovasz are not weighted (they already treat each class on its own scale).

Ignored pixels: where `valid` is 0 (bool, uint8 or float, shaped like the target) a pixel takes part
in no term at all: not in any sum, mean or denominator, not in the Lovász ranking, and its logits get
zero gradient; its target value is never read (it may hold 255, an ignore index or garbage). In
multiclass, a target that is not a class index 0..C-1 (or not finite) counts as ignored too. A batch
with no valid pixel gives loss 0 with zero gradient.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from unetlab.errors import ConfigError

if TYPE_CHECKING:  # config imports this module at run time, never the other way round
    from unetlab.config import LossConfig

LossFn = Callable[..., torch.Tensor]
#: A built term: fn(logits, target, valid) -> float32 scalar.
TermFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
#: class_weights(device) -> the resolved per-class weights on that device (copied once), or None.
WeightsOn = Callable[[torch.device], "torch.Tensor | None"]
#: builder(options, task, class_weights) -> TermFn; `options` holds the LossConfig options the term declared.
TermBuilder = Callable[[Mapping[str, Any], str, WeightsOn], TermFn]

TASKS = ("binary", "multiclass")

# Presets as term lists: (term, weight, start); start "lovasz_start" takes cfg.lovasz_start.
LOVASZ_START = "lovasz_start"
PRESETS: dict[str, tuple[tuple[str, float, float | str], ...]] = {
    "bce": (("bce", 1.0, 0.0),),
    "dice": (("dice", 1.0, 0.0),),
    "bce_dice": (("bce", 1.0, 0.0), ("dice", 1.0, 0.0)),
    "lovasz": (("lovasz", 1.0, 0.0),),
    "bce_lovasz": (("bce", 1.0, 0.0), ("lovasz", 1.0, LOVASZ_START)),
    "ce": (("ce", 1.0, 0.0),),
    "ce_dice": (("ce", 1.0, 0.0), ("dice", 1.0, 0.0)),
    "ce_lovasz": (("ce", 1.0, 0.0), ("lovasz", 1.0, LOVASZ_START)),
    "focal": (("focal", 1.0, 0.0),),
    "tversky": (("tversky", 1.0, 0.0),),
}
#: The preset used when the config names neither a preset nor terms.
TASK_DEFAULT_PRESET = {"binary": "bce", "multiclass": "ce"}


# ----------------------------------------------------------------------------- helpers


def _mean_where(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values) / sum(weights), 0 (with zero gradient) when the weights sum to 0."""
    return values.sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def _binary_inputs(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """float logits (N, 1, H, W), target zeroed at invalid pixels, valid as bool (or None)."""
    logits = logits.float()
    target = target.float().reshape(logits.shape)
    if valid is None:
        return logits, target, None
    keep = valid.reshape(logits.shape).bool()
    return logits, torch.where(keep, target, torch.zeros_like(target)), keep


def _multiclass_inputs(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float logits (N, C, H, W), labels (N, H, W) int64 in 0..C-1 (0 where invalid), keep (N, H, W) bool.

    Labels outside 0..C-1 (ignore index, garbage, NaN) count as invalid; nothing is indexed with them.
    """
    logits = logits.float()
    n, c, h, w = logits.shape
    values = target.reshape(n, h, w).float()
    keep = (values > -0.5) & (values < c - 0.5)  # false for NaN
    if valid is not None:
        keep = keep & valid.reshape(n, h, w).bool()
    labels = torch.where(keep, values, torch.zeros_like(values)).round().long()
    return logits, labels, keep


def _pixel_weights(class_weights: torch.Tensor | None, labels_or_target: torch.Tensor,
                   keep: torch.Tensor | None, binary: bool) -> torch.Tensor:
    """Per-pixel weight: the weight of the true class (1 without class weights), 0 where invalid."""
    if class_weights is None:
        weights = torch.ones_like(labels_or_target, dtype=torch.float32)
    elif binary:  # soft targets interpolate between background and foreground weights
        weights = class_weights[0] + (class_weights[1] - class_weights[0]) * labels_or_target
    else:
        weights = class_weights[labels_or_target]
    return weights if keep is None else weights * keep


def _weights_on(class_weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if class_weights is None else class_weights.to(device=like.device, dtype=torch.float32)


# ----------------------------------------------------------------------------- binary terms


def bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
             pos_weight: float | torch.Tensor | None = None,
             class_weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Binary cross-entropy, averaged over the valid pixels (all pixels when `valid` is None).

    `pos_weight` multiplies the positive part of each pixel's loss (as in
    F.binary_cross_entropy_with_logits; still a plain mean over pixels). `class_weights`
    [background, foreground] weigh each pixel by its class and make it a weighted mean.
    """
    logits, target, keep = _binary_inputs(logits, target, valid)
    pw = pos_weight
    if pw is not None and not isinstance(pw, torch.Tensor):
        pw = torch.tensor([float(pw)], device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    weights = _pixel_weights(_weights_on(_as_tensor(class_weights), logits), target, keep, binary=True)
    return _mean_where(per_pixel * weights, weights)


def binary_focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                      gamma: float = 2.0, alpha: float | None = None,
                      class_weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Focal loss on sigmoid probabilities: mean of alpha_t * (1 - p_t)^gamma * BCE over the valid pixels.

    alpha_t = alpha for positives and 1 - alpha for negatives (1 when alpha is None). With class
    weights, a weighted mean as in `bce_loss`; gamma = 0 and alpha None give exactly `bce_loss`.
    """
    logits, target, keep = _binary_inputs(logits, target, valid)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_pixel = _focal_modulation(ce, gamma) * ce
    if alpha is not None:
        per_pixel = per_pixel * ((1.0 - alpha) + (2.0 * alpha - 1.0) * target)
    weights = _pixel_weights(_weights_on(_as_tensor(class_weights), logits), target, keep, binary=True)
    return _mean_where(per_pixel * weights, weights)


def _focal_modulation(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p_t)^gamma with p_t = exp(-ce); clamped away from 0 so that gamma < 1 keeps finite gradients."""
    if gamma == 0:
        return torch.ones_like(ce)
    return (-torch.expm1(-ce)).clamp_min(1e-12) ** gamma


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1.0, mode: str = "batch") -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) over the whole batch (`mode="batch"`) or per image, averaged.

    1 - (2 TP + eps) / (sum p + sum t + eps); `eps` keeps all-empty masks finite (loss 0 when the
    prediction is empty too).
    """
    return tversky_loss(logits, target, valid, alpha=0.5, beta=0.5, smooth=eps, mode=mode)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                 alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0, mode: str = "batch") -> torch.Tensor:
    """1 - Tversky index of sigmoid(logits) (binary; see `multiclass_tversky_loss` for softmax).

    Index (2 TP + s) / (2 TP + 2 alpha FP + 2 beta FN + s), i.e. the usual TP / (TP + a FP + b FN)
    with smoothing s / 2, so that alpha = beta = 0.5 is the soft Dice with the same `smooth`.
    """
    logits, target, keep = _binary_inputs(logits, target, valid)
    return _tversky(torch.sigmoid(logits), target, keep, alpha, beta, smooth, mode)


def _tversky(probs: torch.Tensor, truth: torch.Tensor, keep: torch.Tensor | None, alpha: float, beta: float,
             smooth: float, mode: str) -> torch.Tensor:
    """probs, truth (N, K, H, W); keep (N, 1 or K, H, W) bool or None. Mean over the K channels (and images)."""
    if mode not in ("batch", "image"):
        raise ValueError(f"mode must be 'batch' or 'image', got {mode!r}")
    if keep is not None:
        probs, truth = probs * keep, truth * keep
    dims = (2, 3) if mode == "image" else (0, 2, 3)
    tp = (probs * truth).sum(dims)
    fp = probs.sum(dims) - tp
    fn = truth.sum(dims) - tp
    index = (2.0 * tp + smooth) / (2.0 * tp + 2.0 * alpha * fp + 2.0 * beta * fn + smooth)
    loss = 1.0 - index  # (K,) or (N, K)
    if mode == "batch":
        return loss.mean()
    per_image = loss.mean(1)
    if keep is None:
        return per_image.mean()
    has_pixels = keep.flatten(1).any(1).float()
    return _mean_where(per_image * has_pixels, has_pixels)


def _lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    Along the last dimension (Berman et al., 2018); works on batches (..., P).
    """
    positives = sorted_truth.sum(-1, keepdim=True)
    intersection = positives - sorted_truth.cumsum(-1)
    union = positives + (1.0 - sorted_truth).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _lovasz_sorted(errors: torch.Tensor, values: torch.Tensor, truth: torch.Tensor,
                   keep: torch.Tensor | None) -> torch.Tensor:
    """sum_k values_(k) * lovasz_grad_k with pixels ranked by decreasing `errors`, along the last dim.

    Invalid pixels rank last with value 0 and truth 0: they change neither the ranking of the
    valid pixels nor the result, and get no gradient.
    """
    if keep is not None:
        errors = errors.masked_fill(~keep, float("-inf"))
        values = values.masked_fill(~keep, 0.0)
        truth = truth.masked_fill(~keep, 0.0)
    order = torch.sort(errors.detach(), dim=-1, descending=True, stable=True).indices
    grad = _lovasz_grad(truth.gather(-1, order))
    return (values.gather(-1, order) * grad).sum(-1)


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász hinge, computed per image and averaged: a convex surrogate of 1 - IoU.

    An image with empty truth still has a non-zero loss for positive logits (the errors are
    sorted and the first error gets weight 1), so empty-mask images are trained to stay empty.
    Errors pass through elu + 1 instead of relu (as several top TGS solutions did) so that the
    gradient never vanishes on pixels already on the right side of the margin. Images without a
    valid pixel take no part in the mean.
    """
    logits, target, keep = _binary_inputs(logits, target, valid)
    logits, target = logits.flatten(1), target.flatten(1)
    keep = None if keep is None else keep.flatten(1)
    errors = 1.0 - logits * (2.0 * target - 1.0)
    per_image = _lovasz_sorted(errors, F.elu(errors) + 1.0, target, keep)
    if keep is None:
        return per_image.mean()
    has_pixels = keep.any(1).float()
    return _mean_where(per_image * has_pixels, has_pixels)


# ----------------------------------------------------------------------------- multiclass terms


def _as_tensor(weights: torch.Tensor | Sequence[float] | None) -> torch.Tensor | None:
    if weights is None or isinstance(weights, torch.Tensor):
        return weights
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                       class_weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Softmax cross-entropy over the valid pixels; with class weights the weighted mean
    sum(w_y l) / sum(w_y), exactly F.cross_entropy(weight=..., ignore_index=...)."""
    return multiclass_focal_loss(logits, target, valid, gamma=0.0, class_weights=class_weights)


def multiclass_focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                          gamma: float = 2.0, class_weights: torch.Tensor | Sequence[float] | None = None
                          ) -> torch.Tensor:
    """Focal loss on softmax probabilities: (1 - p_y)^gamma * CE, (weighted) mean over the valid pixels."""
    logits, labels, keep = _multiclass_inputs(logits, target, valid)
    ce = F.cross_entropy(logits, labels.masked_fill(~keep, -100), reduction="none", ignore_index=-100)
    per_pixel = ce if gamma == 0 else _focal_modulation(ce, gamma) * ce
    weights = _pixel_weights(_weights_on(_as_tensor(class_weights), logits), labels, keep, binary=False)
    return _mean_where(per_pixel * weights, weights)


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def multiclass_tversky_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                            alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0,
                            mode: str = "batch") -> torch.Tensor:
    """1 - Tversky index per class of the softmax probabilities against one-hot targets, mean over all classes."""
    logits, labels, keep = _multiclass_inputs(logits, target, valid)
    probs = torch.softmax(logits, dim=1)
    return _tversky(probs, _one_hot(labels, logits.shape[1]), keep[:, None], alpha, beta, smooth, mode)


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                         smooth: float = 1.0, mode: str = "batch") -> torch.Tensor:
    """1 - soft Dice per class (softmax, one-hot), mean over all classes: Tversky with alpha = beta = 0.5."""
    return multiclass_tversky_loss(logits, target, valid, alpha=0.5, beta=0.5, smooth=smooth, mode=mode)


def lovasz_softmax_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász-softmax (Berman et al., 2018) per image, averaged over the images with a valid pixel.

    For each class c present in the image's valid truth, the Lovász extension of the Jaccard loss
    applied to the errors |1[y = c] - p_c| of the softmax probabilities; the image's loss is the
    mean over its present classes.
    """
    logits, labels, keep = _multiclass_inputs(logits, target, valid)
    n, c = logits.shape[:2]
    probs = torch.softmax(logits, dim=1).flatten(2)                 # (N, C, P)
    truth = _one_hot(labels, c).flatten(2)                          # (N, C, P)
    keep_c = keep.flatten(1)[:, None, :].expand(n, c, -1)           # (N, C, P)
    errors = (truth - probs).abs()
    per_class = _lovasz_sorted(errors, errors, truth, keep_c)       # (N, C)
    present = ((truth * keep_c).sum(-1) > 0).float()                # (N, C)
    per_image = (per_class * present).sum(1) / present.sum(1).clamp_min(1.0)
    has_pixels = keep.flatten(1).any(1).float()
    return _mean_where(per_image * has_pixels, has_pixels)


# ----------------------------------------------------------------------------- the registry of terms


@dataclass(frozen=True)
class LossSpec:
    """A registered loss term: its builder, the tasks it fits, the LossConfig options it reads."""

    name: str
    build: TermBuilder
    tasks: tuple[str, ...]
    options: tuple[str, ...] = ()
    instead: Mapping[str, str] = field(default_factory=dict)  # task it does not fit -> the term to use there


_LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, tasks: Sequence[str] = TASKS, options: Sequence[str] = (),
                  instead: Mapping[str, str] | None = None) -> Callable[[TermBuilder], TermBuilder]:
    """Decorator registering `builder(options, task, class_weights) -> fn(logits, target, valid)` as term `name`.

    `tasks`: the tasks the term fits; `instead`: for a task it does not fit, the term to suggest
    (bce <-> ce). `options`: the LossConfig fields the builder reads (it gets exactly those, in a
    dict); "class_weights" among them means the term is weighted per class, and the builder's
    `class_weights(device)` then returns the resolved weights (else always None). The term is then
    usable in `loss.terms` and presets; add it to the table in this module's docstring.
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"loss term {name!r}: tasks must be some of {', '.join(TASKS)}; got {list(tasks)}")

    def decorator(builder: TermBuilder) -> TermBuilder:
        if name in _LOSSES:
            raise ValueError(f"loss term {name!r} registered twice")
        _LOSSES[name] = LossSpec(name, builder, tuple(tasks), tuple(options), dict(instead or {}))
        return builder

    return decorator


def unregister_loss(name: str) -> LossSpec:
    """Remove term `name` from the registry (KeyError if absent) and return its spec."""
    return _LOSSES.pop(name)


@contextmanager
def registered_loss(name: str, builder: TermBuilder, **how: Any) -> Iterator[LossSpec]:
    """`register_loss(name, **how)(builder)` for the duration of a with block (tests, experiments)."""
    register_loss(name, **how)(builder)
    try:
        yield _LOSSES[name]
    finally:
        _LOSSES.pop(name, None)


def list_losses() -> list[str]:
    """The registered term names, sorted."""
    return sorted(_LOSSES)


def loss_spec(name: str) -> LossSpec:
    """The registered term `name`, or a ConfigError naming loss.terms and the valid names."""
    if name not in _LOSSES:
        raise ConfigError(f"bad value for 'loss.terms': unknown loss term {name!r}; "
                          f"choose one of {', '.join(list_losses())}")
    return _LOSSES[name]


def _per_device(values: torch.Tensor | None) -> WeightsOn:
    """device -> `values` on that device, copied to each device once, not every step."""
    copies: dict[torch.device, torch.Tensor] = {}

    def on(device: torch.device) -> torch.Tensor | None:
        if values is None:
            return None
        if device not in copies:
            copies[device] = values.to(device)
        return copies[device]

    return on


@register_loss("bce", tasks=("binary",), options=("pos_weight", "class_weights"), instead={"multiclass": "ce"})
def _bce_term(options: Mapping[str, Any], task: str, class_weights: WeightsOn) -> TermFn:
    pos = options["pos_weight"]
    pos_weight = _per_device(None if pos is None else torch.tensor([float(pos)]))
    return lambda x, y, v: bce_loss(x, y, v, pos_weight=pos_weight(x.device), class_weights=class_weights(x.device))


@register_loss("ce", tasks=("multiclass",), options=("class_weights",), instead={"binary": "bce"})
def _ce_term(options: Mapping[str, Any], task: str, class_weights: WeightsOn) -> TermFn:
    return lambda x, y, v: cross_entropy_loss(x, y, v, class_weights=class_weights(x.device))


@register_loss("dice", options=("smooth", "dice_mode"))
def _dice_term(options: Mapping[str, Any], task: str, class_weights: WeightsOn) -> TermFn:
    fn = tversky_loss if task == "binary" else multiclass_tversky_loss
    smooth, mode = options["smooth"], options["dice_mode"]
    return lambda x, y, v: fn(x, y, v, alpha=0.5, beta=0.5, smooth=smooth, mode=mode)


@register_loss("tversky", options=("tversky_alpha", "tversky_beta", "smooth", "dice_mode"))
def _tversky_term(options: Mapping[str, Any], task: str, class_weights: WeightsOn) -> TermFn:
    fn = tversky_loss if task == "binary" else multiclass_tversky_loss
    alpha, beta = options["tversky_alpha"], options["tversky_beta"]
    smooth, mode = options["smooth"], options["dice_mode"]
    return lambda x, y, v: fn(x, y, v, alpha=alpha, beta=beta, smooth=smooth, mode=mode)


@register_loss("focal", options=("focal_gamma", "focal_alpha", "class_weights"))
def _focal_term(options: Mapping[str, Any], task: str, class_weights: WeightsOn) -> TermFn:
    gamma, alpha = options["focal_gamma"], options["focal_alpha"]
    if task == "binary":
        return lambda x, y, v: binary_focal_loss(x, y, v, gamma=gamma, alpha=alpha,
                                                 class_weights=class_weights(x.device))
    return lambda x, y, v: multiclass_focal_loss(x, y, v, gamma=gamma, class_weights=class_weights(x.device))


@register_loss("lovasz")
def _lovasz_term(options: Mapping[str, Any], task: str, class_weights: WeightsOn) -> TermFn:
    return lovasz_hinge_loss if task == "binary" else lovasz_softmax_loss


# ----------------------------------------------------------------------------- build_loss


@dataclass(frozen=True)
class Term:
    """One term as the config spells it: `weight` * term `name`, counted while start <= progress < stop."""

    name: str
    weight: float = 1.0
    start: float = 0.0
    stop: float | None = None


@dataclass(frozen=True)
class ResolvedTerm:
    """A loss term ready to be evaluated: `weight * fn(logits, target, valid)` while start <= progress < stop."""

    name: str
    weight: float
    start: float
    fn: TermFn
    stop: float | None = None

    def active(self, progress: float) -> bool:
        return progress >= self.start and (self.stop is None or progress < self.stop)


def list_presets() -> list[str]:
    """The preset names (`PRESETS`), in their table's order."""
    return list(PRESETS)


def loss_terms(cfg: LossConfig, task: str = "binary") -> list[Term]:
    """The terms of `cfg`: `cfg.terms`, or the preset `cfg.name` expanded (with `cfg.lovasz_start`);
    with neither, the task's default preset (bce for binary, ce for multiclass)."""
    if cfg.terms is not None:
        return [Term(t.name, t.weight, t.start, t.stop) for t in cfg.terms]
    preset = cfg.name or TASK_DEFAULT_PRESET[task]
    if preset not in PRESETS:
        raise ConfigError(f"bad value for 'loss.name': unknown loss preset {preset!r}; "
                          f"choose one of {', '.join(list_presets())}")
    return [Term(name, weight, cfg.lovasz_start if start == LOVASZ_START else start)
            for name, weight, start in PRESETS[preset]]


def _wrong_task(cfg: LossConfig, spec: LossSpec, task: str) -> ConfigError:
    """The refusal of a term (or the preset holding it) that does not fit `task`, with the fix."""
    fix = spec.instead.get(task)
    if cfg.terms is not None:
        use = repr(fix) if fix else f"one of {', '.join(n for n in list_losses() if task in _LOSSES[n].tasks)}"
        return ConfigError(f"bad value for 'loss.terms': term {spec.name!r} is for task {spec.tasks[0]}; "
                           f"use {use} for task {task}")
    name = cfg.name or TASK_DEFAULT_PRESET[task]
    suggestion = name.replace(spec.name, fix, 1) if fix else None
    if suggestion in PRESETS:
        use = repr(suggestion)
    else:
        fitting = [p for p in PRESETS if all(n in _LOSSES and task in _LOSSES[n].tasks for n, _, _ in PRESETS[p])]
        use = f"one of {', '.join(fitting)}"
    return ConfigError(f"bad value for 'loss.name': {name!r} is for task {spec.tasks[0]}; use {use} for task {task}")


def check_loss_config(cfg: LossConfig, task: str = "binary", classes: int = 1) -> None:
    """Raise ConfigError when a term or option of `cfg` does not fit `task` (cheap: builds nothing)."""
    if task not in TASKS:
        raise ConfigError(f"bad value for 'task': {task!r}; use one of {', '.join(TASKS)}")
    if task == "binary" and classes != 1:
        raise ConfigError(f"bad value for 'model.classes': {classes} for task binary; use 1 (one logit per pixel)")
    if task == "multiclass" and classes < 2:
        raise ConfigError(f"bad value for 'model.classes': {classes} for task multiclass; use 2 or more")
    for term in loss_terms(cfg, task):
        spec = loss_spec(term.name)
        if task not in spec.tasks:
            raise _wrong_task(cfg, spec, task)
    if task == "multiclass":
        if cfg.pos_weight is not None:
            raise ConfigError("bad value for 'loss.pos_weight': binary only; for task multiclass weight classes "
                              "with loss.class_weights")
        if cfg.focal_alpha is not None:
            raise ConfigError("bad value for 'loss.focal_alpha': binary only; for task multiclass weight classes "
                              "with loss.class_weights")


def _resolve_class_weights(cfg: LossConfig, task: str, classes: int,
                           class_weights: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    if class_weights is None:
        if cfg.class_weights is None:
            return None
        if isinstance(cfg.class_weights, str):
            raise ValueError(f"loss.class_weights={cfg.class_weights!r} is computed from the training masks "
                             "(unetlab.data.stats.class_weights): pass the result to build_loss(class_weights=...)")
        class_weights = cfg.class_weights
    weights = _as_tensor(class_weights).detach().float().cpu().flatten()
    wanted = 2 if task == "binary" else classes
    if len(weights) != wanted:
        what = "task binary; give 2 ([background, foreground])" if task == "binary" else \
            f"{classes} classes; give one per class"
        raise ConfigError(f"bad value for 'loss.class_weights': {len(weights)} weights for {what}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
        raise ConfigError(f"bad value for 'loss.class_weights': {weights.tolist()}; give finite weights >= 0, "
                          "at least one > 0")
    if task == "binary" and cfg.pos_weight is not None:
        raise ConfigError("bad value for 'loss.pos_weight': both loss.pos_weight and loss.class_weights "
                          "weight the positives; set only one")
    return weights


def _term_function(name: str, cfg: LossConfig, task: str, class_weights: WeightsOn) -> TermFn:
    """Build registered term `name` for `task` with the options it declared (and the weights if it reads them)."""
    spec = loss_spec(name)
    options = {key: getattr(cfg, key) for key in spec.options if key != "class_weights"}
    weighted = "class_weights" in spec.options
    return spec.build(options, task, class_weights if weighted else _per_device(None))


class CompositeLoss:
    """`loss(logits, target, progress=0.0, valid=None)`: the weighted sum of the terms active at `progress`."""

    def __init__(self, terms: list[ResolvedTerm], task: str, classes: int) -> None:
        self.terms = terms
        self.task = task
        self.classes = classes

    def _check(self, logits: torch.Tensor) -> None:
        channels = 1 if self.task == "binary" else self.classes
        if logits.dim() != 4 or logits.shape[1] != channels:
            raise ValueError(f"{self.task} loss expects logits (N, {channels}, H, W), got {tuple(logits.shape)}")

    def components(self, logits: torch.Tensor, target: torch.Tensor, progress: float = 0.0,
                   valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each active term's unweighted value (float32 scalars), e.g. for logging; repeated names get #2, #3."""
        self._check(logits)
        logits = logits.float()
        out: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if term.active(progress):
                key, k = term.name, 2
                while key in out:
                    key, k = f"{term.name}#{k}", k + 1
                out[key] = term.fn(logits, target, valid)
        return out

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, progress: float = 0.0,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
        self._check(logits)
        logits = logits.float()
        total = None
        for term in self.terms:
            if term.active(progress) and term.weight > 0:
                value = term.weight * term.fn(logits, target, valid)
                total = value if total is None else total + value
        if total is None:  # nothing active yet: a zero that still backpropagates
            total = 0.0 * logits.sum()
        return total

    def __repr__(self) -> str:
        terms = " + ".join(f"{t.weight:g}*{t.name}" + (f"@{t.start:g}" if t.start else "")
                           + (f"..{t.stop:g}" if t.stop is not None else "") for t in self.terms)
        return f"CompositeLoss({self.task}: {terms})"


def build_loss(cfg: LossConfig, task: str = "binary", classes: int = 1,
               class_weights: Sequence[float] | torch.Tensor | None = None) -> LossFn:
    """The loss of `cfg` for `task` ("binary" or "multiclass" with `classes` logits).

    `class_weights` are the per-class weights resolved by the caller (for cfg.class_weights
    "inverse"/"median"); a list in cfg.class_weights is used when none are passed. Raises
    ConfigError, naming the key, for a term that does not fit the task or weights of the wrong length.
    """
    check_loss_config(cfg, task, classes)
    weights = _per_device(_resolve_class_weights(cfg, task, classes, class_weights))
    terms = [ResolvedTerm(t.name, t.weight, t.start, _term_function(t.name, cfg, task, weights), t.stop)
             for t in loss_terms(cfg, task)]
    return CompositeLoss(terms, task, classes)
