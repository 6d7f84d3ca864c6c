"""Weight averaging chosen by name (`train.averaging`): none, EMA, or SWA.

Top TGS solutions validated and submitted averaged weights: an exponential moving average of
every step's weights (EMA), or the plain mean of the weights at the end of each epoch in the
last part of training (SWA). The averaged copy includes batch-norm buffers: EMA averages them
like the weights; SWA recomputes them on training batches before each validation, because the
mean of running statistics is not the statistics of the mean weights.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn


class Averaging:
    """No averaging: the model being trained is the one validated and saved."""

    name = "none"

    def __init__(self, model: nn.Module):
        self.model = model

    def update_step(self, step: int, progress: float) -> None:
        pass

    def update_epoch(self, progress: float) -> None:
        pass

    def eval_model(self, batches: Callable[[], Iterable[torch.Tensor]] | None = None) -> nn.Module:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _frozen_copy(model: nn.Module) -> nn.Module:
    """The averaged model: a copy in eval mode that no optimiser or autograd touches."""
    average = copy.deepcopy(model).eval()
    for p in average.parameters():
        p.requires_grad_(False)
    return average


class EMA(Averaging):
    """Exponential moving average, with the usual warm-up of the decay: min(decay, (1 + t) / (10 + t))."""

    name = "ema"

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model)
        self.decay = decay
        self.average = _frozen_copy(model)
        self.updates = 0
        # Pairs of (averaged, live) tensors, found once: both models update their tensors in place
        # (optimiser steps, load_state_dict), so the step does not rebuild two state dicts.
        live = model.state_dict()
        pairs = [(value, live[name]) for name, value in self.average.state_dict().items()]
        self._floating = [(a, b) for a, b in pairs if a.dtype.is_floating_point]
        self._counters = [(a, b) for a, b in pairs if not a.dtype.is_floating_point]  # num_batches_tracked

    @torch.no_grad()
    def update_step(self, step: int, progress: float) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for average, live in self._floating:
            average.lerp_(live, 1.0 - decay)
        for average, live in self._counters:
            average.copy_(live)

    def eval_model(self, batches: Callable[[], Iterable[torch.Tensor]] | None = None) -> nn.Module:
        return self.average

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.average.load_state_dict(state["average"])


class SWA(Averaging):
    """Equal-weight mean of the end-of-epoch weights once progress reaches `start`."""

    name = "swa"

    def __init__(self, model: nn.Module, start: float):
        super().__init__(model)
        self.start = start
        self.average = _frozen_copy(model)
        self.count = 0

    @torch.no_grad()
    def update_epoch(self, progress: float) -> None:
        if progress < self.start:
            return
        self.count += 1
        for mean, live in zip(self.average.parameters(), self.model.parameters()):
            mean.lerp_(live.detach(), 1.0 / self.count)

    @torch.no_grad()
    def eval_model(self, batches: Callable[[], Iterable[torch.Tensor]] | None = None) -> nn.Module:
        if self.count == 0:
            return self.model
        if batches is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.average.modules()):
            _recompute_batch_norm(self.average, batches())
        return self.average

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.average.load_state_dict(state["average"])


@torch.no_grad()
def _recompute_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Batch-norm running statistics as a cumulative average over `batches` (what swa_utils.update_bn does)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m in norms:
        m.momentum = saved[m]
    model.eval()


def build_averaging(name: str, model: nn.Module, ema_decay: float = 0.995, swa_start: float = 0.75) -> Averaging:
    factories: dict[str, Callable[[], Averaging]] = {
        "none": lambda: Averaging(model),
        "ema": lambda: EMA(model, ema_decay),
        "swa": lambda: SWA(model, swa_start),
    }
    return factories[name]()
