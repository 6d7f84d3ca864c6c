"""Tests for unetlab.losses: BCE, soft Dice, the Lovász hinge and the composite `build_loss`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unetlab.config import LossConfig
from unetlab.losses import bce_loss, build_loss, lovasz_hinge_loss, soft_dice_loss

LOSS_NAMES = ["bce", "dice", "bce_dice", "lovasz", "bce_lovasz"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_case(n=2, h=6, w=5, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, 1, h, w, generator=gen(seed)) * 2
    target = (torch.rand(n, 1, h, w, generator=gen(seed + 1)) < 0.4).float()
    return logits, target


# ----------------------------------------------------------------------------- an independent Lovász


def _elu_plus_one(x: float) -> float:
    return x + 1.0 if x > 0 else math.exp(x)


def _jaccard_loss(mispredicted: set[int], truth: list[int]) -> float:
    """1 - IoU of the prediction that gets exactly the pixels in `mispredicted` wrong."""
    positives = {i for i, t in enumerate(truth) if t}
    predicted = {i for i in range(len(truth)) if (i in positives) != (i in mispredicted)}
    union = predicted | positives
    return 0.0 if not union else 1.0 - len(predicted & positives) / len(union)


def lovasz_reference(logits: list[float], truth: list[int]) -> tuple[float, list[float]]:
    """Lovász hinge of one image straight from the definition (Berman et al., 2018), plus its gradient.

    Errors e_i = 1 - logit_i * (2 t_i - 1) are sorted in decreasing order; the loss is
    sum_k f(e_(k)) * (J({(1)..(k)}) - J({(1)..(k-1)})) with J the Jaccard loss of the set of
    mispredicted pixels and f = elu + 1. Its gradient w.r.t. logit_i is -(2 t_i - 1) f'(e_i) * weight_i.
    """
    errors = [1.0 - x * (2 * t - 1) for x, t in zip(logits, truth)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    loss, previous, chosen = 0.0, _jaccard_loss(set(), truth), set()
    grad = [0.0] * len(logits)
    for i in order:
        chosen.add(i)
        current = _jaccard_loss(chosen, truth)
        weight = current - previous
        loss += _elu_plus_one(errors[i]) * weight
        slope = 1.0 if errors[i] > 0 else math.exp(errors[i])
        grad[i] = -(2 * truth[i] - 1) * slope * weight
        previous = current
    return loss, grad


# ----------------------------------------------------------------------------- BCE


def test_bce_against_formula():
    logits, target = random_case()
    expected = (logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()
    torch.testing.assert_close(bce_loss(logits, target), expected)
    torch.testing.assert_close(bce_loss(logits, target), F.binary_cross_entropy(torch.sigmoid(logits), target))


def test_bce_hand_value():
    # logit 0 -> p = 0.5 -> -log(0.5) whatever the target
    assert bce_loss(torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])).item() == pytest.approx(math.log(2))


# ----------------------------------------------------------------------------- soft Dice


def test_soft_dice_hand_value():
    # p = 0.5 everywhere on 4 pixels, 2 of them positive: intersection 1, sums 2 + 2
    # 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.4)
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(0.5)


def test_soft_dice_perfect_prediction_is_near_zero():
    _, target = random_case(seed=3)
    logits = (target * 2 - 1) * 30
    assert 0 <= soft_dice_loss(logits, target).item() < 1e-6


def test_soft_dice_all_empty_is_near_zero_and_finite():
    target = torch.zeros(2, 1, 8, 8)
    loss = soft_dice_loss(torch.full((2, 1, 8, 8), -30.0), target)
    assert torch.isfinite(loss) and abs(loss.item()) < 1e-6


def test_soft_dice_all_empty_with_positive_prediction_is_high():
    loss = soft_dice_loss(torch.full((1, 1, 8, 8), 30.0), torch.zeros(1, 1, 8, 8))
    assert loss.item() == pytest.approx(1 - 1 / 65, abs=1e-6)


def test_soft_dice_is_over_the_whole_batch():
    logits, target = random_case(n=3, seed=5)
    p = torch.sigmoid(logits)
    expected = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    torch.testing.assert_close(soft_dice_loss(logits, target), expected)


# ----------------------------------------------------------------------------- Lovász hinge


def test_lovasz_hand_case():
    # truth [1, 0], logits [1, 1]: errors [0, 2]; sorted: pixel 1 (e=2), then pixel 0 (e=0)
    # J({1}) = 1 - |{0}| / |{0, 1}| = 0.5; J({0, 1}) = 1 - 0 / 2 = 1
    # loss = (elu(2) + 1) * 0.5 + (elu(0) + 1) * 0.5 = 1.5 + 0.5 = 2
    logits = torch.tensor([[[[1.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert lovasz_hinge_loss(logits, target).item() == pytest.approx(2.0)


def test_lovasz_hand_case_empty_truth():
    # empty truth: the largest error gets weight 1, all others 0; errors = 1 + logits = [-2, 1.5]
    logits = torch.tensor([[[[-3.0, 0.5]]]])
    assert lovasz_hinge_loss(logits, torch.zeros(1, 1, 1, 2)).item() == pytest.approx(2.5)


def test_lovasz_single_pixel():
    assert lovasz_hinge_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)).item() == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_matches_brute_force(seed):
    logits, target = random_case(n=3, h=3, w=4, seed=10 * seed)
    if seed == 0:
        target[1] = 0.0  # one image with empty truth
    if seed == 1:
        target[2] = 1.0  # one image full of salt
    expected = [lovasz_reference(l.flatten().tolist(), [int(v) for v in t.flatten().tolist()])[0]
                for l, t in zip(logits, target)]
    got = lovasz_hinge_loss(logits, target)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-4, 4), st.integers(0, 1)), min_size=1, max_size=9))
def test_lovasz_matches_brute_force_hypothesis(pixels):
    values = [v for v, _ in pixels]
    truth = [t for _, t in pixels]
    logits = torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)
    target = torch.tensor(truth, dtype=torch.float32).view(1, 1, 1, -1)
    # float32 inputs: compare against the reference evaluated on the same rounded values
    expected, _ = lovasz_reference(logits.flatten().tolist(), truth)
    assert lovasz_hinge_loss(logits, target).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_lovasz_gradient_matches_brute_force():
    logits, target = random_case(n=1, h=4, w=4, seed=7)  # continuous logits: no ties
    logits.requires_grad_(True)
    lovasz_hinge_loss(logits, target).backward()
    _, expected = lovasz_reference(logits.detach().flatten().tolist(), [int(v) for v in target.flatten().tolist()])
    torch.testing.assert_close(logits.grad.flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_lovasz_is_mean_over_images():
    logits, target = random_case(n=4, seed=2)
    per_image = torch.stack([lovasz_hinge_loss(logits[i:i + 1], target[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(lovasz_hinge_loss(logits, target), per_image.mean())


def test_lovasz_all_empty_target_finite_with_finite_gradient():
    logits = torch.randn(2, 1, 8, 8, generator=gen(0)).requires_grad_(True)
    loss = lovasz_hinge_loss(logits, torch.zeros(2, 1, 8, 8))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # only the most wrong pixel of each image gets a gradient, pushing its logit down
    for g in logits.grad:
        assert (g != 0).sum() == 1 and g.sum() > 0


def test_lovasz_perfect_separation_with_large_margin_is_low():
    _, target = random_case(n=2, h=8, w=8, seed=4)
    logits = (target * 2 - 1) * 20
    assert 0 <= lovasz_hinge_loss(logits, target).item() < 1e-6
    assert lovasz_hinge_loss(-logits, target).item() > 10  # everything wrong: large


def test_lovasz_prefers_better_predictions():
    _, target = random_case(n=2, h=8, w=8, seed=4)
    good = (target * 2 - 1) * 2
    noisy = good + torch.randn(good.shape, generator=gen(9)) * 3
    assert lovasz_hinge_loss(good, target) < lovasz_hinge_loss(noisy, target)


# ----------------------------------------------------------------------------- build_loss


def test_build_loss_single_terms():
    logits, target = random_case(seed=8)
    torch.testing.assert_close(build_loss(LossConfig(name="bce"))(logits, target, 0.0), bce_loss(logits, target))
    torch.testing.assert_close(build_loss(LossConfig(name="dice"))(logits, target, 0.3), soft_dice_loss(logits, target))
    torch.testing.assert_close(build_loss(LossConfig(name="lovasz"))(logits, target, 0.0),
                               lovasz_hinge_loss(logits, target))
    torch.testing.assert_close(build_loss(LossConfig(name="bce_dice"))(logits, target, 0.0),
                               bce_loss(logits, target) + soft_dice_loss(logits, target))


def test_build_loss_default_progress_is_zero():
    logits, target = random_case(seed=8)
    torch.testing.assert_close(build_loss(LossConfig(name="bce_lovasz"))(logits, target), bce_loss(logits, target))


@pytest.mark.parametrize("start", [0.0, 0.5, 1.0])
def test_bce_lovasz_joins_at_lovasz_start(start):
    loss = build_loss(LossConfig(name="bce_lovasz", lovasz_start=start))
    logits, target = random_case(seed=11)
    bce = bce_loss(logits, target)
    both = bce + lovasz_hinge_loss(logits, target)
    for progress in (0.0, 0.25, 0.49, 0.5, 0.75, 1.0):
        expected = both if progress >= start else bce
        torch.testing.assert_close(loss(logits, target, progress), expected, msg=f"progress {progress}")


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_build_loss_returns_float32_scalar_for_bf16_logits(name):
    logits, target = random_case(seed=12)
    value = build_loss(LossConfig(name=name, lovasz_start=0.0))(logits.bfloat16(), target, 1.0)
    assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("case", ["random", "all_empty", "all_full", "extreme_logits"])
def test_gradients_finite(name, case):
    logits, target = random_case(n=2, h=8, w=8, seed=13)
    if case == "all_empty":
        target = torch.zeros_like(target)
    elif case == "all_full":
        target = torch.ones_like(target)
    elif case == "extreme_logits":
        logits = torch.sign(logits) * 100.0
    logits.requires_grad_(True)
    value = build_loss(LossConfig(name=name, lovasz_start=0.0))(logits, target, 1.0)
    assert torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if case == "random":
        assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_are_non_negative_and_target_shaped(name):
    logits, target = random_case(seed=14)
    assert build_loss(LossConfig(name=name, lovasz_start=0.0))(logits, target, 1.0).item() >= 0.0


# ---- ignored pixels


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice", "lovasz", "bce_lovasz"])
def test_ignored_pixels_change_neither_loss_nor_gradient(name):
    from unetlab.config import LossConfig
    from unetlab.losses import build_loss

    loss_fn = build_loss(LossConfig(name=name, lovasz_start=0.0))
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 8, 8, generator=generator, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float()
    valid = torch.rand(2, 1, 8, 8, generator=generator) > 0.25
    flipped = torch.where(valid, target, 1.0 - target)  # different truth only where ignored
    first = loss_fn(logits, target, 1.0, valid)
    (grad,) = torch.autograd.grad(first, logits)
    second = loss_fn(logits, flipped, 1.0, valid)
    assert torch.isfinite(first) and first.item() == pytest.approx(second.item(), abs=1e-6)
    assert torch.all(grad[~valid] == 0)
    everything = torch.ones_like(valid)
    assert loss_fn(logits, target, 1.0, everything).item() == pytest.approx(loss_fn(logits, target, 1.0).item(), rel=1e-5)


def test_bce_averages_over_valid_pixels_only():
    from unetlab.losses import bce_loss

    logits = torch.tensor([[[[0.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    valid = torch.tensor([[[[True, False]]]])
    assert bce_loss(logits, target, valid).item() == pytest.approx(math.log(2.0))
