"""The U-Net's image-level head (`image_head`): "does this image have foreground?" trained beside the pixel
loss, and in eval mode an "empty" verdict (image logit < 0) empties the image's mask.

Tiny models (base width 4, depth 2, 32x32 inputs) keep every test fast; the end-to-end ones share one
1-epoch run of `unetlab train` (with SWA averaging, so the batch-norm recomputation sees the head too)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from run_fixtures import TINY, run_cli

from unetlab.config import Config, load_config
from unetlab.engine.averaging import build_averaging
from unetlab.engine.step import train_step, training_loss, unwrapped
from unetlab.errors import ConfigError
from unetlab.losses import build_loss
from unetlab.models import UNet, create_model
from unetlab.models.summary import count_flops, receptive_field
from unetlab.models.unet import EMPTY_IMAGE_LOGIT

SMALL = {"base_width": 4, "depth": 2}
SET_TINY = [arg for item in TINY for arg in ("--set", item)]


def head_model(seed: int = 0, **options) -> UNet:
    torch.manual_seed(seed)
    return create_model("unet", **SMALL, image_head=True, **options)


def twin_without_head(model: UNet) -> UNet:
    """The same U-Net without the image head, holding `model`'s other weights."""
    plain = create_model("unet", **SMALL)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_head.")}
    plain.load_state_dict(state, strict=True)
    return plain


def settled(model: UNet) -> UNet:
    """Batch-norm running statistics off their initial values (one training-mode pass), then eval."""
    with torch.no_grad():
        model.train()(torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def force_bias(model: UNet, bias: float) -> UNet:
    with torch.no_grad():
        model.image_head[2].weight.zero_()
        model.image_head[2].bias.fill_(bias)
    return model


def image_logits_of(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """The image logits of an eval-mode pass (read by a hook: eval mode returns the gated pixels only)."""
    seen = []
    handle = model.image_head.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


X = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- the model


def test_training_mode_returns_pixel_logits_and_the_image_logit():
    model = head_model().train()
    plain = twin_without_head(model).train()
    logits, aux = model(X)
    assert set(aux) == {"image"} and aux["image"].shape == (2, 1)
    with torch.no_grad():
        assert torch.equal(logits, plain(X))  # the pixel path is the plain U-Net's, ungated while training
    # the head: global average pool of the bottleneck, one linear layer
    bottleneck = []
    model.bottleneck.register_forward_hook(lambda m, i, out: bottleneck.append(out))
    _, aux = model(X)
    expected = bottleneck[0].mean(dim=(2, 3)) @ model.image_head[2].weight.T + model.image_head[2].bias
    torch.testing.assert_close(aux["image"], expected)


def test_eval_mode_gates_whole_images_at_logit_zero():
    model = settled(head_model())
    ungated = twin_without_head(model).eval()
    with torch.no_grad():
        reference = ungated(X)
        force_bias(model, -50.0)
        empty = model(X)
        assert torch.equal(empty, torch.full_like(reference, EMPTY_IMAGE_LOGIT))
        assert torch.sigmoid(empty).max().item() == 0.0  # probability exactly 0 at every pixel
        force_bias(model, 50.0)
        assert torch.equal(model(X), reference)  # "has salt": the logits untouched


@pytest.mark.parametrize("verdicts, emptied", [((-1e-3, 1e-3), [True, False]), ((0.0, -2.0), [False, True])])
def test_the_gate_is_per_image_and_hard_at_probability_one_half(verdicts, emptied):
    model = settled(head_model())
    with torch.no_grad():
        reference = twin_without_head(model).eval()(X)
        model.image_head.register_forward_hook(lambda m, i, out: torch.tensor([[v] for v in verdicts]))
        out = model(X)
    for image, empty in enumerate(emptied):
        expected = torch.full_like(reference[image], EMPTY_IMAGE_LOGIT) if empty else reference[image]
        assert torch.equal(out[image], expected), image


def test_gated_logits_stay_finite_and_zero_in_bf16():
    model = force_bias(settled(head_model()), -50.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(X)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.sigmoid(out.float()).max().item() == 0.0
    assert out.float().max().item() == EMPTY_IMAGE_LOGIT == -100.0


def test_default_model_is_unchanged():
    torch.manual_seed(0)
    default = create_model("unet", **SMALL)
    torch.manual_seed(0)
    off = create_model("unet", **SMALL, image_head=False)
    assert default.image_head is None and not default.whole_image_gate
    assert list(default.state_dict()) == list(off.state_dict())
    assert not any("image" in key for key in default.state_dict())
    with torch.no_grad():
        assert torch.equal(default.train()(X), off.train()(X))  # a tensor, not a tuple, in training mode too
        assert torch.equal(default.eval()(X), off.eval()(X))
    with_head = head_model()
    assert list(with_head.state_dict()) == list(default.state_dict()) + ["image_head.2.weight",
                                                                       "image_head.2.bias"]
    assert with_head.image_head[2].weight.shape == (1, with_head.widths[-1])  # on the bottleneck's channels
    # a plain checkpoint loads into the head model with exactly the head missing (the head must be trained)
    missing = with_head.load_state_dict(default.state_dict(), strict=False).missing_keys
    assert missing == ["image_head.2.weight", "image_head.2.bias"]


def test_auxiliary_loss_is_the_weighted_bce_of_any_foreground_by_hand():
    model = head_model(image_head_weight=0.5)
    masks = torch.zeros(2, 1, 8, 8)
    masks[1, 0, 3, 4] = 1.0  # image 0 empty, image 1 has one salt pixel
    image_logits = torch.tensor([[0.3], [-1.2]], dtype=torch.bfloat16)
    a, b = float(image_logits[0]), float(image_logits[1])
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = 0.5 * (-math.log(1 - sigmoid(a)) - math.log(sigmoid(b))) / 2
    loss = model.auxiliary_loss({"image": image_logits}, masks)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the salt pixel ignored: image 1 counts as empty too
    valid = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    valid[1, 0, 3, 4] = False
    both_empty = 0.5 * (-math.log(1 - sigmoid(a)) - math.log(1 - sigmoid(b))) / 2
    assert model.auxiliary_loss({"image": image_logits}, masks, valid).item() == pytest.approx(both_empty, rel=1e-6)
    valid = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    valid[1, 0, 0, 0] = False  # an ignored background pixel changes nothing
    assert model.auxiliary_loss({"image": image_logits}, masks, valid).item() == pytest.approx(expected, rel=1e-6)


def test_training_step_adds_the_auxiliary_loss():
    model = head_model().train()
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 10:20, 5:9] = 1.0
    loss_fn = build_loss(Config().loss)  # the default loss
    twin = head_model().train()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits, aux = twin(X)
        expected = loss_fn(logits, masks, 0.0, None) + twin.auxiliary_loss(aux, masks)
        pixel_only = loss_fn(logits, masks, 0.0, None)
    assert expected.item() > pixel_only.item() > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.image_head[2].weight.detach().clone()
    loss = train_step(model, optimizer, loss_fn, X, masks, "fp32")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(model.image_head[2].weight, before)  # the head is trained


def ddp_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """A DistributedDataParallel holding `model` without a process group (an in-process gloo group can hang
    under load): `unwrapped` only needs the type and `.module`; real DDP runs in tests/engine/test_distributed."""
    wrapper = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(wrapper)
    wrapper.module = model
    return wrapper


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_the_loss_finds_auxiliary_loss_under_ddp_and_compile_wrappers():
    """The trainer steps torch.compile(DistributedDataParallel(model)); neither wrapper has auxiliary_loss."""
    model = head_model().train()
    masks = torch.zeros(2, 1, 32, 32)
    masks[1, :, :4, :4] = 1.0
    ddp = ddp_wrapper(model)
    compiled = torch.compile(ddp)  # compiling happens at the first call, which this test never makes
    assert unwrapped(ddp) is model and unwrapped(compiled) is model and unwrapped(model) is model
    assert unwrapped(torch.compile(model)) is model
    out = model(X)
    pixel = lambda logits, *_: logits.square().mean()  # noqa: E731
    loss = training_loss(compiled, pixel, out, masks)
    assert loss.item() == pytest.approx((pixel(out[0]) + model.auxiliary_loss(out[1], masks)).item(), rel=1e-6)
    loss.backward()
    assert model.image_head[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("options, needle", [
    ({"classes": 2, "image_head": True}, "image_head"),
    ({"image_head": True, "image_head_weight": 0}, "image_head_weight"),
    ({"image_head_weight": -0.1}, "image_head_weight"),
    ({"image_head_weight": float("nan")}, "image_head_weight"),
    ({"image_head": "yes"}, "image_head"),
])
def test_bad_options_are_refused_by_name(options, needle):
    with pytest.raises(ValueError, match=needle):
        UNet(**SMALL, **options)


def test_multiclass_config_with_the_head_is_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"model\.image_head.*classes 1"):
        load_config(None, ["model.classes=3", "task=multiclass", "model.image_head=true"])
    cfg = load_config(None, ["model.name=unet-imagehead"])
    assert cfg.model.model_extra["image_head"] is True and cfg.model.model_extra["image_head_weight"] == 0.2


def test_summary_counts_the_head_and_calls_the_field_global():
    plain, headed = create_model("unet", **SMALL), head_model()
    bottleneck = headed.widths[-1]
    assert count_flops(headed, 1, 32, 32) == pytest.approx(count_flops(plain, 1, 32, 32) + 2 * bottleneck / 1e9)
    assert receptive_field(headed, 1) == (512, True)
    assert receptive_field(headed, 1, size=64) == (64, True)
    assert receptive_field(plain, 1)[1] is False


def test_swa_batch_norm_recomputation_takes_the_training_tuple():
    model = head_model()
    averaging = build_averaging("swa", model, swa_start=0.0)
    averaging.update_epoch(1.0)
    def batches():  # what the trainer's SWA passes: normalised training images, in training mode
        return (torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(2))

    before = averaging.average.bottleneck[1].running_mean.clone()
    averaged = averaging.eval_model(batches)
    assert not averaged.training
    assert not torch.equal(averaged.bottleneck[1].running_mean, before)
    with torch.no_grad():
        out = averaged(X)
    assert isinstance(out, torch.Tensor) and out.shape == X.shape


# ----------------------------------------------------------------------------- export: the gate is in the graph


def split_verdicts(model: UNet, x: torch.Tensor) -> UNet:
    """Shift the head's bias so that image 0 of `x` is called empty and image 1 not (by the same margin)."""
    logits = image_logits_of(model, x)[:, 0]
    with torch.no_grad():
        model.image_head[2].weight.mul_(-1.0 if logits[0] > logits[1] else 1.0)
        logits = image_logits_of(model, x)[:, 0]
        model.image_head[2].bias.sub_(float(logits.mean()))
    assert (image_logits_of(model, x)[:, 0] < 0).tolist() == [True, False]
    return model


def check_exported(run_exported, model: UNet, x: torch.Tensor) -> None:
    got = run_exported(x)
    with torch.no_grad():
        reference = twin_without_head(model).eval()(x)
    assert torch.equal(got[0], torch.full_like(got[0], EMPTY_IMAGE_LOGIT))
    torch.testing.assert_close(got[1], reference[1], atol=1e-4, rtol=1e-4)


def test_onnx_export_keeps_the_gate(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from unetlab.export import _export_onnx

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    model = split_verdicts(settled(head_model()), x)
    path = tmp_path / "m.onnx"
    result = _export_onnx(model, torch.randn(1, 1, 37, 41), path, None, {"test": "image_head"}, [(2, 1, 32, 32)])
    assert result["max_abs_diff"] < 1e-4, result["rows"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_exported(lambda t: torch.from_numpy(session.run(None, {"image": t.numpy()})[0]), model, x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export_keeps_the_gate(tmp_path):
    from unetlab.export import _export_torchscript

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    model = split_verdicts(settled(head_model()), x)
    path = tmp_path / "m.ts.pt"
    result = _export_torchscript(model, torch.randn(1, 1, 37, 41), path, {}, [(2, 1, 32, 32)])
    assert result["max_abs_diff"] < 1e-4, result["rows"]
    loaded = torch.jit.load(str(path), map_location="cpu")

    def run_loaded(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(t)

    check_exported(run_loaded, model, x)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def head_run(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of `unetlab train` with the image head, SWA from the start (its batch-norm pass runs).

    `run_cli` without capsys (module scope): the CLI's main() as the console script runs it."""
    from unetlab.cli import main

    run = tmp_path_factory.mktemp("imagehead") / "run"
    saved = sys.argv
    sys.argv = ["unetlab", "train", "--data", str(tgs_dir), "--out", str(run), "--no-progress", *SET_TINY,
                "--set", "train.epochs=1", "--set", "model.image_head=true", "--set", "train.averaging=swa",
                "--set", "train.swa_start=0.0"]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"unetlab train exited with {exc.code}"
    finally:
        sys.argv = saved
    return run


def test_train_evaluate_predict_with_the_head(head_run, tgs_dir, tmp_path, capsys):
    assert (head_run / "checkpoints" / "best.pt").is_file()
    config = yaml.safe_load((head_run / "config.yaml").read_text())
    assert config["model"]["image_head"] is True and config["train"]["averaging"] == "swa"
    state = torch.load(head_run / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert {"image_head.2.weight", "image_head.2.bias"} <= set(state)
    code, out, err = run_cli(["evaluate", str(head_run), "--data", str(tgs_dir), "--split", "all"], capsys)
    assert code == 0, err
    assert "tgs_map" in out
    images = tgs_dir / "train" / "images"
    code, _, err = run_cli(["predict", str(head_run), str(images), "--out", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == len(list(images.glob("*.png")))


def test_bench_train_and_bench_layers_with_the_head(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, _, err = run_cli(["bench", "train", "--size", "32", "--batch-size", "4", "--steps", "1", "--rounds", "1",
                            "--set", "model.base_width=4", "--set", "model.depth=2", "--set", "model.image_head=true",
                            "--no-memory", "--out", str(out)], capsys)
    assert code == 0, err
    assert len(json.loads(out.read_text())["images_per_s"]) == 3
    from unetlab.bench_layers import bench_layers

    result = bench_layers(load_config("tgs-salt", ["model.base_width=4", "model.depth=2", "model.image_head=true",
                                                   "data.input_size=32", "train.batch_size=2"]),
                          settings=["fp32-nchw"], min_seconds=0.001, steps=1, log=lambda _: None, peak_sides=(64,))
    assert set(result["phases_seconds"]) == {"augmentation", "forward", "loss", "backward", "optimiser"}
