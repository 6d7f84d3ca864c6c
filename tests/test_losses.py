"""Tests for unetlab.losses: every term against hand-computed values and torch references, the
composite `build_loss` for both tasks, ignored pixels, gradients, and the config refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unetlab.config import LossConfig, LossTerm, load_config
from unetlab.errors import ConfigError
from unetlab.losses import (PRESETS, TASK_DEFAULT_PRESET, CompositeLoss, bce_loss, binary_focal_loss, build_loss,
                            check_loss_config, cross_entropy_loss, list_losses, list_presets, loss_spec, loss_terms,
                            lovasz_hinge_loss, lovasz_softmax_loss, multiclass_dice_loss, multiclass_focal_loss,
                            multiclass_tversky_loss, register_loss, registered_loss, soft_dice_loss, tversky_loss,
                            unregister_loss)

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


# ============================================================================= the full set of terms

LN2, LN3 = math.log(2.0), math.log(3.0)
CLASSES = 4
BINARY_TERMS = ["bce", "dice", "focal", "tversky", "lovasz"]
MULTICLASS_TERMS = ["ce", "dice", "focal", "tversky", "lovasz"]
TASK_TERMS = [("binary", t) for t in BINARY_TERMS] + [("multiclass", t) for t in MULTICLASS_TERMS]


def multiclass_case(n=2, c=CLASSES, h=5, w=4, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, c, h, w, generator=gen(seed)) * 2
    labels = torch.randint(0, c, (n, 1, h, w), generator=gen(seed + 1)).float()  # floats, as after augmentation
    return logits, labels


def case_for(task: str, seed: int = 0, n: int = 2, h: int = 5, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return random_case(n, h, w, seed) if task == "binary" else multiclass_case(n, CLASSES, h, w, seed)


def term_loss(task: str, term: str, **options) -> CompositeLoss:
    cfg = LossConfig(terms=[LossTerm(name=term)], **options)
    return build_loss(cfg, task=task, classes=1 if task == "binary" else CLASSES)


def lovasz_extension_reference(errors: list[float], truth: list[int]) -> float:
    """Lovász extension of the Jaccard loss at `errors`, from the definition (no hinge, no elu)."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    loss, previous, chosen = 0.0, _jaccard_loss(set(), truth), set()
    for i in order:
        chosen.add(i)
        current = _jaccard_loss(chosen, truth)
        loss += errors[i] * (current - previous)
        previous = current
    return loss


def lovasz_softmax_reference(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Per image: mean over the classes present of the extension at |1[y=c] - p_c|; then mean over images."""
    probs = torch.softmax(logits.double(), 1)
    per_image = []
    for p, y in zip(probs, labels.reshape(len(labels), -1).long()):
        losses = []
        for c in range(p.shape[0]):
            truth = [int(v == c) for v in y.tolist()]
            if any(truth):
                errors = [abs(t - q) for t, q in zip(truth, p[c].flatten().tolist())]
                losses.append(lovasz_extension_reference(errors, truth))
        per_image.append(sum(losses) / len(losses))
    return sum(per_image) / len(per_image)


# ----------------------------------------------------------------------------- BCE: pos_weight, class weights


def test_bce_pos_weight_hand_value():
    # logit 0: every pixel costs log 2; the two positives count pos_weight = 3 times: (3 + 1 + 1 + 3) / 4 log 2
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert bce_loss(torch.zeros(1, 1, 2, 2), target, pos_weight=3.0).item() == pytest.approx(2 * LN2)


def test_bce_pos_weight_matches_torch():
    logits, target = random_case(seed=20)
    expected = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor([3.0]))
    torch.testing.assert_close(bce_loss(logits, target, pos_weight=3.0), expected)
    torch.testing.assert_close(build_loss(LossConfig(name="bce", pos_weight=3.0))(logits, target), expected)


def test_bce_class_weights_hand_value():
    # logits [0, ln 3]: pixel 0 (background, weight 1) costs log 2, pixel 1 (foreground, weight 3) -log(3/4)
    logits = torch.tensor([[[[0.0, LN3]]]])
    target = torch.tensor([[[[0.0, 1.0]]]])
    expected = (1 * LN2 + 3 * math.log(4 / 3)) / 4
    assert bce_loss(logits, target, class_weights=[1.0, 3.0]).item() == pytest.approx(expected, rel=1e-6)


def test_bce_class_weights_are_a_weighted_mean_and_equal_two_class_ce():
    logits, target = random_case(seed=21)
    weights = torch.tensor([0.5, 2.0])
    pixel_weights = weights[target.long()]
    expected = F.binary_cross_entropy_with_logits(logits, target, weight=pixel_weights, reduction="sum") / pixel_weights.sum()
    torch.testing.assert_close(bce_loss(logits, target, class_weights=weights), expected)
    two_class = torch.cat([torch.zeros_like(logits), logits], 1)  # softmax([0, x]) = [1 - sigmoid(x), sigmoid(x)]
    torch.testing.assert_close(F.cross_entropy(two_class, target[:, 0].long(), weight=weights), expected)
    torch.testing.assert_close(build_loss(LossConfig(name="bce"), class_weights=[0.5, 2.0])(logits, target), expected)
    torch.testing.assert_close(build_loss(LossConfig(name="bce", class_weights=[0.5, 2.0]))(logits, target), expected)


# ----------------------------------------------------------------------------- cross-entropy


def test_ce_hand_values():
    # pixel 0: logits [ln 2, 0, 0], class 0 -> p = 1/2; pixel 1: logits 0, class 2 -> p = 1/3
    logits = torch.tensor([[[[LN2, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 2.0]]]])
    assert cross_entropy_loss(logits, target).item() == pytest.approx((LN2 + LN3) / 2)
    assert cross_entropy_loss(logits, target, class_weights=[1.0, 1.0, 3.0]).item() == pytest.approx((LN2 + 3 * LN3) / 4)
    valid = torch.tensor([[[[True, False]]]])
    assert cross_entropy_loss(logits, target, valid).item() == pytest.approx(LN2)


def test_ce_matches_torch_with_weight_and_ignore_index():
    logits, labels = multiclass_case(seed=30)
    valid = torch.rand(labels.shape, generator=gen(31)) > 0.3
    target = torch.where(valid, labels, torch.full_like(labels, 255.0))
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = F.cross_entropy(logits, target[:, 0].long(), weight=weights, ignore_index=255)
    torch.testing.assert_close(cross_entropy_loss(logits, target, valid, class_weights=weights), expected)
    loss = build_loss(LossConfig(name="ce"), task="multiclass", classes=CLASSES, class_weights=weights.tolist())
    torch.testing.assert_close(loss(logits, target, 0.0, valid), expected)
    # the same without `valid` (255 is no class), with (N, H, W) integer targets, with a float mask
    torch.testing.assert_close(loss(logits, target), expected)
    torch.testing.assert_close(loss(logits, target[:, 0].long(), 0.0, valid[:, 0].float()), expected)
    torch.testing.assert_close(build_loss(LossConfig(name="ce"), "multiclass", CLASSES)(logits, target, 0.0, valid),
                               F.cross_entropy(logits, target[:, 0].long(), ignore_index=255))


# ----------------------------------------------------------------------------- focal


def test_focal_hand_values():
    # binary: logit 0 -> p_t = 1/2 for either class: (1/2)^2 log 2; logit ln 3, target 1 -> p_t = 3/4
    assert binary_focal_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)).item() == pytest.approx(LN2 / 4)
    logits = torch.tensor([[[[LN3]]]])
    assert binary_focal_loss(logits, torch.ones(1, 1, 1, 1)).item() == pytest.approx(math.log(4 / 3) / 16, rel=1e-5)
    # alpha = 0.25 weighs the positive 0.25 and the negative 0.75: (0.25 + 0.75) / 2 * (1/2)^2 log 2
    two = torch.tensor([[[[1.0, 0.0]]]])
    assert binary_focal_loss(torch.zeros(1, 1, 1, 2), two, alpha=0.25).item() == pytest.approx(LN2 / 8)
    assert binary_focal_loss(torch.zeros(1, 1, 1, 2), two, alpha=1.0).item() == pytest.approx(LN2 / 8)
    # multiclass: logits [ln 2, 0, 0], class 0 -> p = 1/2; gamma 3
    mc = torch.tensor([[[[LN2]], [[0.0]], [[0.0]]]])
    assert multiclass_focal_loss(mc, torch.zeros(1, 1, 1, 1), gamma=3.0).item() == pytest.approx(LN2 / 8)


def test_focal_with_gamma_zero_is_bce_and_ce():
    logits, target = random_case(seed=40)
    valid = torch.rand(target.shape, generator=gen(41)) > 0.2
    torch.testing.assert_close(binary_focal_loss(logits, target, valid, gamma=0.0), bce_loss(logits, target, valid))
    torch.testing.assert_close(binary_focal_loss(logits, target, valid, gamma=0.0, class_weights=[0.3, 1.7]),
                               bce_loss(logits, target, valid, class_weights=[0.3, 1.7]))
    torch.testing.assert_close(build_loss(LossConfig(name="focal", focal_gamma=0.0))(logits, target, 0.0, valid),
                               bce_loss(logits, target, valid))
    logits, labels = multiclass_case(seed=42)
    weights = [1.0, 2.0, 0.5, 3.0]
    valid = torch.rand(labels.shape, generator=gen(41)) > 0.2
    target = torch.where(valid, labels, torch.full_like(labels, 255.0))
    expected = F.cross_entropy(logits, target[:, 0].long(), weight=torch.tensor(weights), ignore_index=255)
    loss = build_loss(LossConfig(name="focal", focal_gamma=0.0), "multiclass", CLASSES, class_weights=weights)
    torch.testing.assert_close(loss(logits, target, 0.0, valid), expected)


def test_focal_down_weights_easy_pixels():
    logits, target = random_case(seed=43)
    assert binary_focal_loss(logits, target, gamma=2.0) < bce_loss(logits, target)
    logits, labels = multiclass_case(seed=44)
    assert multiclass_focal_loss(logits, labels, gamma=2.0) < cross_entropy_loss(logits, labels)


# ----------------------------------------------------------------------------- Tversky and Dice


def test_tversky_hand_value():
    # p = 1/2 on 4 pixels, 3 positives: TP = 1.5, FP = 0.5, FN = 1.5
    # smooth 0: TP / (TP + 0.3 FP + 0.7 FN) = 1.5 / 2.7; smooth 1: (3 + 1) / (3 + 0.3 + 2.1 + 1) = 4 / 6.4
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    assert tversky_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - 1.5 / 2.7)
    assert tversky_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - 4 / 6.4)
    assert term_loss("binary", "tversky")(logits, target).item() == pytest.approx(1 - 4 / 6.4)


def test_tversky_beta_weighs_false_negatives():
    target = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    misses = torch.full((1, 1, 2, 2), -4.0)  # predicts nothing: mostly false negatives
    assert tversky_loss(misses, target, alpha=0.3, beta=0.7) > tversky_loss(misses, target, alpha=0.7, beta=0.3)


@pytest.mark.parametrize("mode", ["batch", "image"])
def test_tversky_half_half_is_dice(mode):
    logits, target = random_case(n=3, seed=45)
    valid = torch.rand(target.shape, generator=gen(46)) > 0.3
    torch.testing.assert_close(tversky_loss(logits, target, valid, 0.5, 0.5, 1.0, mode),
                               soft_dice_loss(logits, target, valid, 1.0, mode))
    half = dict(tversky_alpha=0.5, tversky_beta=0.5, dice_mode=mode)
    torch.testing.assert_close(term_loss("binary", "tversky", **half)(logits, target, 0.0, valid),
                               term_loss("binary", "dice", **half)(logits, target, 0.0, valid))
    logits, labels = multiclass_case(n=3, seed=47)
    valid = torch.rand(labels.shape, generator=gen(46)) > 0.3
    torch.testing.assert_close(term_loss("multiclass", "tversky", **half)(logits, labels, 0.0, valid),
                               term_loss("multiclass", "dice", **half)(logits, labels, 0.0, valid))


def test_dice_per_image_and_per_batch_differ_on_a_hand_case():
    # image 0: truth [1, 1], p ~ [1, 1] -> 1 - (4 + 1) / (2 + 2 + 1) = 0
    # image 1: truth [0, 0], p = [1/2, 1/2] -> 1 - (0 + 1) / (1 + 0 + 1) = 1/2;   per image: mean 1/4
    # batch: TP = 2, sum p = 3, sum t = 2 -> 1 - (4 + 1) / (3 + 2 + 1) = 1/6
    logits = torch.tensor([[[[30.0, 30.0]]], [[[0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 0.0]]]])
    assert soft_dice_loss(logits, target, mode="image").item() == pytest.approx(0.25, abs=1e-6)
    assert soft_dice_loss(logits, target, mode="batch").item() == pytest.approx(1 / 6, abs=1e-6)
    assert build_loss(LossConfig(name="dice", dice_mode="image"))(logits, target).item() == pytest.approx(0.25, abs=1e-6)
    assert build_loss(LossConfig(name="dice"))(logits, target).item() == pytest.approx(1 / 6, abs=1e-6)


def test_dice_per_image_skips_images_without_valid_pixels():
    logits, target = random_case(n=2, seed=48)
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[1] = False
    torch.testing.assert_close(soft_dice_loss(logits, target, valid, mode="image"),
                               soft_dice_loss(logits[:1], target[:1], mode="image"))


def test_multiclass_dice_hand_value():
    # C = 2, p = 1/2 everywhere, truth [0, 0]: class 0 TP = 1, sum p = 1, sum t = 2; class 1 TP = 0, sum p = 1, sum t = 0
    # smooth 0: mean(1 - 2/3, 1 - 0/1) = 2/3; smooth 1: mean(1 - 3/4, 1 - 1/2) = 3/8
    logits, target = torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2)
    assert multiclass_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(2 / 3)
    assert multiclass_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(3 / 8)


@pytest.mark.parametrize("mode", ["batch", "image"])
def test_multiclass_tversky_against_formula(mode):
    logits, labels = multiclass_case(n=3, seed=49)
    valid = torch.rand(labels.shape, generator=gen(50)) > 0.3
    p = torch.softmax(logits, 1) * valid
    t = F.one_hot(labels[:, 0].long(), CLASSES).permute(0, 3, 1, 2).float() * valid
    dims = (2, 3) if mode == "image" else (0, 2, 3)
    tp, fp, fn = (p * t).sum(dims), (p * (1 - t)).sum(dims), ((1 - p) * t).sum(dims)
    expected = (1 - (tp + 0.5) / (tp + 0.2 * fp + 0.8 * fn + 0.5)).mean()  # smooth 1 = 0.5 in TP / (...) form
    got = multiclass_tversky_loss(logits, labels, valid, alpha=0.2, beta=0.8, smooth=1.0, mode=mode)
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------- Lovász-softmax


def test_lovasz_softmax_hand_case():
    # pixel 0: logits [0, 0] -> p = [1/2, 1/2], class 0; pixel 1: logits [0, ln 3] -> p = [1/4, 3/4], class 1
    # class 0: errors [1/2 (truth 1), 1/4 (truth 0)] -> Jaccard increments [1, 0] -> 1/2
    # class 1: errors [1/2 (truth 0), 1/4 (truth 1)] -> increments [1/2, 1/2] -> 3/8;  mean 7/16
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, LN3]]]])
    target = torch.tensor([[[[0.0, 1.0]]]])
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(7 / 16)
    assert term_loss("multiclass", "lovasz")(torch.cat([logits, torch.full((1, 2, 1, 2), -50.0)], 1), target).item() \
        == pytest.approx(7 / 16, abs=1e-6)  # classes that are absent and never predicted change nothing


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_softmax_matches_brute_force(seed):
    logits, labels = multiclass_case(n=2, h=3, w=3, seed=60 + seed)
    if seed == 0:
        labels[0] = 2.0  # an image with a single class
    expected = lovasz_softmax_reference(logits, labels)
    assert lovasz_softmax_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_lovasz_softmax_with_two_classes_is_the_hinge_free_binary_extension():
    # logits [0, x]: p_1 = sigmoid(x) and both classes have the errors |t - sigmoid(x)|, with truths t and 1 - t
    x, target = random_case(n=1, h=3, w=4, seed=70)
    errors = (target - torch.sigmoid(x)).abs().flatten().tolist()
    truth = [int(v) for v in target.flatten().tolist()]
    expected = 0.5 * (lovasz_extension_reference(errors, truth) + lovasz_extension_reference(errors, [1 - t for t in truth]))
    got = lovasz_softmax_loss(torch.cat([torch.zeros_like(x), x], 1), target)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-4, 4), st.floats(-4, 4), st.floats(-4, 4), st.integers(0, 2)),
                min_size=1, max_size=8))
def test_lovasz_softmax_matches_brute_force_hypothesis(pixels):
    logits = torch.tensor([p[:3] for p in pixels], dtype=torch.float32).T.reshape(1, 3, 1, -1)
    labels = torch.tensor([float(p[3]) for p in pixels]).reshape(1, 1, 1, -1)
    assert lovasz_softmax_loss(logits, labels).item() == pytest.approx(lovasz_softmax_reference(logits, labels),
                                                                       rel=1e-4, abs=1e-5)


def test_lovasz_softmax_perfect_is_zero_and_wrong_is_high():
    _, labels = multiclass_case(seed=71)
    perfect = F.one_hot(labels[:, 0].long(), CLASSES).permute(0, 3, 1, 2).float() * 40
    assert lovasz_softmax_loss(perfect, labels).item() < 1e-6
    assert lovasz_softmax_loss(-perfect, labels).item() > 0.99


# ----------------------------------------------------------------------------- build_loss: presets and terms


def test_presets_are_data_over_registered_terms():
    assert list_presets() == list(PRESETS)
    assert all(term in list_losses() for preset in PRESETS.values() for term, _, _ in preset)
    for task, preset in TASK_DEFAULT_PRESET.items():
        assert all(task in loss_spec(term).tasks for term, _, _ in PRESETS[preset])
    # the config holds names as text, checked against the registry and the presets
    assert LossTerm.model_fields["name"].annotation is str
    for name in list_presets():
        assert LossConfig(name=name).name == name


def test_every_registered_term_reads_only_loss_config_options():
    for name in list_losses():
        spec = loss_spec(name)
        assert set(spec.options) <= set(LossConfig.model_fields), name
        assert spec.tasks and set(spec.tasks) <= {"binary", "multiclass"}
        for task, fix in spec.instead.items():
            assert task not in spec.tasks and task in loss_spec(fix).tasks, name


def _documented_terms() -> dict[str, set[str]]:
    """The term table of unetlab.losses' docstring: term -> the tasks marked yes."""
    import unetlab.losses

    lines = unetlab.losses.__doc__.split("Terms and the tasks they fit", 1)[1].splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    table = {}
    for line in lines[rules[1] + 1:rules[2]]:
        cells = line.split()
        if cells and not line.startswith(" "):
            table[cells[0]] = {task for task, mark in zip(("binary", "multiclass"), cells[1:3]) if mark == "yes"}
    return table


def test_every_registered_term_is_in_the_docs_table():
    documented = _documented_terms()
    assert sorted(documented) == list_losses()
    for name, tasks in documented.items():
        assert tasks == set(loss_spec(name).tasks), name


def _l1_on_sigmoid(options, task, class_weights):
    """A term defined only here: mean |sigmoid(logits) - target| over the valid pixels."""
    def fn(logits, target, valid):
        error = (torch.sigmoid(logits.float()) - target.float().reshape(logits.shape)).abs()
        keep = torch.ones_like(error) if valid is None else valid.reshape(error.shape).float()
        return (error * keep).sum() / keep.sum().clamp_min(1.0)
    return fn


def test_a_loss_registered_here_works_through_the_config_and_build_loss():
    logits, target = random_case(seed=77)
    with registered_loss("mytest", _l1_on_sigmoid, tasks=("binary",)) as spec:
        assert spec.name == "mytest" and "mytest" in list_losses()
        cfg = load_config(None, ["loss.terms=[{name: mytest}, {name: bce, weight: 0.5}]"])
        loss = build_loss(cfg.loss, cfg.task, cfg.model.classes)
        expected = (torch.sigmoid(logits) - target).abs().mean() + 0.5 * bce_loss(logits, target)
        torch.testing.assert_close(loss(logits, target), expected)
        assert set(loss.components(logits, target)) == {"mytest", "bce"}
        with pytest.raises(ConfigError, match=r"'loss.terms': term 'mytest' is for task binary; use one of .*dice"):
            load_config(None, ["task=multiclass", "model.classes=3", "loss.terms=[{name: mytest}]"])
        with pytest.raises(ValueError, match="twice"):
            register_loss("mytest")(_l1_on_sigmoid)
    assert "mytest" not in list_losses()
    with pytest.raises(ConfigError, match=r"'loss.terms.0.name': unknown loss term 'mytest'; choose one of bce, ce"):
        load_config(None, ["loss.terms=[{name: mytest}]"])


def test_a_registered_term_gets_the_options_it_declares():
    seen = {}

    def builder(options, task, class_weights):
        seen.update(options, task=task, weights=class_weights(torch.device("cpu")))
        return lambda logits, target, valid: logits.float().mean() * 0

    register_loss("_opts", options=("smooth", "class_weights"))(builder)
    try:
        build_loss(LossConfig(terms=[{"name": "_opts"}], smooth=0.25), "multiclass", 3, class_weights=[1, 2, 3])
    finally:
        unregister_loss("_opts")
    assert seen.pop("smooth") == 0.25 and seen.pop("task") == "multiclass"
    assert seen.pop("weights").tolist() == [1.0, 2.0, 3.0] and not seen
    with pytest.raises(ValueError, match="tasks"):
        register_loss("_bad", tasks=("regression",))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_for_the_tasks_it_fits(name):
    fits = [task for task in ("binary", "multiclass")
            if all(task in loss_spec(term).tasks for term, _, _ in PRESETS[name])]
    assert fits
    for task in fits:
        logits, target = case_for(task, seed=80)
        value = build_loss(LossConfig(name=name, lovasz_start=0.0), task, 1 if task == "binary" else CLASSES)(
            logits.bfloat16(), target, 1.0)
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value) and value >= 0


def test_terms_equal_the_preset_they_spell_out():
    preset = build_loss(LossConfig(name="ce_lovasz", lovasz_start=0.4), "multiclass", CLASSES)
    spelled = build_loss(LossConfig(terms=[{"name": "ce"}, {"name": "lovasz", "start": 0.4}]), "multiclass", CLASSES)
    logits, labels = multiclass_case(seed=81)
    for progress in (0.0, 0.39, 0.4, 1.0):
        torch.testing.assert_close(preset(logits, labels, progress), spelled(logits, labels, progress))
    assert [t.name for t in loss_terms(LossConfig(name="bce_lovasz", lovasz_start=0.3))] == ["bce", "lovasz"]
    assert loss_terms(LossConfig(name="bce_lovasz", lovasz_start=0.3))[1].start == 0.3


def test_weighted_terms_join_at_their_start():
    cfg = LossConfig(terms=[{"name": "ce"}, {"name": "dice", "weight": 0.5}, {"name": "lovasz", "weight": 2, "start": 0.5}])
    loss = build_loss(cfg, "multiclass", CLASSES)
    logits, labels = multiclass_case(seed=82)
    early = cross_entropy_loss(logits, labels) + 0.5 * multiclass_dice_loss(logits, labels)
    torch.testing.assert_close(loss(logits, labels, 0.2), early)
    torch.testing.assert_close(loss(logits, labels, 0.5), early + 2 * lovasz_softmax_loss(logits, labels))
    parts = loss.components(logits, labels, 0.2)
    assert set(parts) == {"ce", "dice"}
    torch.testing.assert_close(parts["dice"], multiclass_dice_loss(logits, labels))


def test_a_term_stops_at_its_stop_bce_first_then_lovasz_alone():
    cfg = LossConfig(terms=[{"name": "bce", "stop": 0.6}, {"name": "lovasz", "start": 0.5}])
    loss = build_loss(cfg, "binary")
    logits, target = random_case(seed=84)
    bce, lovasz = bce_loss(logits, target), lovasz_hinge_loss(logits, target)
    torch.testing.assert_close(loss(logits, target, 0.0), bce)
    torch.testing.assert_close(loss(logits, target, 0.55), bce + lovasz)
    torch.testing.assert_close(loss(logits, target, 0.6), lovasz)  # stop is exclusive
    torch.testing.assert_close(loss(logits, target, 1.0), lovasz)
    assert set(loss.components(logits, target, 0.7)) == {"lovasz"}
    assert "1*bce..0.6" in repr(loss)


@pytest.mark.parametrize("terms, needle", [
    ([{"name": "bce", "start": 0.0, "stop": 0.0}], "stop"),
    ([{"name": "bce", "stop": 0.4}, {"name": "lovasz", "start": 0.4, "stop": 0.3}], "stops at 0.3"),
    ([{"name": "bce", "stop": 0.5}, {"name": "lovasz", "start": 0.6}], "from progress 0.5"),
    ([{"name": "bce", "stop": 0.5}, {"name": "lovasz", "weight": 0, "start": 0.5}], "from progress 0.5"),
])
def test_stops_that_leave_nothing_to_train_are_refused(terms, needle):
    with pytest.raises(ConfigError, match="loss.terms") as info:
        load_config(None, [f"loss.terms={terms}"])
    assert needle in str(info.value)


def test_options_reach_the_terms():
    logits, target = random_case(seed=83)
    cfg = LossConfig(name="tversky", tversky_alpha=0.6, tversky_beta=0.1, smooth=0.5, dice_mode="image")
    torch.testing.assert_close(build_loss(cfg)(logits, target),
                               tversky_loss(logits, target, alpha=0.6, beta=0.1, smooth=0.5, mode="image"))
    cfg = LossConfig(name="focal", focal_gamma=1.5, focal_alpha=0.8)
    torch.testing.assert_close(build_loss(cfg)(logits, target), binary_focal_loss(logits, target, gamma=1.5, alpha=0.8))


def test_config_round_trip_and_overrides():
    cfg = load_config(None, ["task=multiclass", "model.classes=3", "loss.terms=[{name: ce}, {name: dice, weight: 0.5}]"])
    assert cfg.loss.name is None and [t.name for t in cfg.loss.terms] == ["ce", "dice"]
    assert LossConfig.model_validate(cfg.loss.model_dump(mode="json")) == cfg.loss
    preset = LossConfig(name="ce_dice", class_weights=[1, 2])
    assert LossConfig.model_validate(preset.model_dump(mode="json")) == preset
    assert load_config(None, ["loss.class_weights=median"]).loss.class_weights == "median"


# ----------------------------------------------------------------------------- gradients


def _make_case(task: str, case: str):
    logits, target = case_for(task, seed=90, h=6, w=6)
    valid = None
    top = 1.0 if task == "binary" else CLASSES - 1.0
    if case == "all_empty":
        target = torch.zeros_like(target)
    elif case == "all_full":
        target = torch.full_like(target, top)
    elif case == "extreme_logits":
        logits = torch.sign(logits) * 100.0
    elif case == "all_ignored":
        valid = torch.zeros_like(target, dtype=torch.bool)
    return logits, target, valid


@pytest.mark.parametrize("task,term", TASK_TERMS)
@pytest.mark.parametrize("case", ["random", "all_empty", "all_full", "extreme_logits", "all_ignored", "bf16"])
@pytest.mark.parametrize("mode", ["batch", "image"])
def test_every_term_has_finite_gradients(task, term, case, mode):
    logits, target, valid = _make_case(task, case)
    if case == "bf16":
        logits = logits.bfloat16()
    logits.requires_grad_(True)
    value = term_loss(task, term, dice_mode=mode, focal_gamma=0.5)(logits, target, 1.0, valid)
    assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    if case == "all_ignored":
        assert value.item() == 0.0 and torch.all(logits.grad == 0)
    if case in ("random", "bf16"):
        assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_nothing_active_yet_is_a_zero_that_backpropagates(task):
    cfg = LossConfig(terms=[{"name": "dice"}, {"name": "lovasz", "start": 0.5}])
    loss = build_loss(cfg, task, 1 if task == "binary" else CLASSES)
    loss.terms[0] = loss.terms[0].__class__("dice", 0.0, 0.0, loss.terms[0].fn)  # weight 0: skipped
    logits, target = case_for(task, seed=91)
    logits.requires_grad_(True)
    value = loss(logits, target, 0.0)
    value.backward()
    assert value.item() == 0.0 and torch.all(logits.grad == 0)


# ----------------------------------------------------------------------------- ignored pixels


@pytest.mark.parametrize("task,term", TASK_TERMS)
@pytest.mark.parametrize("mode", ["batch", "image"])
def test_ignored_pixels_change_nothing_for_every_term(task, term, mode):
    loss = term_loss(task, term, dice_mode=mode)
    logits, target = case_for(task, seed=92, n=3, h=6, w=6)
    valid = torch.rand(target.shape, generator=gen(93)) > 0.3
    valid[2] = False  # and one image with no valid pixel at all
    other_logits = torch.where(valid, logits, torch.randn(logits.shape, generator=gen(94)) * 10)
    garbage = torch.where(torch.rand(target.shape, generator=gen(95)) > 0.5, 255.0, float("nan"))
    other_target = torch.where(valid, target, garbage)
    grads, values = [], []
    for x, y in ((logits, target), (other_logits, other_target)):
        x = x.clone().requires_grad_(True)
        value = loss(x, y, 1.0, valid)
        (grad,) = torch.autograd.grad(value, x)
        values.append(value)
        grads.append(grad)
    assert torch.isfinite(values[0]) and values[0].item() == pytest.approx(values[1].item(), abs=1e-6)
    keep = valid.expand_as(logits)
    torch.testing.assert_close(grads[0][keep], grads[1][keep])
    assert torch.all(grads[0][~keep] == 0) and torch.all(grads[1][~keep] == 0)
    # an all-true mask (bool, uint8 or float) is no mask
    plain = loss(logits, target, 1.0)
    for everything in (torch.ones_like(valid), torch.ones_like(target, dtype=torch.uint8), torch.ones_like(target)):
        assert loss(logits, target, 1.0, everything).item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("term", MULTICLASS_TERMS)
def test_multiclass_labels_outside_the_classes_count_as_ignored(term):
    loss = term_loss("multiclass", term)
    logits, labels = multiclass_case(seed=96)
    valid = torch.rand(labels.shape, generator=gen(97)) > 0.3
    with_ignore_index = torch.where(valid, labels, torch.full_like(labels, 11.0))
    torch.testing.assert_close(loss(logits, with_ignore_index), loss(logits, labels, 0.0, valid))


# ----------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize("name,fix", [("bce", "'ce'"), ("bce_dice", "'ce_dice'"), ("bce_lovasz", "'ce_lovasz'")])
def test_binary_presets_refused_for_multiclass(name, fix):
    with pytest.raises(ConfigError, match="'loss.name'") as info:
        build_loss(LossConfig(name=name), "multiclass", CLASSES)
    assert fix in str(info.value) and "multiclass" in str(info.value)


@pytest.mark.parametrize("name,fix", [("ce", "'bce'"), ("ce_dice", "'bce_dice'"), ("ce_lovasz", "'bce_lovasz'")])
def test_multiclass_presets_refused_for_binary(name, fix):
    with pytest.raises(ConfigError, match="'loss.name'") as info:
        build_loss(LossConfig(name=name), "binary")
    assert fix in str(info.value)


def test_terms_refused_for_the_wrong_task_name_loss_terms():
    with pytest.raises(ConfigError, match=r"'loss.terms'.*'ce'"):
        build_loss(LossConfig(terms=[{"name": "bce"}, {"name": "dice"}]), "multiclass", CLASSES)
    with pytest.raises(ConfigError, match=r"'loss.terms'.*'bce'"):
        check_loss_config(LossConfig(terms=[{"name": "ce"}]), "binary", 1)


def test_class_weight_length_refused():
    with pytest.raises(ConfigError) as info:
        build_loss(LossConfig(name="ce"), "multiclass", 11, class_weights=[1.0, 2.0, 3.0])
    assert str(info.value) == "bad value for 'loss.class_weights': 3 weights for 11 classes; give one per class"
    with pytest.raises(ConfigError, match="'loss.class_weights'.*background, foreground"):
        build_loss(LossConfig(name="bce"), "binary", class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="'loss.class_weights'"):
        build_loss(LossConfig(name="ce", class_weights=[1.0, 2.0]), "multiclass", CLASSES)
    with pytest.raises(ConfigError, match="'loss.class_weights'"):
        build_loss(LossConfig(name="ce"), "multiclass", 2, class_weights=[1.0, -1.0])


@pytest.mark.parametrize("override,key", [
    ("loss.terms=[{name: hinge}]", "loss.terms.0.name"),
    ("loss.terms=[{name: ce, weight: -1}]", "loss.terms.0.weight"),
    ("loss.terms=[{name: ce, start: 2}]", "loss.terms.0.start"),
    ("loss.terms=[{name: lovasz, start: 0.5}]", "loss.terms"),
    ("loss.terms=[]", "loss.terms"),
    ("loss.name=hinge", "loss.name"),
    ("loss.class_weights=[1, -2]", "loss.class_weights"),
    ("loss.class_weights=mean", "loss.class_weights"),
    ("loss.dice_mode=pixel", "loss.dice_mode"),
    ("loss.focal_alpha=1.5", "loss.focal_alpha"),
    ("loss.smooth=0", "loss.smooth"),
    ("loss.pos_weight=0", "loss.pos_weight"),
])
def test_bad_loss_config_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_name_and_terms_together_refused():
    with pytest.raises(ConfigError, match="'loss.name'.*loss.terms"):
        LossConfig(name="bce_dice", terms=[{"name": "bce"}])
    with pytest.raises(ConfigError, match="'loss.name'"):
        load_config(None, ["loss.name=ce", "loss.terms=[{name: ce}]"])
    assert load_config(None, ["loss.name=null", "loss.terms=[{name: bce}]"]).loss.name is None


def test_binary_only_options_refused_for_multiclass():
    with pytest.raises(ConfigError, match="'loss.pos_weight'"):
        build_loss(LossConfig(name="ce", pos_weight=2.0), "multiclass", CLASSES)
    with pytest.raises(ConfigError, match="'loss.focal_alpha'.*class_weights"):
        build_loss(LossConfig(name="focal", focal_alpha=0.25), "multiclass", CLASSES)
    with pytest.raises(ConfigError, match="'loss.pos_weight'"):
        LossConfig(name="bce", pos_weight=2.0, class_weights=[1.0, 1.0])
    with pytest.raises(ConfigError, match="'loss.pos_weight'"):
        build_loss(LossConfig(name="bce", pos_weight=2.0), "binary", class_weights=[1.0, 2.0])


def test_task_and_classes_checked():
    with pytest.raises(ConfigError, match="'model.classes'"):
        build_loss(LossConfig(name="ce"), "multiclass", 1)
    with pytest.raises(ConfigError, match="'model.classes'"):
        build_loss(LossConfig(name="bce"), "binary", 3)
    with pytest.raises(ConfigError, match="'task'"):
        build_loss(LossConfig(name="bce"), "regression")


def test_class_weight_methods_need_the_computed_weights():
    cfg = LossConfig(name="ce", class_weights="inverse")
    with pytest.raises(ValueError, match="class_weights"):
        build_loss(cfg, "multiclass", CLASSES)
    logits, labels = multiclass_case(seed=98)
    weights = [0.5, 1.0, 1.5, 2.0]
    torch.testing.assert_close(build_loss(cfg, "multiclass", CLASSES, class_weights=weights)(logits, labels),
                               F.cross_entropy(logits, labels[:, 0].long(), weight=torch.tensor(weights)))


def test_logits_with_the_wrong_channels_refused():
    loss = build_loss(LossConfig(name="ce"), "multiclass", CLASSES)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2))


def test_unset_name_is_the_task_default():
    from unetlab.losses import loss_terms

    assert [t.name for t in loss_terms(load_config(None, ["loss.name=null"]).loss)] == ["bce"]
    multiclass = load_config(None, ["task=multiclass", "model.classes=4"])
    assert [t.name for t in loss_terms(multiclass.loss, "multiclass")] == ["ce"]


def test_losses_does_not_import_the_config_at_run_time():
    """config -> losses only: losses names config types for type checkers alone (no import cycle)."""
    import ast
    from pathlib import Path

    import unetlab.losses

    tree = ast.parse(Path(unetlab.losses.__file__).read_text())
    guarded = {id(node) for block in tree.body
               if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for node in ast.walk(block)}
    imports = [ast.unparse(node) for node in ast.walk(tree)
               if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded]
    assert not [line for line in imports if "unetlab.config" in line or line.startswith("from unetlab import")
                or line == "import unetlab"], imports
