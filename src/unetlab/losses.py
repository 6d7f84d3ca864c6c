"""Binary segmentation losses on logits (N, 1, H, W) and 0/1 float targets of the same shape.

`build_loss(cfg)` returns a callable `loss(logits, target, progress)`: composite losses whose
terms join at a share of training (Lovász) are data, not if-chains in the trainer.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from unetlab.config import LossConfig


def bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy, averaged over the valid pixels (all pixels when `valid` is None)."""
    if valid is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    weight = valid.to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return per_pixel / weight.sum().clamp_min(1.0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch; `eps` keeps all-empty batches finite (loss 0 when prediction is empty)."""
    probs = torch.sigmoid(logits)
    if valid is not None:
        probs, target = probs * valid, target * valid
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (probs.sum() + target.sum() + eps)


def _lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al., 2018)."""
    positives = sorted_truth.sum()
    intersection = positives - sorted_truth.cumsum(0)
    union = positives + (1.0 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    if sorted_truth.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász hinge, computed per image and averaged: a convex surrogate of 1 - IoU.

    An image with empty truth still has a non-zero loss for positive logits (the errors are
    sorted and the first error gets weight 1), so empty-mask images are trained to stay empty.
    Errors pass through elu + 1 instead of relu (as several top TGS solutions did) so that the
    gradient never vanishes on pixels already on the right side of the margin.
    """
    logits = logits.float().flatten(1)
    target = target.float().flatten(1)
    keep = None if valid is None else valid.flatten(1).bool()
    losses = []
    for index, (image_logits, image_target) in enumerate(zip(logits, target)):
        if keep is not None:  # ignored pixels take no part in the ranking
            image_logits, image_target = image_logits[keep[index]], image_target[keep[index]]
            if image_logits.numel() == 0:
                losses.append(logits.new_zeros(()) + 0.0 * logits[index].sum())
                continue
        signs = 2.0 * image_target - 1.0
        errors = 1.0 - image_logits * signs
        errors_sorted, order = torch.sort(errors, descending=True)
        grad = _lovasz_grad(image_target[order])
        losses.append(torch.dot(F.elu(errors_sorted) + 1.0, grad))
    return torch.stack(losses).mean()


LossFn = Callable[..., torch.Tensor]


def build_loss(cfg: LossConfig) -> LossFn:
    """Terms are (weight, function, start); a term joins once training progress (0..1) reaches start."""
    lovasz_start = cfg.lovasz_start
    terms: dict[str, list[tuple[float, Callable[..., torch.Tensor], float]]] = {
        "bce": [(1.0, bce_loss, 0)],
        "dice": [(1.0, soft_dice_loss, 0)],
        "bce_dice": [(1.0, bce_loss, 0), (1.0, soft_dice_loss, 0)],
        "lovasz": [(1.0, lovasz_hinge_loss, 0)],
        "bce_lovasz": [(1.0, bce_loss, 0), (1.0, lovasz_hinge_loss, lovasz_start)],
    }
    chosen = terms[cfg.name]

    def loss(logits: torch.Tensor, target: torch.Tensor, progress: float = 0.0,
             valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (optional, like target): pixels outside it (ignore_index) add nothing to any term."""
        logits = logits.float()
        total = logits.new_zeros(())
        for weight, fn, start in chosen:
            if progress >= start:
                total = total + weight * fn(logits, target, valid)
        return total

    return loss
