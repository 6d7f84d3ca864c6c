"""Tests for the model family: create_model / list_models and the classic U-Net."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.config import ModelConfig
from unetlab.errors import ConfigError
from unetlab.models import UNet, create_model, list_models, register_model
from unetlab.models.blocks import SCSE, ConvBlock
from unetlab.models.unet import pad_to_multiple


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(in_channels=1, classes=1, base_width=16, depth=4, norm="batch", scse=False) -> int:
    """Parameter count of the U-Net worked out by hand from its description."""

    def conv_block(c_in: int, c_out: int) -> int:
        convs = 9 * c_in * c_out + 9 * c_out * c_out
        return convs + (4 * c_out if norm == "batch" else 2 * c_out)  # 2 BN x (weight, bias) | 2 conv biases

    def scse_params(c: int) -> int:
        hidden = max(c // 8, 1)
        return (c * hidden + hidden) + (hidden * c + c) + (c + 1)

    widths = [base_width * 2**level for level in range(depth + 1)]
    total, c_in = 0, in_channels
    for w in widths[:-1]:
        total += conv_block(c_in, w)
        c_in = w
    total += conv_block(widths[-2], widths[-1])  # bottleneck
    for level in reversed(range(depth)):
        w = widths[level]
        total += 4 * widths[level + 1] * w + w  # 2x2 transposed convolution with bias
        total += conv_block(2 * w, w)
        if scse:
            total += scse_params(w)
    return total + widths[0] * classes + classes  # 1x1 head


def capture(module: nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    return outputs, handle


@pytest.fixture(scope="module")
def classic() -> UNet:
    torch.manual_seed(0)
    return create_model("unet").eval()


# ----------------------------------------------------------------------------- the classic U-Net


def test_registry_lists_unet():
    assert "unet" in list_models()
    assert list_models() == sorted(list_models())


def test_classic_param_count(classic):
    count = n_params(classic)
    assert count == expected_params()
    assert count == pytest.approx(1.94e6, abs=0.01e6)
    assert all(p.requires_grad for p in classic.parameters())


def test_classic_bottleneck_and_encoder_widths(classic):
    bottleneck, h1 = capture(classic.bottleneck)
    encoder = [capture(block) for block in classic.encoder]
    try:
        with torch.no_grad():
            out = classic(torch.randn(1, 1, 128, 128))
    finally:
        h1.remove()
        for _, handle in encoder:
            handle.remove()
    assert out.shape == (1, 1, 128, 128)
    assert bottleneck[0].shape == (1, 256, 8, 8)
    assert [outs[0].shape[1:] for outs, _ in encoder] == [
        (16, 128, 128), (32, 64, 64), (64, 32, 32), (128, 16, 16),
    ]


def test_create_model_returns_unet_with_defaults(classic):
    assert isinstance(classic, UNet)
    assert classic.depth == 4
    assert classic.head.out_channels == 1
    assert isinstance(classic.encoder[0], ConvBlock)


@pytest.mark.parametrize("size", [(101, 101), (37, 53), (1, 1), (128, 128), (200, 77), (16, 17)])
def test_output_matches_input_size(classic, size):
    with torch.no_grad():
        out = classic(torch.randn(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_odd_size_is_reflect_padded_then_cropped(classic):
    x = torch.randn(1, 1, 101, 101)
    with torch.no_grad():
        direct = classic(x)
        manual = classic(F.pad(x, (0, 11, 0, 11), mode="reflect"))[..., :101, :101]
    torch.testing.assert_close(direct, manual)


def test_pad_to_multiple():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    padded, size = pad_to_multiple(x, 4)
    assert size == (3, 4) and padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., :3, :], x)
    assert torch.equal(padded[0, 0, 3], x[0, 0, 1])  # reflect: the new row mirrors row 1
    same, _ = pad_to_multiple(x, 1)
    assert same is x
    tiny, _ = pad_to_multiple(torch.ones(1, 1, 1, 1), 16)  # too small to reflect: replicate
    assert tiny.shape == (1, 1, 16, 16) and torch.equal(tiny, torch.ones(1, 1, 16, 16))


@pytest.mark.parametrize("size", [128, 32])
def test_batch_of_one_in_train_mode(size):
    """Batch norm with one sample works while the bottleneck keeps more than one pixel."""
    torch.manual_seed(0)
    model = create_model("unet", base_width=4).train()
    out = model(torch.randn(1, 1, size, size))
    assert out.shape == (1, 1, size, size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("options", [{}, {"scse": True}, {"norm": "none"}, {"dropout": 0.2, "depth": 2}])
def test_gradients_finite_for_every_parameter(options):
    torch.manual_seed(0)
    model = create_model("unet", base_width=4, **options).train()
    x = torch.randn(2, 1, 37, 45)
    target = (torch.rand(2, 1, 37, 45) > 0.5).float()
    loss = F.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    # gradient reaches the whole network (a 1-unit SCSE hidden layer at width 4 may be a dead ReLU)
    assert model.head.weight.grad.abs().sum() > 0 and model.encoder[0][0].weight.grad.abs().sum() > 0
    nonzero = [bool(p.grad.abs().sum() > 0) for p in model.parameters()]
    assert sum(nonzero) >= 0.8 * len(nonzero)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("base_width", [1, 4, 8, 32])
def test_base_width(base_width):
    model = create_model("unet", base_width=base_width)
    assert n_params(model) == expected_params(base_width=base_width)
    assert model.encoder[0][0].out_channels == base_width
    assert model.bottleneck[0].out_channels == base_width * 16


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth(depth):
    model = create_model("unet", base_width=4, depth=depth).eval()
    assert len(model.encoder) == len(model.decoder) == len(model.upsample) == depth
    assert n_params(model) == expected_params(base_width=4, depth=depth)
    bottleneck, handle = capture(model.bottleneck)
    try:
        with torch.no_grad():
            out = model(torch.randn(1, 1, 64, 64))
    finally:
        handle.remove()
    assert out.shape == (1, 1, 64, 64)
    assert bottleneck[0].shape == (1, 4 * 2**depth, 64 // 2**depth, 64 // 2**depth)


@pytest.mark.parametrize("depth", [0, 8])
def test_depth_out_of_range(depth):
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=depth)


def test_without_batch_norm():
    model = create_model("unet", base_width=8, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert n_params(model) == expected_params(base_width=8, norm="none")
    with_bn = create_model("unet", base_width=8)
    assert all(m.bias is None for blk in with_bn.modules() if isinstance(blk, ConvBlock)
               for m in blk if isinstance(m, nn.Conv2d))


def test_dropout_adds_no_parameters_and_is_off_in_eval():
    torch.manual_seed(0)
    model = create_model("unet", base_width=4, dropout=0.5)
    assert n_params(model) == expected_params(base_width=4)
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout2d) for m in create_model("unet", base_width=4).modules())
    x = torch.randn(2, 1, 32, 32)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # stochastic in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_scse():
    model = create_model("unet", base_width=16, scse=True)
    assert sum(isinstance(m, SCSE) for m in model.modules()) == 4
    assert n_params(model) == expected_params(scse=True)
    assert n_params(model) > n_params(create_model("unet"))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 40, 40)).shape == (1, 1, 40, 40)


def test_channels_and_classes():
    model = create_model("unet", in_channels=3, classes=2, base_width=4).eval()
    assert n_params(model) == expected_params(in_channels=3, classes=2, base_width=4)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 24, 40)).shape == (2, 2, 24, 40)


def test_every_model_config_option_is_accepted():
    """The config's model: section maps onto create_model (name + options)."""
    options = ModelConfig().model_dump()
    name = options.pop("name")
    model = create_model(name, **options)
    assert n_params(model) == expected_params()


# ----------------------------------------------------------------------------- numerics, state


def test_channels_last_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = create_model("unet", base_width=8, scse=True).eval()
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
    assert ((out > 0) == (reference > 0)).float().mean().item() > 0.95


def test_eval_mode_is_deterministic(classic):
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(classic(x), classic(x))


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(1)
    model = create_model("unet", base_width=4, scse=True)
    model.train()
    model(torch.randn(2, 1, 32, 32))  # update the batch-norm running statistics
    model.eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(2)
    other = create_model("unet", base_width=4, scse=True)
    other.load_state_dict(torch.load(path, weights_only=True))
    other.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


def test_state_dict_of_other_options_does_not_load():
    with pytest.raises(RuntimeError):
        create_model("unet", base_width=4).load_state_dict(create_model("unet", base_width=8).state_dict())


# ----------------------------------------------------------------------------- registry errors


def test_unknown_model_name():
    with pytest.raises(ConfigError) as info:
        create_model("resnet9000")
    assert "resnet9000" in str(info.value) and "model.name" in str(info.value)
    assert "unet" in str(info.value)  # lists the choices


def test_unknown_model_option():
    with pytest.raises(ConfigError) as info:
        create_model("unet", widht=4)
    message = str(info.value)
    assert "model.widht" in message and "'unet'" in message
    assert "base_width" in message  # lists what it takes


def test_register_model_twice_refused():
    with pytest.raises(ValueError, match="unet"):
        register_model("unet")(lambda: nn.Identity())


def test_register_and_create_new_model():
    from unetlab.models import registry

    @register_model("_test_tiny")
    def tiny(in_channels: int = 1, classes: int = 1) -> nn.Module:
        return nn.Conv2d(in_channels, classes, 1)

    try:
        assert "_test_tiny" in list_models()
        assert isinstance(create_model("_test_tiny", classes=2), nn.Conv2d)
        with pytest.raises(ConfigError, match="model.depth"):
            create_model("_test_tiny", depth=3)
    finally:
        registry._MODELS.pop("_test_tiny", None)
    assert "_test_tiny" not in list_models()
