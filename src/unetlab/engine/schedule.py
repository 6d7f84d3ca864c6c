"""Learning-rate schedules chosen by name; each says whether it steps per batch or per epoch."""

from __future__ import annotations

import math
from typing import Any

import torch

from unetlab.config import Config
from unetlab.errors import ConfigError


class Schedule:
    per_step = False
    per_epoch = False

    def step(self, value: float | None = None) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Constant(Schedule):
    def step(self, value: float | None = None) -> None:
        pass


class Plateau(Schedule):
    """The seed's schedule: multiply the learning rate by `factor` when the monitored value stalls."""

    per_epoch = True

    def __init__(self, cfg: Config, optimizer: torch.optim.Optimizer):
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.train.monitor_mode, factor=cfg.schedule.factor,
            patience=cfg.schedule.patience, min_lr=cfg.schedule.min_lr)

    def step(self, value: float | None = None) -> None:
        self.inner.step(value)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class ProgressSchedule(Schedule):
    """A learning rate = base * factor(progress), set every step from training progress in [0, 1].

    Progress is the larger of the share of planned steps done and the share of the time budget
    spent, so a run cut short by `train.max_minutes` still follows its schedule to the end.
    """

    per_step = True

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.progress = 0.0

    def factor(self, progress: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, value: float | None = None) -> None:
        self.progress = float(value or 0.0)
        scale = self.factor(self.progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def state_dict(self) -> dict[str, Any]:
        return {"progress": self.progress, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.step(state["progress"])


class Cosine(ProgressSchedule):
    """Cosine decay to `floor` (a share of the base rate) after a linear warm-up (one-cycle: 30 %)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: float, floor: float):
        super().__init__(optimizer)
        self.warmup, self.floor = warmup, floor
        self.step(0.0)

    def factor(self, progress: float) -> float:
        if progress < self.warmup:
            return self.floor + (1.0 - self.floor) * progress / self.warmup
        return self.fall(min((progress - self.warmup) / max(1.0 - self.warmup, 1e-12), 1.0))

    def fall(self, rest: float) -> float:
        """The cosine from 1 to `floor` as `rest` goes from 0 to 1."""
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * rest))


def cycles_completed(progress: float, cycles: int) -> int:
    """How many of `cycles` equal cycles over training progress have ended at `progress` (0..cycles).

    The schedule and the snapshot callback both count with this, so they agree on a cycle's end
    even where progress * cycles lands a rounding error short of a whole number.
    """
    return max(0, min(cycles, math.floor(progress * cycles + 1e-9)))


class CosineRestarts(Cosine):
    """`cycles` equal cosine decays over training progress, each from the base rate to `floor`: cosine
    annealing with warm restarts (SGDR) of equal length, for snapshot ensembles (one checkpoint per cycle,
    `callbacks.Snapshots`). The warm-up, if any, opens the first cycle only. One cycle is `Cosine`."""

    def __init__(self, optimizer: torch.optim.Optimizer, cycles: int, warmup: float, floor: float):
        self.cycles = cycles
        super().__init__(optimizer, warmup, floor)

    def factor(self, progress: float) -> float:
        if progress < self.warmup:
            return super().factor(progress)
        cycle = min(cycles_completed(progress, self.cycles), self.cycles - 1)
        start, end = max(cycle / self.cycles, self.warmup), (cycle + 1) / self.cycles
        return self.fall(min(max(progress - start, 0.0) / max(end - start, 1e-12), 1.0))


def check_schedule(cfg: Config) -> None:
    """Refuse, before a run starts, a cosine_restarts warm-up longer than its first cycle."""
    schedule = cfg.schedule
    if schedule.name == "cosine_restarts" and schedule.warmup_epochs * schedule.cycles >= cfg.train.epochs:
        raise ConfigError(f"bad value for 'schedule.warmup_epochs': {schedule.warmup_epochs:g} epochs of warm-up do "
                          f"not fit in the first of schedule.cycles={schedule.cycles} cycles of "
                          f"{cfg.train.epochs / schedule.cycles:g} epochs; use fewer warm-up epochs or fewer cycles")


class Step(ProgressSchedule):
    """Multiply the learning rate by `factor` at each milestone (a share of training progress)."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: list[float], factor: float):
        super().__init__(optimizer)
        self.milestones, self.drop = sorted(milestones), factor

    def factor(self, progress: float) -> float:
        return self.drop ** sum(progress >= m for m in self.milestones)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> Schedule:
    name = cfg.schedule.name
    if name == "constant":
        return Constant()
    if name == "plateau":
        return Plateau(cfg, optimizer)
    if name == "step":
        return Step(optimizer, cfg.schedule.milestones, cfg.schedule.factor)
    warmup = cfg.schedule.warmup_epochs / cfg.train.epochs
    if name == "onecycle" and warmup == 0:
        warmup = 0.3  # one-cycle's usual 30 % rise
    floor = min(cfg.schedule.min_lr / cfg.optim.lr, 1.0)
    if name == "cosine_restarts":
        return CosineRestarts(optimizer, cfg.schedule.cycles, min(warmup, 0.99), floor)
    return Cosine(optimizer, min(warmup, 0.99), floor)
