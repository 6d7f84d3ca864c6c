"""One optimisation step and what it needs: seeding, the optimiser, the batch as the model takes it.

Shared by the trainer and `unetlab bench train`, so that the benchmark times exactly the code the
trainer runs.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn

from unetlab.data.augment import random_crop
from unetlab.data.tensors import normalize
from unetlab.engine.device import autocast

if TYPE_CHECKING:
    from unetlab.config import Config
    from unetlab.losses import LossFn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (CPU and CUDA); cuDNN autotuning only when not deterministic."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = on
        torch.backends.cudnn.benchmark = not on


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, o, **kw: torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                                     **kw),
    "adamw": lambda params, o, **kw: torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                                       **kw),
    "sgd": lambda params, o, **kw: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                                   nesterov=o.nesterov and o.momentum > 0, **kw),
    "rmsprop": lambda params, o, **kw: torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum,
                                                           weight_decay=o.weight_decay, **kw),
}
#: Optimisers with a fused CUDA kernel (one launch for all parameters instead of several per tensor).
FUSED_ON_CUDA = ("adam", "adamw", "sgd")


def uses_fused_optimizer(name: str, device: torch.device) -> bool:
    """Fused kernels on CUDA only: on the CPU they measured no faster than the default (foreach) path."""
    return device.type == "cuda" and name in FUSED_ON_CUDA


def build_optimizer(cfg: "Config", model: nn.Module) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    extra = {"fused": True} if uses_fused_optimizer(cfg.optim.name, device) else {}
    return OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim, **extra)


def prepare_batch(images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None, crop: int | None,
                  augment: Callable, generator: torch.Generator, mean: list[float], std: list[float],
                  memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A training batch as the model takes it: random crop, augmentation, normalisation, memory format."""
    if crop:
        images, masks, valid = random_crop(images, masks, valid, crop, generator)
    images, masks, valid = augment(images, masks, valid, generator)
    return normalize(images, mean, std).contiguous(memory_format=memory_format), masks, valid


def unwrapped(model: nn.Module) -> nn.Module:
    """The model under the torch.compile and DistributedDataParallel wrappers the trainer may add."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def training_loss(model: nn.Module, loss_fn: "LossFn", outputs: torch.Tensor | tuple, masks: torch.Tensor,
                  progress: float = 0.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of a training-mode forward pass: `loss_fn` on the pixel logits, plus the model's
    `auxiliary_loss` when it returned `(logits, auxiliary outputs)` (UNet's image_head)."""
    if not isinstance(outputs, tuple):
        return loss_fn(outputs, masks, progress, valid)
    logits, aux = outputs
    return loss_fn(logits, masks, progress, valid) + unwrapped(model).auxiliary_loss(aux, masks, valid)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: "LossFn", images: torch.Tensor,
               masks: torch.Tensor, precision: str, progress: float = 0.0,
               valid: torch.Tensor | None = None, clip_norm: float | None = None,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss without synchronising with the device."""
    with autocast(images.device, precision):
        outputs = model(images)
    loss = training_loss(model, loss_fn, outputs, masks, progress, valid)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss so small gradients survive, unscale before clipping
        scaler.scale(loss).backward()
        if clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
    optimizer.step()
    return loss.detach()
