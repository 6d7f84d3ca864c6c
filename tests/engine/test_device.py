"""Device names: the spelling checked when a config loads, the machine's devices when training starts."""

from __future__ import annotations

import pytest
import torch

from run_fixtures import TINY, assert_one_line_error, run_cli, tiny_config
from unetlab.engine.device import available_devices, check_device_name, resolve_device
from unetlab.errors import ConfigError

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_names_unetlab_can_use_are_spelled_right(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu0", "gpu", "CPU", "cuda:x", "meta", "cpu:1", ""])
def test_misspelt_devices_are_refused_naming_the_key_and_the_choices(name):
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or mps"):
        check_device_name(name)
    with pytest.raises(ConfigError, match="'train.device'.*auto, cpu, cuda, cuda:N or mps"):
        tiny_config(f"train.device={name}")
    with pytest.raises(ConfigError, match=r"bad value for '--device'.*this machine has auto, cpu"):
        resolve_device(name)


def test_resolve_device_gives_what_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert available_devices()[:2] == ["auto", "cpu"]


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused_with_what_is_available():
    # A config naming cuda still loads (it may come from a GPU machine's checkpoint) ...
    assert tiny_config("train.device=cuda:0").train.device == "cuda:0"
    # ... but nothing runs on it here.
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=r"'train.device': '.*', but torch finds no CUDA device here "
                                              r"\(available: auto, cpu\); use --set train.device=auto"):
            resolve_device(name, "train.device")


@pytest.mark.parametrize("device, needle", [("gpu0", "is not a device"),
                                            pytest.param("cuda", "no CUDA device", marks=pytest.mark.skipif(
                                                not NO_CUDA, reason="this machine has CUDA"))])
def test_cli_train_refuses_a_bad_device_before_any_work(device, needle, tgs_dir, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [arg for item in TINY for arg in ("--set", item)]
    code, _, err = run_cli(["train", "--data", str(tgs_dir), "--out", str(run), "--no-progress", *sets,
                            "--set", f"train.device={device}"], capsys)
    assert_one_line_error(code, err, "train.device", needle, "auto, cpu")
    assert not run.exists()  # refused before the run folder was made
