"""One shared test class run over every registered model, named variants (unet-add, fcn-small, ...) included.

Small options keep the heavy members cheap (the 810-channel FCN keeps its architecture at small
inputs); each test is about a property every member of the family must have.
"""

import pytest
import torch

from unetlab.engine.step import training_loss
from unetlab.models import create_model, list_models, variant_of

# The smallest honest version of each base architecture; options not named keep the model's defaults.
# A named variant gets its base's (its own fixed options stay, unless named here too).
SMALL = {
    "unet": {"base_width": 4, "depth": 3},
    "resnet34_unet": {"decoder_widths": (16, 16, 8, 8, 8)},
    "fcn": {},
}


def _small(name: str) -> dict:
    variant = variant_of(name)
    return dict(SMALL.get(variant[0] if variant else name, {}))


MEMBERS = {name: (name, _small(name)) for name in list_models()}


def _classes(member: str, wanted: int) -> int:
    """`wanted`, or 1 for a binary-only member (a U-Net with the image-level head)."""
    variant = variant_of(member)
    return 1 if variant and variant[1].get("image_head") else wanted


def test_every_registered_model_is_covered():
    assert set(SMALL) == set(list_models(variants=False)), "add the new model to SMALL with cheap options"
    assert {"unet-strided3", "unet-add", "unet-noskip", "unet-scse", "fcn-small", "fcn-dilated"} <= set(MEMBERS)


def _build(member, in_channels=1, classes=1):
    name, options = MEMBERS[member]
    torch.manual_seed(0)
    return create_model(name, in_channels=in_channels, classes=classes, **options)


@pytest.mark.parametrize("member", sorted(MEMBERS))
class TestModelFamily:
    @pytest.mark.parametrize("size", [(37, 53), (64, 64), (101, 101)])
    def test_output_shape_any_size(self, member, size):
        classes = _classes(member, 2)
        model = _build(member, in_channels=3, classes=classes).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, *size)).shape == (2, classes, *size)

    def test_random_sizes(self, member):
        """Any input size works: sizes drawn at random (seeded per member, so failures reproduce)."""
        generator = torch.Generator().manual_seed(sum(map(ord, member)))
        model = _build(member).eval()
        for _ in range(3):
            height, width = (int(v) for v in torch.randint(9, 140, (2,), generator=generator))
            with torch.no_grad():
                assert model(torch.randn(1, 1, height, width)).shape == (1, 1, height, width), (height, width)

    def test_every_parameter_gets_a_finite_gradient(self, member):
        model = _build(member).train()
        masks = (torch.rand(2, 1, 40, 44) > 0.5).float()  # for an auxiliary loss (the image head's)
        training_loss(model, lambda logits, *_: logits.square().mean(), model(torch.randn(2, 1, 40, 44)),
                      masks).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, f"{name} is unused"
            assert torch.isfinite(param.grad).all(), name

    def test_batch_of_one_matches_the_same_image_in_a_batch(self, member):
        model = _build(member).eval()
        x = torch.randn(2, 1, 48, 48)
        with torch.no_grad():
            torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=1e-4)

    def test_channels_last_bf16_close_to_fp32(self, member):
        model = _build(member).eval()
        x = torch.randn(2, 1, 48, 48)
        with torch.no_grad():
            reference = torch.sigmoid(model(x))
            fast_model = model.to(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fast = torch.sigmoid(fast_model(x.contiguous(memory_format=torch.channels_last)).float())
        assert (fast - reference).abs().mean() < 0.03

    def test_eval_is_deterministic_and_state_dict_round_trips(self, member):
        model = _build(member).eval()
        x = torch.randn(1, 1, 45, 39)
        with torch.no_grad():
            first, second = model(x), model(x)
        assert torch.equal(first, second)
        torch.manual_seed(123)  # a differently initialised twin
        name, options = MEMBERS[member]
        twin = create_model(name, **options)
        twin.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            assert torch.equal(twin.eval()(x), first)


@pytest.mark.parametrize("member", sorted(set(SMALL) | {"fcn-dilated", "fcn-small"}))
def test_onnx_parity_of_the_architectures(member, tmp_path):
    pytest.importorskip("onnxruntime")
    from unetlab.export import _export_onnx

    model = _build(member).eval()
    example = torch.randn(1, 1, 67, 73)  # odd sides: the exported graph keeps the padding branch
    shapes = [(1, 1, 64, 64), (2, 1, 45, 91)]
    result = _export_onnx(model, example, tmp_path / "m.onnx", None, {"test": "zoo"}, shapes)
    assert result["max_abs_diff"] < 1e-4, result["rows"]
