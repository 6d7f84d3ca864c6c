"""Tests of the U-Net's options: every named variant, combinations, parameter counts, validation, and
the seed's state-dict layout for the defaults (a trained checkpoint must still load)."""

from __future__ import annotations

import inspect
import io

import pytest
import torch
import yaml
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unetlab.engine.step import training_loss
from unetlab.errors import ConfigError
from unetlab.models import UNet, create_model, list_models, register_variant, variant_of
from unetlab.models.blocks import SCSE, ConvBlock, ResidualBlock, StridedDown, group_norm
from unetlab.models.registry import unregister_model, validate_options
from unetlab.models.unet import unet

# ----------------------------------------------------------------------------- the seed's layout

# create_model("unet").state_dict(), keys and shapes, dumped from the seed's code (batch_norm=True)
# BEFORE the options were added. The default model must keep exactly these: trained checkpoints load.
SEED_DEFAULT_STATE = [
    ("encoder.0.0.weight", (16, 1, 3, 3)),
    ("encoder.0.1.weight", (16,)),
    ("encoder.0.1.bias", (16,)),
    ("encoder.0.1.running_mean", (16,)),
    ("encoder.0.1.running_var", (16,)),
    ("encoder.0.1.num_batches_tracked", ()),
    ("encoder.0.3.weight", (16, 16, 3, 3)),
    ("encoder.0.4.weight", (16,)),
    ("encoder.0.4.bias", (16,)),
    ("encoder.0.4.running_mean", (16,)),
    ("encoder.0.4.running_var", (16,)),
    ("encoder.0.4.num_batches_tracked", ()),
    ("encoder.1.0.weight", (32, 16, 3, 3)),
    ("encoder.1.1.weight", (32,)),
    ("encoder.1.1.bias", (32,)),
    ("encoder.1.1.running_mean", (32,)),
    ("encoder.1.1.running_var", (32,)),
    ("encoder.1.1.num_batches_tracked", ()),
    ("encoder.1.3.weight", (32, 32, 3, 3)),
    ("encoder.1.4.weight", (32,)),
    ("encoder.1.4.bias", (32,)),
    ("encoder.1.4.running_mean", (32,)),
    ("encoder.1.4.running_var", (32,)),
    ("encoder.1.4.num_batches_tracked", ()),
    ("encoder.2.0.weight", (64, 32, 3, 3)),
    ("encoder.2.1.weight", (64,)),
    ("encoder.2.1.bias", (64,)),
    ("encoder.2.1.running_mean", (64,)),
    ("encoder.2.1.running_var", (64,)),
    ("encoder.2.1.num_batches_tracked", ()),
    ("encoder.2.3.weight", (64, 64, 3, 3)),
    ("encoder.2.4.weight", (64,)),
    ("encoder.2.4.bias", (64,)),
    ("encoder.2.4.running_mean", (64,)),
    ("encoder.2.4.running_var", (64,)),
    ("encoder.2.4.num_batches_tracked", ()),
    ("encoder.3.0.weight", (128, 64, 3, 3)),
    ("encoder.3.1.weight", (128,)),
    ("encoder.3.1.bias", (128,)),
    ("encoder.3.1.running_mean", (128,)),
    ("encoder.3.1.running_var", (128,)),
    ("encoder.3.1.num_batches_tracked", ()),
    ("encoder.3.3.weight", (128, 128, 3, 3)),
    ("encoder.3.4.weight", (128,)),
    ("encoder.3.4.bias", (128,)),
    ("encoder.3.4.running_mean", (128,)),
    ("encoder.3.4.running_var", (128,)),
    ("encoder.3.4.num_batches_tracked", ()),
    ("bottleneck.0.weight", (256, 128, 3, 3)),
    ("bottleneck.1.weight", (256,)),
    ("bottleneck.1.bias", (256,)),
    ("bottleneck.1.running_mean", (256,)),
    ("bottleneck.1.running_var", (256,)),
    ("bottleneck.1.num_batches_tracked", ()),
    ("bottleneck.3.weight", (256, 256, 3, 3)),
    ("bottleneck.4.weight", (256,)),
    ("bottleneck.4.bias", (256,)),
    ("bottleneck.4.running_mean", (256,)),
    ("bottleneck.4.running_var", (256,)),
    ("bottleneck.4.num_batches_tracked", ()),
    ("upsample.0.weight", (256, 128, 2, 2)),
    ("upsample.0.bias", (128,)),
    ("upsample.1.weight", (128, 64, 2, 2)),
    ("upsample.1.bias", (64,)),
    ("upsample.2.weight", (64, 32, 2, 2)),
    ("upsample.2.bias", (32,)),
    ("upsample.3.weight", (32, 16, 2, 2)),
    ("upsample.3.bias", (16,)),
    ("decoder.0.0.weight", (128, 256, 3, 3)),
    ("decoder.0.1.weight", (128,)),
    ("decoder.0.1.bias", (128,)),
    ("decoder.0.1.running_mean", (128,)),
    ("decoder.0.1.running_var", (128,)),
    ("decoder.0.1.num_batches_tracked", ()),
    ("decoder.0.3.weight", (128, 128, 3, 3)),
    ("decoder.0.4.weight", (128,)),
    ("decoder.0.4.bias", (128,)),
    ("decoder.0.4.running_mean", (128,)),
    ("decoder.0.4.running_var", (128,)),
    ("decoder.0.4.num_batches_tracked", ()),
    ("decoder.1.0.weight", (64, 128, 3, 3)),
    ("decoder.1.1.weight", (64,)),
    ("decoder.1.1.bias", (64,)),
    ("decoder.1.1.running_mean", (64,)),
    ("decoder.1.1.running_var", (64,)),
    ("decoder.1.1.num_batches_tracked", ()),
    ("decoder.1.3.weight", (64, 64, 3, 3)),
    ("decoder.1.4.weight", (64,)),
    ("decoder.1.4.bias", (64,)),
    ("decoder.1.4.running_mean", (64,)),
    ("decoder.1.4.running_var", (64,)),
    ("decoder.1.4.num_batches_tracked", ()),
    ("decoder.2.0.weight", (32, 64, 3, 3)),
    ("decoder.2.1.weight", (32,)),
    ("decoder.2.1.bias", (32,)),
    ("decoder.2.1.running_mean", (32,)),
    ("decoder.2.1.running_var", (32,)),
    ("decoder.2.1.num_batches_tracked", ()),
    ("decoder.2.3.weight", (32, 32, 3, 3)),
    ("decoder.2.4.weight", (32,)),
    ("decoder.2.4.bias", (32,)),
    ("decoder.2.4.running_mean", (32,)),
    ("decoder.2.4.running_var", (32,)),
    ("decoder.2.4.num_batches_tracked", ()),
    ("decoder.3.0.weight", (16, 32, 3, 3)),
    ("decoder.3.1.weight", (16,)),
    ("decoder.3.1.bias", (16,)),
    ("decoder.3.1.running_mean", (16,)),
    ("decoder.3.1.running_var", (16,)),
    ("decoder.3.1.num_batches_tracked", ()),
    ("decoder.3.3.weight", (16, 16, 3, 3)),
    ("decoder.3.4.weight", (16,)),
    ("decoder.3.4.bias", (16,)),
    ("decoder.3.4.running_mean", (16,)),
    ("decoder.3.4.running_var", (16,)),
    ("decoder.3.4.num_batches_tracked", ()),
    ("head.weight", (1, 16, 1, 1)),
    ("head.bias", (1,)),
]

# The same for the seed's batch_norm=False (now norm="none"): conv biases, no norm, ReLUs at 1 and 3.
SEED_NO_BATCH_NORM_STATE = [
    ("encoder.0.0.weight", (16, 1, 3, 3)),
    ("encoder.0.0.bias", (16,)),
    ("encoder.0.2.weight", (16, 16, 3, 3)),
    ("encoder.0.2.bias", (16,)),
    ("encoder.1.0.weight", (32, 16, 3, 3)),
    ("encoder.1.0.bias", (32,)),
    ("encoder.1.2.weight", (32, 32, 3, 3)),
    ("encoder.1.2.bias", (32,)),
    ("encoder.2.0.weight", (64, 32, 3, 3)),
    ("encoder.2.0.bias", (64,)),
    ("encoder.2.2.weight", (64, 64, 3, 3)),
    ("encoder.2.2.bias", (64,)),
    ("encoder.3.0.weight", (128, 64, 3, 3)),
    ("encoder.3.0.bias", (128,)),
    ("encoder.3.2.weight", (128, 128, 3, 3)),
    ("encoder.3.2.bias", (128,)),
    ("bottleneck.0.weight", (256, 128, 3, 3)),
    ("bottleneck.0.bias", (256,)),
    ("bottleneck.2.weight", (256, 256, 3, 3)),
    ("bottleneck.2.bias", (256,)),
    ("upsample.0.weight", (256, 128, 2, 2)),
    ("upsample.0.bias", (128,)),
    ("upsample.1.weight", (128, 64, 2, 2)),
    ("upsample.1.bias", (64,)),
    ("upsample.2.weight", (64, 32, 2, 2)),
    ("upsample.2.bias", (32,)),
    ("upsample.3.weight", (32, 16, 2, 2)),
    ("upsample.3.bias", (16,)),
    ("decoder.0.0.weight", (128, 256, 3, 3)),
    ("decoder.0.0.bias", (128,)),
    ("decoder.0.2.weight", (128, 128, 3, 3)),
    ("decoder.0.2.bias", (128,)),
    ("decoder.1.0.weight", (64, 128, 3, 3)),
    ("decoder.1.0.bias", (64,)),
    ("decoder.1.2.weight", (64, 64, 3, 3)),
    ("decoder.1.2.bias", (64,)),
    ("decoder.2.0.weight", (32, 64, 3, 3)),
    ("decoder.2.0.bias", (32,)),
    ("decoder.2.2.weight", (32, 32, 3, 3)),
    ("decoder.2.2.bias", (32,)),
    ("decoder.3.0.weight", (16, 32, 3, 3)),
    ("decoder.3.0.bias", (16,)),
    ("decoder.3.2.weight", (16, 16, 3, 3)),
    ("decoder.3.2.bias", (16,)),
    ("head.weight", (1, 16, 1, 1)),
    ("head.bias", (1,)),
]

# What the seed's scse=True added (between decoder and head).
SEED_SCSE_ATTENTION_STATE = [
    ("attention.0.channel_gate.1.weight", (16, 128, 1, 1)),
    ("attention.0.channel_gate.1.bias", (16,)),
    ("attention.0.channel_gate.3.weight", (128, 16, 1, 1)),
    ("attention.0.channel_gate.3.bias", (128,)),
    ("attention.0.spatial_gate.0.weight", (1, 128, 1, 1)),
    ("attention.0.spatial_gate.0.bias", (1,)),
    ("attention.1.channel_gate.1.weight", (8, 64, 1, 1)),
    ("attention.1.channel_gate.1.bias", (8,)),
    ("attention.1.channel_gate.3.weight", (64, 8, 1, 1)),
    ("attention.1.channel_gate.3.bias", (64,)),
    ("attention.1.spatial_gate.0.weight", (1, 64, 1, 1)),
    ("attention.1.spatial_gate.0.bias", (1,)),
    ("attention.2.channel_gate.1.weight", (4, 32, 1, 1)),
    ("attention.2.channel_gate.1.bias", (4,)),
    ("attention.2.channel_gate.3.weight", (32, 4, 1, 1)),
    ("attention.2.channel_gate.3.bias", (32,)),
    ("attention.2.spatial_gate.0.weight", (1, 32, 1, 1)),
    ("attention.2.spatial_gate.0.bias", (1,)),
    ("attention.3.channel_gate.1.weight", (2, 16, 1, 1)),
    ("attention.3.channel_gate.1.bias", (2,)),
    ("attention.3.channel_gate.3.weight", (16, 2, 1, 1)),
    ("attention.3.channel_gate.3.bias", (16,)),
    ("attention.3.spatial_gate.0.weight", (1, 16, 1, 1)),
    ("attention.3.spatial_gate.0.bias", (1,)),
]


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def test_default_state_dict_is_the_seeds():
    assert layout(create_model("unet")) == SEED_DEFAULT_STATE
    spelled_out = create_model("unet", downsample="maxpool", skip="concat", upsample="transposed",
                               block="plain", norm="batch", width_multiplier=2.0, dropout=0.3)
    assert layout(spelled_out) == SEED_DEFAULT_STATE


def test_norm_none_state_dict_is_the_seeds_batch_norm_false():
    assert layout(create_model("unet", norm="none")) == SEED_NO_BATCH_NORM_STATE


def test_scse_state_dict_is_the_seeds():
    assert layout(create_model("unet", scse=True)) == SEED_DEFAULT_STATE[:-2] + SEED_SCSE_ATTENTION_STATE \
        + SEED_DEFAULT_STATE[-2:]


def test_seed_checkpoint_loads_strictly_and_predicts_the_same():
    """A state dict in the seed's layout loads strictly and the model computes the same function."""
    torch.manual_seed(0)
    model = create_model("unet", base_width=4)
    plain = {key: value.clone() for key, value in model.state_dict().items()}
    other = create_model("unet", base_width=4, downsample="maxpool", skip="concat")
    other.load_state_dict(plain, strict=True)
    x = torch.randn(1, 1, 29, 35)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), other.eval()(x))


def test_batch_norm_option_is_gone():
    assert "batch_norm" not in inspect.signature(unet).parameters
    with pytest.raises(ConfigError, match="model.batch_norm"):
        create_model("unet", batch_norm=False)


def test_factory_signature_equals_the_class():
    factory = inspect.signature(unet).parameters
    cls = dict(inspect.signature(UNet.__init__).parameters)
    cls.pop("self")
    assert [(p.name, p.default, p.kind) for p in factory.values()] == \
        [(p.name, p.default, p.kind) for p in cls.values()]
    assert list(factory) == ["in_channels", "classes", "base_width", "depth", "width_multiplier", "downsample",
                             "strided_kernel", "skip", "upsample", "block", "norm", "dropout", "dropout_at",
                             "scse", "stem", "image_head", "image_head_weight"]


# ----------------------------------------------------------------------------- every variant

COMBINATIONS = {
    "strided-add-bilinear-residual-group": {"downsample": "strided", "skip": "add", "upsample": "bilinear",
                                            "block": "residual", "norm": "group"},
    "strided2-max-residual-instance-scse": {"downsample": "strided", "strided_kernel": 2, "skip": "max",
                                            "block": "residual", "norm": "instance", "scse": True,
                                            "dropout": 0.2, "dropout_at": "decoder"},
    "min-bilinear-nonorm-x1.5": {"skip": "min", "upsample": "bilinear", "norm": "none",
                                 "width_multiplier": 1.5, "dropout": 0.3, "dropout_at": "bottleneck"},
    "noskip-strided-residual-dropout": {"skip": "none", "downsample": "strided", "block": "residual",
                                        "dropout": 0.2, "dropout_at": "encoder"},
    "depth1": {"depth": 1},
    "s2d-add-residual-scse": {"stem": "space_to_depth", "skip": "add", "block": "residual", "scse": True},
    "depth6-small-strided-residual-group": {"depth": 6, "base_width": 2, "downsample": "strided",
                                            "block": "residual", "norm": "group", "skip": "add"},
}

def unet_variants() -> dict[str, dict]:
    """The registered variants of unet (and unet itself): name -> the options they fix."""
    variants = {name: variant_of(name) for name in list_models()}
    return {"unet": {}, **{name: v[1] for name, v in variants.items() if v and v[0] == "unet"}}


CASES = {**unet_variants(), **COMBINATIONS}
SMALL = {"base_width": 4, "depth": 3}


def build(options: dict, seed: int = 0, **extra) -> UNet:
    torch.manual_seed(seed)
    return create_model("unet", **{**SMALL, **options, **extra})


def settle(model: nn.Module) -> nn.Module:
    """One training-mode forward (batch-norm running statistics move off their initial values), then eval."""
    model.train()
    with torch.no_grad():
        model(torch.randn(2, model.options["in_channels"], 64, 64))
    return model.eval()


@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
class TestVariant:
    def test_output_shape_for_any_size(self, options):
        classes = 1 if options.get("image_head") else 3  # the image head is for binary models only
        model = build(options, in_channels=2, classes=classes).eval()
        for size in [(101, 101), (37, 53), (64, 64)]:
            with torch.no_grad():
                out = model(torch.randn(2, 2, *size))
            assert out.shape == (2, classes, *size)
            assert torch.isfinite(out).all()

    def test_every_parameter_gets_a_finite_gradient(self, options):
        model = build(options).train()
        x = torch.randn(2, 1, 101, 75)
        target = (torch.rand(2, 1, 101, 75) > 0.5).float()
        # the training step's loss: with image_head, the model's auxiliary loss trains the head too
        training_loss(model, lambda logits, masks, *_: F.binary_cross_entropy_with_logits(logits, masks), model(x),
                      target).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, f"{name} is unused"
            assert torch.isfinite(param.grad).all(), name
        assert model.head.weight.grad.abs().sum() > 0
        assert next(model.encoder[0].parameters()).grad.abs().sum() > 0
        nonzero = [bool(p.grad.abs().sum() > 0) for p in model.parameters()]
        assert sum(nonzero) >= 0.8 * len(nonzero)  # a 1-unit scSE hidden layer at width 4 may be a dead ReLU

    def test_batch_of_one_in_eval_mode(self, options):
        model = settle(build(options))
        pair = torch.randn(2, 1, 45, 39)
        with torch.no_grad():
            one = model(pair[:1])
            both = model(pair)
        assert one.shape == (1, 1, 45, 39)
        torch.testing.assert_close(one, both[:1], rtol=1e-4, atol=1e-5)  # samples are independent in eval

    def test_channels_last_bf16_autocast_close_to_fp32(self, options):
        model = settle(build(options))
        x = torch.randn(2, 1, 64, 64)
        with torch.no_grad():
            reference = model(x)
            fast = model.to(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fast(x.to(memory_format=torch.channels_last))
        assert out.shape == reference.shape
        out = out.float()
        assert torch.isfinite(out).all()
        scale = reference.abs().max().item() + 1e-6
        assert (out - reference).abs().max().item() < 0.1 * scale
        clear = reference.abs() > 0.05 * scale
        assert ((out > 0) == (reference > 0))[clear].float().mean().item() > 0.95

    def test_eval_mode_is_deterministic(self, options):
        model = settle(build(options))
        x = torch.randn(2, 1, 48, 40)
        with torch.no_grad():
            assert torch.equal(model(x), model(x))

    def test_state_dict_round_trip(self, options):
        model = settle(build(options, seed=1))
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        fresh = build(options, seed=2)
        fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        fresh.eval()
        x = torch.randn(1, 1, 40, 33)
        with torch.no_grad():
            assert torch.equal(model(x), fresh(x))
        for key, value in model.state_dict().items():
            assert torch.equal(value, fresh.state_dict()[key]), key


def test_variant_grid_is_registered_models():
    variants = unet_variants()
    assert {"unet-strided3", "unet-strided2", "unet-add", "unet-max", "unet-min", "unet-noskip", "unet-bilinear",
            "unet-residual", "unet-groupnorm", "unet-instancenorm", "unet-nonorm", "unet-scse"} <= set(variants)
    assert set(variants) - {"unet"} <= set(list_models()) - set(list_models(variants=False))
    assert variant_of("unet") is None
    variant_of("unet-add")[1]["skip"] = "max"  # a fresh copy each call
    assert variant_of("unet-add") == ("unet", {"skip": "add"})
    for name, options in variants.items():
        torch.manual_seed(0)
        model = create_model(name, **SMALL)
        assert isinstance(model, UNet)
        assert {key: model.options[key] for key in options} == options, name
        assert model.options == build(options).options, name
        torch.testing.assert_close(model.state_dict(), build(options).state_dict())  # same model, same seed


def test_a_variant_takes_every_unet_option_and_the_user_overrides_its_defaults():
    resolved = validate_options("unet-strided2", {"base_width": 8})
    assert resolved == {**validate_options("unet", {"base_width": 8}), "downsample": "strided", "strided_kernel": 2}
    assert create_model("unet-add", skip="max", **SMALL).options["skip"] == "max"
    with pytest.raises(ConfigError, match="model.strided_kernel"):
        validate_options("unet-strided3", {"strided_kernel": 5})
    with pytest.raises(ConfigError, match="unknown config key 'model.batch_norm'.*'unet-add'"):
        create_model("unet-add", batch_norm=True)


def test_config_with_a_variant_name_round_trips(tmp_path):
    from unetlab.config import config_from_dict, load_config

    cfg = load_config(None, ["model.name=unet-noskip", "model.base_width=4", "model.depth=3"])
    assert cfg.model.name == "unet-noskip" and cfg.model.model_extra["skip"] == "none"
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))  # what config.yaml and checkpoints store
    assert again == cfg
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **cfg.model.options())
    twin = create_model(again.model.name, **again.model.options())
    twin.load_state_dict(model.state_dict(), strict=True)
    assert twin.options == model.options
    overridden = load_config(None, ["model.name=unet-noskip", "model.skip=add"])
    assert overridden.model.model_extra["skip"] == "add"


def test_register_variant_refuses_typos_and_variants_of_variants():
    with pytest.raises(ConfigError, match="model.skipp"):
        register_variant("_test-typo", base="unet", skipp="add")
    with pytest.raises(ValueError, match="itself a variant"):
        register_variant("_test-vv", base="unet-add", norm="group")
    with pytest.raises(ValueError, match="registered twice"):
        register_variant("unet-add", base="unet", skip="add")
    assert "_test-typo" not in list_models() and "_test-vv" not in list_models()
    register_variant("_test-wide", base="unet", base_width=8)
    try:
        assert "_test-wide" in list_models() and "_test-wide" not in list_models(variants=False)
        assert create_model("_test-wide", depth=2).options["base_width"] == 8
    finally:
        unregister_model("_test-wide")
    assert "_test-wide" not in list_models()


@settings(max_examples=12, deadline=None)
@given(height=st.integers(1, 70), width=st.integers(1, 70),
       name=st.sampled_from(sorted(set(unet_variants()) - {"unet-instancenorm"})))
def test_any_input_size(height, width, name):
    """Any size works (instance norm is left out: it needs more than one bottleneck pixel)."""
    model = build(unet_variants()[name]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, height, width))
    assert out.shape == (1, 1, height, width) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- parameter counts


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


WIDTHS = [4, 8, 16, 32]  # SMALL: base_width 4, depth 3


def test_widths_follow_the_multiplier():
    assert build({}).widths == WIDTHS
    model = create_model("unet", base_width=6, depth=3, width_multiplier=1.5)
    assert model.widths == [6, 9, 14, 20]  # round(6 * 1.5**l)
    assert [block[0].out_channels for block in model.encoder] == [6, 9, 14]
    assert model.bottleneck[0].out_channels == 20
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 30, 30)).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("skip", ["add", "max", "min", "none"])
def test_element_wise_and_no_skip_decoders_are_smaller_than_concat(skip):
    concat, merged = build({}), build({"skip": skip})
    # By hand, the full-resolution decoder block (width 4, batch norm): concat takes 8 channels,
    # conv 3x3 8->4 (288) + BN (8) + conv 3x3 4->4 (144) + BN (8) = 448; the others take 4: 144 + 8 + 144 + 8 = 304.
    assert n_params(concat.decoder[-1]) == 448
    assert n_params(merged.decoder[-1]) == 304
    assert [block[0].in_channels for block in merged.decoder] == [16, 8, 4]
    # Only the first convolution of each decoder block shrinks, by 9 * w * w.
    assert n_params(concat) - n_params(merged) == sum(9 * w * w for w in WIDTHS[:-1])


@pytest.mark.parametrize("kernel", [3, 2])
def test_strided_downsampling_adds_one_conv_and_norm_per_level(kernel):
    pooled, strided = build({}), build({"downsample": "strided", "strided_kernel": kernel})
    assert n_params(pooled.downsample) == 0
    assert all(isinstance(down, StridedDown) for down in strided.downsample)
    conv = strided.downsample[0][0]
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (2, 2) and conv.in_channels == conv.out_channels
    # conv w -> w without bias (k*k*w*w) + batch norm (2w) at every level above the bottleneck
    assert n_params(strided) - n_params(pooled) == sum(kernel * kernel * w * w + 2 * w for w in WIDTHS[:-1])
    assert n_params(strided) > n_params(pooled)


def test_bilinear_upsampling_parameter_count():
    transposed, bilinear = build({}), build({"upsample": "bilinear"})
    pairs = list(zip(WIDTHS[1:], WIDTHS[:-1]))  # (channels below, width of the level)
    conv_transposed = sum(4 * below * w + w for below, w in pairs)
    conv3_norm = sum(9 * below * w + 2 * w for below, w in pairs)
    assert n_params(transposed) - n_params(bilinear) == conv_transposed - conv3_norm


def test_norm_layers():
    batch, group, instance, none = (build({"norm": norm}) for norm in ["batch", "group", "instance", "none"])
    assert n_params(batch) == n_params(group) == n_params(instance)  # a scale and a shift per channel each
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) for m in none.modules())
    assert all(m.bias is not None for m in none.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in group.encoder.modules() if isinstance(m, nn.Conv2d))
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == min(8, m.num_channels // 2) for m in norms)  # widths 4..32, >= 2 per group
    assert all(m.affine for m in instance.modules() if isinstance(m, nn.InstanceNorm2d))
    assert [group_norm(c).num_groups for c in [1, 4, 6, 7, 9, 12, 16, 20, 33]] == [1, 2, 3, 1, 3, 6, 8, 5, 3]


def test_residual_blocks_project_only_where_channels_change():
    def check(model: UNet) -> list[bool]:
        blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
        assert len(blocks) == 2 * model.depth + 1
        for block in blocks:
            if block.in_channels == block.out_channels:
                assert isinstance(block.shortcut, nn.Identity)
            else:
                conv = block.shortcut[0]
                assert conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (
                    block.in_channels, block.out_channels)
        return [not isinstance(block.shortcut, nn.Identity) for block in blocks]

    # concat: every block changes its channel count (1->4, 4->8, 8->16, 16->32, 32->16, 16->8, 8->4)
    assert check(build({"block": "residual"})) == [True] * 7
    # add: the decoder blocks keep theirs
    added = build({"block": "residual", "skip": "add"})
    assert check(added) == [True] * 4 + [False] * 3
    assert n_params(build({"block": "residual"})) - n_params(build({})) == \
        sum(c_in * c_out + 2 * c_out for c_in, c_out in [(1, 4), (4, 8), (8, 16), (16, 32), (32, 16), (16, 8), (8, 4)])
    # constant width and matching input channels: no projection anywhere
    flat = create_model("unet", in_channels=4, base_width=4, depth=2, width_multiplier=1.0, block="residual",
                        skip="max")
    assert check(flat) == [False] * 5
    assert not any(isinstance(m, ConvBlock) for m in flat.modules())


@pytest.mark.parametrize("dropout_at, encoder_sites, decoder_sites", [
    ("all", [True, True, True], [True, True, True]),
    ("encoder", [True, True, True], [False, False, False]),
    ("bottleneck", [False, False, True], [False, False, False]),
    ("decoder", [False, False, False], [True, True, True]),
])
def test_dropout_placement(dropout_at, encoder_sites, decoder_sites):
    model = build({"dropout": 0.5, "dropout_at": dropout_at})
    assert [isinstance(m, nn.Dropout2d) for m in model.encoder_dropout] == encoder_sites
    assert [isinstance(m, nn.Dropout2d) for m in model.decoder_dropout] == decoder_sites
    assert n_params(model) == n_params(build({}))
    assert not any(isinstance(m, nn.Dropout2d) for m in build({"dropout_at": dropout_at}).modules())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))


def test_scse_after_each_decoder_block():
    model = build({"scse": True, "skip": "add", "block": "residual"})
    assert [isinstance(m, SCSE) for m in model.attention] == [True] * 3


# ----------------------------------------------------------------------------- validation

CHOICES = {
    "downsample": ["maxpool", "strided"],
    "strided_kernel": [3, 2],
    "skip": ["concat", "add", "max", "min", "none"],
    "upsample": ["transposed", "bilinear"],
    "block": ["plain", "residual"],
    "norm": ["batch", "group", "instance", "none"],
    "dropout_at": ["bottleneck", "decoder", "encoder", "all"],
    "stem": ["full", "space_to_depth"],
    "image_head": [False, True],
}


@pytest.mark.parametrize("option, value", [
    ("skip", "sum"), ("skip", "Concat"), ("skip", ["add"]), ("downsample", "avgpool"), ("strided_kernel", 4),
    ("strided_kernel", "3"), ("upsample", "nearest"), ("block", "dense"), ("norm", "layer"), ("norm", True),
    ("dropout_at", "everywhere"), ("stem", "pixel_unshuffle"),
])
def test_bad_choice_names_the_option_and_the_allowed_values(option, value):
    with pytest.raises(ValueError) as info:
        UNet(**{option: value})
    message = str(info.value)
    assert option in message and repr(value) in message
    assert all(repr(allowed) in message for allowed in CHOICES[option])
    # create_model passes the error on (the registry may turn it into a ConfigError naming model.<option>)
    with pytest.raises((ValueError, ConfigError), match=option):
        create_model("unet", **{option: value})


@pytest.mark.parametrize("option, value", [
    ("depth", 0), ("depth", 8), ("depth", 2.5), ("width_multiplier", 0), ("width_multiplier", -2.0),
    ("width_multiplier", 0.01), ("dropout", 1.0), ("dropout", -0.1), ("base_width", 0), ("in_channels", 0),
    ("classes", 0),
])
def test_bad_number_names_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        UNet(**{option: value})


def test_every_choice_is_accepted():
    for option, values in CHOICES.items():
        for value in values:
            assert isinstance(UNet(base_width=2, depth=1, **{option: value}), UNet)


def test_space_to_depth_stem_runs_every_level_at_half_resolution():
    """The first level sees 2x2 pixel blocks as 4x the channels at half the side; the head's 4 logits per class
    are the 2x2 block of full-resolution logits (pixel-shuffle), so output pixel (i, j) comes from head channel
    (i % 2) * 2 + j % 2."""
    model = build({"stem": "space_to_depth"}, in_channels=3, classes=2).eval()
    assert model.encoder[0][0].in_channels == 12
    assert model.head.out_channels == 8
    seen = {}
    model.encoder[0].register_forward_hook(lambda m, i, o: seen.update(level0=o.shape))
    model.head.register_forward_hook(lambda m, i, o: seen.update(head=o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert seen["level0"][-2:] == (32, 32)
    assert out.shape == (1, 2, 64, 64)
    head = seen["head"]  # (1, 8, 32, 32): class c, block position k at channel c * 4 + k
    assert torch.equal(out[0, 1, 1::2, 0::2], head[0, 1 * 4 + 2])
    assert torch.equal(out[0, 0, 0::2, 1::2], head[0, 0 * 4 + 1])


def test_space_to_depth_pads_odd_sizes_to_twice_the_multiple():
    model = build({"stem": "space_to_depth"}).eval()  # depth 3: pads to a multiple of 16
    with torch.no_grad():
        assert model(torch.randn(1, 1, 101, 37)).shape == (1, 1, 101, 37)


def test_space_to_depth_quarters_the_flops_at_the_same_widths():
    from unetlab.models.summary import count_flops

    full, s2d = create_model("unet"), create_model("unet-s2d")
    ratio = count_flops(s2d, 1, 128, 128) / count_flops(full, 1, 128, 128)
    assert 0.24 < ratio < 0.27
