"""Optimisers, gradient clipping, the step schedule and weight averaging (EMA, SWA)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from run_fixtures import TINY, schedule_lrs, tiny_config
from unetlab.engine.callbacks import Callback
from unetlab.engine.averaging import EMA, SWA, build_averaging
from unetlab.engine.checkpoint import load_checkpoint
from unetlab.engine.schedule import build_scheduler
from unetlab.engine.step import build_optimizer, train_step, uses_fused_optimizer
from unetlab.engine.trainer import train
from unetlab.errors import ConfigError
from unetlab.losses import build_loss
from unetlab.models import create_model


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_by_name(name, cls):
    cfg = tiny_config(f"optim.name={name}", "optim.weight_decay=0.01", "optim.momentum=0.8")
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["nesterov"] is True and group["momentum"] == 0.8
    if name == "rmsprop":
        assert group["momentum"] == 0.8


def test_fused_kernels_only_on_cuda_and_only_where_torch_has_them():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert [uses_fused_optimizer(n, cuda) for n in ("adam", "adamw", "sgd", "rmsprop")] == [True, True, True, False]
    assert not any(uses_fused_optimizer(n, cpu) for n in ("adam", "adamw", "sgd", "rmsprop"))
    assert not build_optimizer(tiny_config("optim.name=adamw"), nn.Linear(2, 2)).defaults.get("fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_cuda_optimizer_is_fused_and_steps(name):
    model = nn.Linear(4, 2).cuda()
    optimizer = build_optimizer(tiny_config(f"optim.name={name}", "optim.momentum=0.9"), model)
    assert optimizer.defaults["fused"] is True
    before = model.weight.detach().clone()
    model(torch.randn(8, 4, device="cuda")).square().mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


def test_sgd_without_momentum_is_not_nesterov():
    # torch refuses nesterov with zero momentum; the config's default nesterov must not break momentum 0.
    optimizer = build_optimizer(tiny_config("optim.name=sgd", "optim.momentum=0"), nn.Linear(2, 2))
    assert optimizer.param_groups[0]["nesterov"] is False


def test_grad_clip_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.randn(2, 1, 8, 8) * 100
    y = torch.ones(2, 1, 8, 8)
    loss_fn = build_loss(tiny_config().loss)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_step(model, optimizer, loss_fn, x, y, "fp32", clip_norm=0.01)
    delta = torch.cat([(model.weight - before).flatten()])
    # With lr 1, the whole update (weights and bias) has norm <= 0.01.
    assert delta.norm() <= 0.01 + 1e-6


def test_step_schedule_drops_at_milestones():
    cfg = tiny_config("schedule.name=step", "schedule.milestones=[0.5, 0.8]", "schedule.factor=0.1", "optim.lr=1.0")
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = build_scheduler(cfg, optimizer)
    seen = []
    for progress in (0.0, 0.49, 0.5, 0.79, 0.8, 1.0):
        schedule.step(progress)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    state = schedule.state_dict()
    optimizer2 = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    restored = build_scheduler(cfg, optimizer2)
    restored.load_state_dict(state)
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("bad", ["[0]", "[0.5, 1.0]", "[-0.1]"])
def test_step_milestones_refused_outside_0_1(bad):
    with pytest.raises(ConfigError, match="schedule.milestones"):
        tiny_config(f"schedule.milestones={bad}")


def test_ema_matches_hand_computed_average():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    values = [1.0, 2.0, 3.0]
    expected = 0.0
    for k, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_step(k, 0.0)
        decay = min(0.5, (1 + k) / (10 + k))
        expected = decay * expected + (1 - decay) * value
    assert float(ema.eval_model().weight) == pytest.approx(expected)
    assert ema.eval_model() is not model


def test_ema_copies_integer_buffers_and_round_trips():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    ema = EMA(model, decay=0.9)
    model(torch.randn(4, 1, 3, 3))
    ema.update_step(1, 0.0)
    assert int(ema.average[1].num_batches_tracked) == 1
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    for a, b in zip(other.average.state_dict().values(), ema.average.state_dict().values()):
        assert torch.equal(a, b)


def test_swa_is_the_mean_after_start_and_recomputes_batch_norm():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    swa = SWA(model, start=0.5)
    for progress, value in [(0.2, 100.0), (0.5, 1.0), (0.7, 2.0), (1.0, 6.0)]:
        with torch.no_grad():
            model[0].weight.fill_(value)
        swa.update_epoch(progress)
    batches = [torch.full((8, 1, 2, 2), 1.0) + torch.arange(8.0).view(8, 1, 1, 1)]
    averaged = swa.eval_model(lambda: iter(batches))
    assert float(averaged[0].weight) == pytest.approx(3.0)  # mean of 1, 2, 6; the 0.2 epoch is before start
    conv_out = batches[0] * 3.0
    assert float(averaged[1].running_mean) == pytest.approx(float(conv_out.mean()), rel=1e-5)
    assert not averaged.training


def test_swa_before_start_validates_the_live_model():
    model = nn.Linear(1, 1)
    swa = build_averaging("swa", model, swa_start=0.9)
    swa.update_epoch(0.1)
    assert swa.eval_model() is model


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_training_with_averaging_saves_the_validated_weights(tgs_dir, tmp_path, averaging):
    cfg = tiny_config(f"train.averaging={averaging}", "train.swa_start=0.0", "optim.name=sgd", "optim.lr=0.01",
                      "optim.grad_clip_norm=1.0", "schedule.name=step")
    result = train(cfg, data_root=tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    last = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert last["averaging_state"]
    # The saved model_state is the averaged model's, different from the live weights kept for resuming.
    differs = [not torch.equal(last["model_state"][k], last["train_model_state"][k])
               for k in last["model_state"] if last["model_state"][k].dtype.is_floating_point]
    assert any(differs)
    model = create_model(cfg.model.name, **cfg.model.options())
    model.load_state_dict(last["model_state"])
    assert all(math.isfinite(row["val/loss"]) for row in result.history)


def test_each_step_rate_follows_the_steps_done(tgs_dir, tmp_path):
    """After step k of N the rate is the schedule's at progress k/N, so training ends on the floor."""
    overrides = ["schedule.name=onecycle", "schedule.min_lr=0.0001", "optim.lr=0.01", "train.max_minutes=null"]

    class Rates(Callback):
        def __init__(self):
            self.seen: list[float] = []

        def on_step_end(self, trainer, step, loss):
            self.seen.append(trainer.optimizer.param_groups[0]["lr"])

    rates = Rates()
    cfg = tiny_config(*overrides)
    result = train(cfg, data_root=tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None,
                   callbacks=[rates])
    total = result.history[-1]["step"]
    assert len(rates.seen) == total
    expected = schedule_lrs([*TINY, *overrides], [(k + 1) / total for k in range(total)])
    assert rates.seen == pytest.approx(expected)
    assert rates.seen[-1] == pytest.approx(0.0001)


def test_tensorboard_gets_step_scalars_images_and_config(tgs_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("train.log_every_steps=1", "train.image_every_epochs=1")
    result = train(cfg, data_root=tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    events = EventAccumulator(str(result.run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"step/train_loss", "step/lr", "step/images_per_s", "val/loss", "val/tgs_map", "lr"} <= set(tags["scalars"])
    steps = [e.step for e in events.Scalars("step/train_loss")]
    assert steps == list(range(1, result.history[-1]["step"] + 1))
    assert "val/predictions" in tags["images"] and len(events.Images("val/predictions")) == 2
    image = events.Images("val/predictions")[0]
    assert image.width == 3 * 101  # image | truth | prediction at the original size
    assert any("config" in tag for tag in tags["tensors"])
