"""ResNet-34 encoder (torchvision-compatible keys), encoder weights (file, download, cache), ResNetUNet."""

from __future__ import annotations

import ast
import functools
import hashlib
import http.server
import math
import socket
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.errors import UnetlabError
from unetlab.models import weights
from unetlab.models.registry import create_model
from unetlab.models.resnet import ResNetEncoder, adapt_first_conv, drop_classifier
from unetlab.models.resnet_unet import ResNetUNet, imagenet_normalization, resnet34_unet

KEYS_FILE = Path(__file__).with_name("torchvision_resnet34_keys.txt")
# torchvision's ResNet34_Weights.IMAGENET1K_V1.meta["num_params"]: parameters including fc.
TORCHVISION_RESNET34_PARAMS = 21_797_672
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def torchvision_keys() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every entry of torchvision's resnet34().state_dict(), in its order."""
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(ast.literal_eval(shape))))
    return rows


def fake_torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly torchvision's resnet34 keys and shapes (fc.* included)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in torchvision_keys():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(seed + 7, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


# ---------------------------------------------------------------- key list and strict loading

def test_key_list_has_218_entries_and_torchvision_parameter_count():
    rows = torchvision_keys()
    names = [name for name, _ in rows]
    assert len(rows) == 218 and len(set(names)) == 218
    # 16 BasicBlocks x 12 entries + 3 downsample projections x 6 + stem 6 + fc 2
    assert sum(name.endswith("num_batches_tracked") for name in names) == 36
    assert [name for name in names if name.startswith("fc.")] == ["fc.weight", "fc.bias"]
    params = sum(math.prod(shape) for name, shape in rows if not name.endswith(BUFFER_SUFFIXES))
    assert params == TORCHVISION_RESNET34_PARAMS


def test_encoder_keys_and_shapes_equal_torchvision_without_fc():
    encoder = ResNetEncoder()
    ours = [(name, tuple(t.shape)) for name, t in encoder.state_dict().items()]
    expected = [(name, shape) for name, shape in torchvision_keys() if not name.startswith("fc.")]
    assert ours == expected  # same names, shapes and registration order
    assert len(ours) == 216


def test_torchvision_state_dict_loads_strictly_with_fc_dropped():
    state = fake_torchvision_state_dict()
    encoder = ResNetEncoder()
    encoder.load_torchvision_state_dict(state)
    loaded = encoder.state_dict()
    assert set(loaded) == set(drop_classifier(state))
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name
    with pytest.raises(RuntimeError, match="fc.weight"):  # fc is only dropped explicitly
        ResNetEncoder().load_state_dict(state, strict=True)


@pytest.mark.parametrize("change", ["missing", "renamed", "reshaped"])
def test_any_other_mismatch_fails_strict_loading(change):
    state = fake_torchvision_state_dict()
    if change == "missing":
        del state["layer3.2.bn1.running_var"]
        match = "Missing key"
    elif change == "renamed":
        state["layer2.0.shortcut.0.weight"] = state.pop("layer2.0.downsample.0.weight")
        match = "Unexpected key"
    else:
        state["layer4.0.conv1.weight"] = state["layer4.0.conv1.weight"].transpose(0, 1).contiguous()
        match = "size mismatch"
    with pytest.raises(RuntimeError, match=match):
        ResNetEncoder().load_torchvision_state_dict(state)


def test_encoder_stage_shapes():
    encoder = ResNetEncoder(in_channels=2).eval()
    with torch.no_grad():
        features = encoder(torch.randn(2, 2, 64, 64))
    assert [tuple(f.shape) for f in features] == [
        (2, 64, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert encoder.out_channels == (64, 64, 128, 256, 512)


# ---------------------------------------------------------------- first convolution

def test_one_channel_filter_is_rgb_sum_and_matches_grey_replicated_to_rgb():
    weight = torch.randn(64, 3, 7, 7, dtype=torch.float64)
    grey = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    adapted = adapt_first_conv(weight, 1)
    assert adapted.shape == (64, 1, 7, 7)
    torch.testing.assert_close(adapted, weight.sum(dim=1, keepdim=True))
    rgb = F.conv2d(grey.expand(-1, 3, -1, -1), weight, stride=2, padding=3)
    torch.testing.assert_close(F.conv2d(grey, adapted, stride=2, padding=3), rgb, rtol=1e-12, atol=1e-12)


def test_n_channel_filters_repeat_rgb_cyclically_and_rescale():
    weight = torch.randn(64, 3, 7, 7, dtype=torch.float64)
    six = adapt_first_conv(weight, 6)
    assert six.shape == (64, 6, 7, 7)
    for channel in range(6):
        torch.testing.assert_close(six[:, channel], weight[:, channel % 3] * 0.5)
    # Six channels holding the RGB image twice respond like the RGB network.
    image = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(image.repeat(1, 2, 1, 1), six), F.conv2d(image, weight))
    four = adapt_first_conv(weight, 4)
    torch.testing.assert_close(four[:, 3], weight[:, 0] * 0.75)
    same = adapt_first_conv(weight, 3)
    assert torch.equal(same, weight) and same.data_ptr() != weight.data_ptr()
    with pytest.raises(ValueError, match="RGB filters"):
        adapt_first_conv(torch.randn(64, 4, 7, 7), 1)


def test_imagenet_normalization_per_channel_count():
    mean1, std1 = imagenet_normalization(1)
    assert mean1 == pytest.approx([0.449]) and std1 == pytest.approx([0.226])
    assert imagenet_normalization(3) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    mean4, std4 = imagenet_normalization(4)
    assert mean4 == [0.485, 0.456, 0.406, 0.485] and std4 == [0.229, 0.224, 0.225, 0.229]


# ---------------------------------------------------------------- ResNetUNet

@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("size", [(101, 101), (37, 53), (128, 128)])
def test_resnet_unet_output_shape(size, in_channels):
    torch.manual_seed(0)
    model = ResNetUNet(in_channels=in_channels, decoder_widths=(32, 32, 16, 16, 8)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, in_channels, *size))
    assert out.shape == (1, 1, *size)
    assert torch.isfinite(out).all()
    assert model.input_mean is None and model.input_std is None


def test_resnet_unet_defaults_scse_classes_tiny_input_and_backward():
    model = create_model("resnet34_unet", in_channels=1, classes=2, scse=True)
    assert isinstance(model, ResNetUNet)
    assert [block.conv[0].out_channels for block in model.decoder] == [256, 128, 64, 32, 16]
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 2, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():  # smaller than the padding: replicate instead of reflect
        assert model.eval()(torch.randn(1, 1, 5, 7)).shape == (1, 2, 5, 7)


def test_factory_builds_on_meta_device_and_names_bad_options():
    with torch.device("meta"):
        model = resnet34_unet(in_channels=3, decoder_widths=(8, 8, 8, 8, 8))
    assert next(model.parameters()).is_meta
    with pytest.raises(ValueError, match="decoder_widths"):
        resnet34_unet(decoder_widths=(64, 32))


@pytest.mark.parametrize("in_channels, wrapped", [(1, False), (3, True)])
def test_resnet_unet_loads_encoder_weights_from_a_local_file(tmp_path, in_channels, wrapped):
    state = fake_torchvision_state_dict(seed=3)
    path = tmp_path / "resnet34-local.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    model = ResNetUNet(in_channels=in_channels, encoder_weights=path, decoder_widths=(16, 16, 8, 8, 8))
    encoder = model.encoder.state_dict()
    for name, tensor in encoder.items():
        expected = adapt_first_conv(state[name], in_channels) if name == "conv1.weight" else state[name]
        assert torch.equal(tensor, expected), name
    assert encoder["conv1.weight"].shape == (64, in_channels, 7, 7)
    assert (model.input_mean, model.input_std) == imagenet_normalization(in_channels)
    assert model.encoder_weights == str(path)


def test_freeze_encoder_keeps_encoder_fixed_and_trains_decoder():
    torch.manual_seed(0)
    model = ResNetUNet(in_channels=1, decoder_widths=(16, 16, 8, 8, 8))
    model.freeze_encoder(True)
    model.train()
    assert model.encoder_frozen and model.training
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    assert all(m.training for m in model.decoder.modules())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.randn(2, 1, 64, 64)).square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.decoder_parameters())
    for name, tensor in model.encoder.state_dict().items():  # running stats, num_batches_tracked too
        assert torch.equal(tensor, before[name]), name
    model.eval().train()  # switching modes keeps frozen batch norms in eval
    assert not any(bn.training for bn in bns)

    model.freeze_encoder(False)
    assert all(bn.training for bn in bns) and all(p.requires_grad for p in model.encoder_parameters())
    model(torch.randn(2, 1, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in model.encoder_parameters())
    assert not torch.equal(model.encoder.bn1.running_mean, before["bn1.running_mean"])


def test_encoder_and_decoder_parameters_partition_the_model():
    model = ResNetUNet(decoder_widths=(8, 8, 8, 8, 8))
    encoder = {id(p) for p in model.encoder_parameters()}
    decoder = {id(p) for p in model.decoder_parameters()}
    assert encoder.isdisjoint(decoder) and encoder | decoder == {id(p) for p in model.parameters()}


# ---------------------------------------------------------------- weights: local files

def test_no_weights_spec_is_none():
    assert weights.load_encoder_weights(None) is None


def test_missing_file_error_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "resnet34.pth"
    with pytest.raises(UnetlabError, match="resnet34.pth") as info:
        weights.load_encoder_weights(str(missing))
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnetlabError, match="folder"):
        weights.load_encoder_weights(tmp_path)


def test_file_without_a_state_dict_is_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UnetlabError, match="garbage.pth"):
        weights.load_encoder_weights(garbage)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(UnetlabError, match="no state dict"):
        weights.load_encoder_weights(listing)


# ---------------------------------------------------------------- weights: download and cache

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, *args):
        pass


class LocalServer:
    """http.server on 127.0.0.1 in a thread, serving `folder`; stop() shuts it down."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A fake checkpoint named like torchvision's (<name>-<sha256[:8]>.pth) on a loopback server."""
    folder = tmp_path / "served"
    folder.mkdir()
    state = {"conv1.weight": torch.arange(12.0).view(1, 3, 2, 2), "bn1.num_batches_tracked": torch.tensor(3)}
    staging = folder / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"resnet34-{digest[:8]}.pth"
    staging.rename(folder / name)
    server = LocalServer(folder)
    monkeypatch.setattr(weights, "WEIGHTS", {"imagenet": (server.url(name), digest[:8])})
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 5.0)
    yield server, name, digest, state
    server.stop()


def _assert_state_equal(got, expected):
    assert got is not None and set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_download_verifies_caches_and_reuses_without_network(served, tmp_path, capsys):
    server, name, digest, state = served
    cache = tmp_path / "cache"
    _assert_state_equal(weights.load_encoder_weights("imagenet", cache_dir=cache), state)
    assert [p.name for p in cache.iterdir()] == [name]  # no temporary file left
    assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest
    assert server.requests == [f"/{name}"]
    assert "downloading " + name in capsys.readouterr().err

    server.stop()
    _assert_state_equal(weights.load_encoder_weights("imagenet", cache_dir=cache), state)


def test_cache_folder_from_environment_and_corrupt_cache_is_downloaded_again(served, tmp_path, monkeypatch):
    server, name, _, state = served
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("UNETLAB_CACHE", str(cache))
    assert weights.fetch_weights("imagenet", progress=False) == cache / name
    (cache / name).write_bytes(b"truncated")  # no longer matches its hash prefix
    _assert_state_equal(weights.load_encoder_weights("imagenet"), state)
    assert len(server.requests) == 2


def test_hash_mismatch_is_refused_and_nothing_is_kept(served, tmp_path, monkeypatch):
    _, name, digest, _ = served
    url, _ = weights.WEIGHTS["imagenet"]
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    monkeypatch.setattr(weights, "WEIGHTS", {"imagenet": (url, wrong)})
    cache = tmp_path / "cache"
    with pytest.raises(UnetlabError, match="SHA-256") as info:
        weights.load_encoder_weights("imagenet", cache_dir=cache)
    assert wrong in str(info.value) and "not kept" in str(info.value)
    assert list(cache.iterdir()) == []


def _unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_error_is_one_line_and_names_the_local_file_option(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_unused_loopback_port()}/resnet34-b627a593.pth"
    monkeypatch.setattr(weights, "WEIGHTS", {"imagenet": (url, "b627a593")})
    cache = tmp_path / "cache"
    with pytest.raises(UnetlabError) as info:
        weights.load_encoder_weights("imagenet", cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message
    assert "failed" in message and url in message
    assert "model.encoder_weights=/path/to/resnet34-b627a593.pth" in message
    assert list(cache.iterdir()) == []


def test_a_silent_server_times_out(tmp_path, monkeypatch):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/resnet34-b627a593.pth"
        monkeypatch.setattr(weights, "WEIGHTS", {"imagenet": (url, "b627a593")})
        monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.5)
        with pytest.raises(UnetlabError, match="timed out") as info:
            weights.load_encoder_weights("imagenet", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- weights: refusals in one line

@pytest.mark.parametrize("change", ["missing", "renamed", "reshaped"])
def test_weights_that_do_not_fit_are_one_line_naming_the_file_counts_and_keys(tmp_path, change):
    state = fake_torchvision_state_dict()
    if change == "missing":
        for key in ("layer3.2.bn1.running_var", "layer4.0.conv1.weight", "bn1.bias"):
            del state[key]
        expected = "3 missing (e.g. bn1.bias, layer3.2.bn1.running_var)"
    elif change == "renamed":  # another library's names: every key is both missing and unexpected
        state = {f"backbone.{key}": value for key, value in state.items()}
        expected = "216 missing (e.g. conv1.weight, bn1.weight); 218 unexpected (e.g. backbone.conv1.weight"
    else:
        state["layer4.0.conv1.weight"] = state["layer4.0.conv1.weight"][:, :100].contiguous()
        expected = "1 of another shape (e.g. layer4.0.conv1.weight)"
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(UnetlabError) as info:
        ResNetUNet(encoder_weights=path, decoder_widths=(16, 16, 8, 8, 8))
    message = str(info.value)
    assert message.startswith(f"model.encoder_weights: {path} does not fit the ResNet-34 encoder: keys ")
    assert expected in message and "torchvision-compatible ResNet-34 state dict" in message
    assert "\n" not in message and len(message) < 400


def test_weights_of_pickled_objects_are_refused_saying_why(tmp_path):
    path = tmp_path / "module.pth"
    torch.save({"encoder": nn.Linear(2, 2)}, path)  # a pickled module, not a state dict
    with pytest.raises(UnetlabError) as info:
        weights.load_encoder_weights(path)
    message = str(info.value)
    assert message.startswith(f"model.encoder_weights: {path}: holds pickled Python objects (torch.nn.")
    assert "never unpickles" in message and "weights_only=True" in message and "state_dict()" in message


def test_a_local_file_named_like_the_download_must_have_its_hash(tmp_path, monkeypatch):
    state = fake_torchvision_state_dict(seed=1)
    genuine = tmp_path / "genuine.pth"
    torch.save(state, genuine)
    digest = hashlib.sha256(genuine.read_bytes()).hexdigest()
    name = f"resnet34-{digest[:8]}.pth"
    monkeypatch.setattr(weights, "WEIGHTS", {"imagenet": (f"https://example.invalid/models/{name}", digest[:8])})
    official = genuine.rename(tmp_path / name)
    _assert_state_equal(weights.load_encoder_weights(official), state)  # the genuine file passes
    torch.save(fake_torchvision_state_dict(seed=2), official)  # same name, other weights
    with pytest.raises(UnetlabError) as info:
        weights.load_encoder_weights(official)
    message = str(info.value)
    assert str(official) in message and f"not {digest[:8]}" in message and "download it again" in message
    assert "\n" not in message
    other = official.rename(tmp_path / "my-resnet34.pth")  # renamed, the same weights are taken as given
    assert set(weights.load_encoder_weights(other)) == set(state)


def test_train_with_weights_that_do_not_fit_is_one_line(tgs_dir, tmp_path, capsys):
    from run_fixtures import TINY, assert_one_line_error, run_cli

    path = tmp_path / "wrong-keys.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2)}, path)
    sets = [o for o in TINY if not o.startswith("model.")]
    sets += ["model.name=resnet34_unet", f"model.encoder_weights={path}", "model.decoder_widths=[16,16,8,8,8]"]
    code, _, err = run_cli(["train", "--data", str(tgs_dir), "--out", str(tmp_path / "run"), "--no-progress",
                            *(item for o in sets for item in ("--set", o))], capsys)
    assert_one_line_error(code, err, str(path), "215 missing", "1 unexpected (e.g. head.weight)")
