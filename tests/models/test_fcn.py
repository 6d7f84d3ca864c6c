"""Tests for the plain FCN (same-resolution 3x3 convolutions, no encoder-decoder)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

from unetlab.errors import ConfigError
from unetlab.models import registry
from unetlab.models.fcn import FCN, NORMS, fcn, fcn_dilated, fcn_small
from unetlab.models.registry import create_model, list_models

TINY = (4, 6)  # widths of a cheap two-layer network


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [(37, 53), (101, 101), (1, 1), (2, 7)])
def test_size_preserved_for_any_input(size):
    torch.manual_seed(0)
    model = FCN(widths=TINY, dilations=(1, 3), classes=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, *size)


@pytest.mark.parametrize("norm", NORMS)
def test_each_norm_trains_and_keeps_size(norm):
    torch.manual_seed(0)
    model = FCN(in_channels=3, classes=2, widths=TINY, norm=norm).train()
    out = model(torch.randn(2, 3, 37, 53))
    assert out.shape == (2, 2, 37, 53)
    kinds = {"batch": nn.BatchNorm2d, "group": nn.GroupNorm, "instance": nn.InstanceNorm2d}
    norms = [m for m in model.features if isinstance(m, tuple(kinds.values()))]
    assert len(norms) == (0 if norm == "none" else len(TINY))
    assert all(isinstance(m, kinds[norm]) for m in norms)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all((conv.bias is not None) == (norm == "none") for conv in convs)  # bias only without a norm
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 16, 16))).all()


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_one_pixel_image(norm):
    model = FCN(widths=TINY, dilations=(2, 8), norm=norm).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 1, 1)).shape == (1, 1, 1, 1)


def test_dilated_keeps_size_and_pads_by_dilation():
    model = FCN(widths=(4, 4, 4, 4), dilations=(1, 2, 4, 8)).eval()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation for c in convs] == [(d, d) for d in (1, 2, 4, 8)]
    assert [c.padding for c in convs] == [(d, d) for d in (1, 2, 4, 8)]
    assert model.receptive_field == 31
    with torch.no_grad():
        assert model(torch.randn(1, 1, 37, 53)).shape == (1, 1, 37, 53)
        assert model(torch.randn(1, 1, 5, 5)).shape == (1, 1, 5, 5)  # smaller than the dilation


@pytest.mark.parametrize("options", [{}, {"dilations": (1, 2)}, {"norm": "group", "dropout": 0.2},
                                     {"norm": "instance"}, {"norm": "none"}])
def test_gradients_finite_for_every_parameter(options):
    torch.manual_seed(0)
    model = FCN(widths=TINY, **options).train()
    x = torch.randn(2, 1, 19, 23)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), (x > 0).float())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_dropout_layers_only_when_asked():
    assert not any(isinstance(m, nn.Dropout2d) for m in FCN(widths=TINY).modules())
    model = FCN(widths=TINY, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) == len(TINY)
    model.eval()
    x = torch.randn(1, 1, 9, 9)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # dropout is off in eval mode


def test_parameter_count_by_hand():
    # in 2 -> 4 -> 6 -> 3 classes. Conv weights 9*2*4 + 9*4*6, head 6*3 + 3.
    convs, head = 9 * 2 * 4 + 9 * 4 * 6, 6 * 3 + 3
    assert n_params(FCN(in_channels=2, classes=3, widths=TINY, norm="batch")) == convs + 2 * (4 + 6) + head
    assert n_params(FCN(in_channels=2, classes=3, widths=TINY, norm="group")) == convs + 2 * (4 + 6) + head
    assert n_params(FCN(in_channels=2, classes=3, widths=TINY, norm="instance")) == convs + 2 * (4 + 6) + head
    assert n_params(FCN(in_channels=2, classes=3, widths=TINY, norm="none")) == convs + (4 + 6) + head
    # The report's network: 9 * (1*30 + 30*90 + 90*270 + 270*810) conv weights, 2 * 1200 batch norm, 811 head.
    assert n_params(create_model("fcn")) == 9 * (30 + 30 * 90 + 90 * 270 + 270 * 810) + 2 * 1200 + 811 == 2_214_781
    assert n_params(create_model("fcn-small")) == 9 * (32 + 3 * 32 * 32) + 2 * 128 + 33 == 28_225


def test_registry_names_create_models():
    names = set(list_models())
    assert {"fcn", "fcn-dilated", "fcn-small"} <= names
    small = create_model("fcn-small", in_channels=3, classes=2)
    assert isinstance(small, FCN) and small.widths == (32, 32, 32, 32) and small.dilations == (1, 1, 1, 1)
    assert small.in_channels == 3 and small.classes == 2
    dilated = create_model("fcn-dilated", widths=[8, 8, 8, 8])  # lists from YAML are fine
    assert dilated.widths == (8, 8, 8, 8) and dilated.dilations == (1, 2, 4, 8) and dilated.receptive_field == 31
    plain = create_model("fcn", widths=(8, 8), norm="group")
    assert plain.dilations == (1, 1) and plain.norm == "group" and plain.receptive_field == 5
    assert create_model("fcn", dilations=(1, 2, 4, 8), widths=(4, 4, 4, 4)).receptive_field == 31
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 20, 30)).shape == (1, 2, 20, 30)


def test_factory_signatures_equal_the_class():
    expected = list(inspect.signature(FCN).parameters)
    for factory in (fcn, fcn_dilated, fcn_small):
        assert list(inspect.signature(factory).parameters) == expected
    defaults = {name: p.default for name, p in inspect.signature(fcn_dilated).parameters.items()}
    assert defaults["dilations"] == (1, 2, 4, 8) and defaults["widths"] == (30, 90, 270, 810)
    assert inspect.signature(fcn_small).parameters["widths"].default == (32, 32, 32, 32)


@pytest.mark.parametrize("options, option", [
    ({"widths": ()}, "widths"),
    ({"widths": (8, 0)}, "widths"),
    ({"widths": "32"}, "widths"),
    ({"widths": (8.5, 8)}, "widths"),
    ({"widths": (True, 8)}, "widths"),
    ({"widths": (8, 8), "dilations": (1, 2, 4)}, "dilations"),
    ({"widths": (8, 8), "dilations": (1, 0)}, "dilations"),
    ({"dilations": 2}, "dilations"),
    ({"norm": "layer"}, "norm"),
    ({"norm": None}, "norm"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"dropout": "0.1"}, "dropout"),
    ({"in_channels": 0}, "in_channels"),
    ({"classes": 0}, "classes"),
    ({"classes": 1.5}, "classes"),
])
def test_bad_options_refused_by_name(options, option):
    with pytest.raises(ValueError, match=f"^{option}"):
        FCN(**options)
    with pytest.raises(ConfigError, match=f"^bad value for 'model.{option}':"):
        create_model("fcn", **options)


def test_unknown_option_refused():
    with pytest.raises(ConfigError, match="model.depth"):
        create_model("fcn-small", depth=3)


def test_config_validation_builds_on_meta():
    validate = getattr(registry, "validate_options", None)
    if validate is None:
        pytest.skip("registry.validate_options not available")
    resolved = validate("fcn-dilated", {"widths": [8, 8, 8, 8]})
    assert tuple(resolved["widths"]) == (8, 8, 8, 8) and tuple(resolved["dilations"]) == (1, 2, 4, 8)
    assert resolved["norm"] == "batch" and resolved["dropout"] == 0.0
    with pytest.raises(ConfigError, match="model.dilations"):
        validate("fcn", {"widths": [8, 8], "dilations": [1]})
