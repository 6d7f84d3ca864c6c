"""`schedule.name: cosine_restarts`: equal cosine cycles over training progress (engine/schedule.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from run_fixtures import assert_one_line_error, run_cli, schedule_lrs, tiny_config
from unetlab.config import load_config
from unetlab.engine.schedule import CosineRestarts, build_scheduler, cycles_completed
from unetlab.engine.trainer import train
from unetlab.errors import ConfigError

RESTARTS = ["schedule.name=cosine_restarts", "optim.lr=1.0", "schedule.min_lr=0.1", "train.epochs=12"]


def test_two_cycles_fall_from_lr_to_min_lr_and_restart_at_half():
    points = [0.0, 0.25, 0.5 - 1e-7, 0.5, 0.75, 1.0]
    lrs = schedule_lrs([*RESTARTS, "schedule.cycles=2"], points)
    # cycle start = lr, mid-cycle = (lr + min_lr) / 2, cycle end = min_lr; the second cycle restarts at lr
    assert lrs == pytest.approx([1.0, 0.55, 0.1, 1.0, 0.55, 0.1], abs=1e-6)


def test_three_cycles_restart_at_each_third_despite_rounding():
    points = [1 / 6, 1 / 3 - 1e-7, 1 / 3, 0.5, 2 / 3 - 1e-7, 2 / 3, 5 / 6, 1.0]
    lrs = schedule_lrs([*RESTARTS, "schedule.cycles=3"], points)
    assert lrs == pytest.approx([0.55, 0.1, 1.0, 0.55, 0.1, 1.0, 0.55, 0.1], abs=1e-6)


def test_warm_up_opens_the_first_cycle_only():
    # 12 epochs, 1.2 of warm-up: the first 10 % rise from min_lr, then cycle 1 falls over [0.1, 0.5];
    # cycle 2 starts at lr at once.
    points = [0.0, 0.05, 0.1, 0.3, 0.5, 0.75, 1.0]
    lrs = schedule_lrs([*RESTARTS, "schedule.cycles=2", "schedule.warmup_epochs=1.2"], points)
    assert lrs == pytest.approx([0.1, 0.55, 1.0, 0.55, 1.0, 0.55, 0.1], abs=1e-9)


@pytest.mark.parametrize("warmup", ["0", "1.5"])
def test_one_cycle_is_cosine_exactly(warmup):
    points = [*np.linspace(0.0, 1.0, 97).tolist(), 0.125, 1 / 3]
    common = ["optim.lr=0.03", "schedule.min_lr=1e-4", "train.epochs=12", f"schedule.warmup_epochs={warmup}"]
    restarts = schedule_lrs([*common, "schedule.name=cosine_restarts", "schedule.cycles=1"], points)
    assert restarts == schedule_lrs([*common, "schedule.name=cosine"], points)  # bit for bit, not approximately


def test_state_round_trip_keeps_the_cycle():
    cfg = load_config(None, [*RESTARTS, "schedule.cycles=4"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    schedule = build_scheduler(cfg, optimizer)
    assert isinstance(schedule, CosineRestarts) and schedule.per_step
    schedule.step(0.375)  # the middle of the second of four cycles
    again = build_scheduler(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr))
    again.load_state_dict(schedule.state_dict())
    assert again.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == pytest.approx(0.55)


@pytest.mark.parametrize("progress, cycles, done", [(0.0, 2, 0), (0.4999, 2, 0), (0.5, 2, 1), (1.0, 2, 2),
                                                    (1 / 3, 3, 1), (2 / 3, 3, 2), (1.0, 3, 3), (0.99, 1, 0),
                                                    (6 / 12 - 1e-12, 2, 1)])
def test_cycles_completed(progress, cycles, done):
    assert cycles_completed(progress, cycles) == done


def test_cycles_are_counted_from_one():
    with pytest.raises(ConfigError, match="schedule.cycles"):
        load_config(None, ["schedule.name=cosine_restarts", "schedule.cycles=0"])


def test_cycles_without_restarts_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["schedule.name=cosine", "schedule.cycles=3"])
    assert "'schedule.cycles'" in str(info.value) and "schedule.name=cosine_restarts" in str(info.value)
    code, _, err = run_cli(["train", "--data", str(tmp_path), "--set", "schedule.cycles=2"], capsys)
    assert_one_line_error(code, err, "schedule.cycles", "cosine_restarts")


def test_a_warm_up_longer_than_the_first_cycle_is_refused_before_the_run_folder(tgs_dir, tmp_path):
    cfg = tiny_config("schedule.name=cosine_restarts", "schedule.cycles=2", "train.epochs=4",
                      "schedule.warmup_epochs=2")
    run = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"'schedule.warmup_epochs': 2 epochs of warm-up do not fit in the first "
                                          r"of schedule.cycles=2 cycles of 2 epochs"):
        train(cfg, data_root=tgs_dir, run_dir=run, progress=False, log=lambda _: None)
    assert not run.exists()
