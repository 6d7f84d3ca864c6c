"""Where and in which precision tensors are computed: shared by training, inference, export and the bench.

A device name is checked twice: its spelling when a config is loaded (`check_device_name`, so
`train.device=gpu0` is refused before anything runs), and whether this machine has it when it is
used (`resolve_device`: a config written on a GPU machine still loads on a CPU-only one).
"""

from __future__ import annotations

import contextlib

import torch

from unetlab.errors import ConfigError

#: Device types unetlab runs on; torch knows more (meta, xpu, ...) that the trainer does not support.
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def check_device_name(name: str) -> str:
    """`name` if it spells a device unetlab can use (available or not); ValueError otherwise."""
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES or (device.type != "cuda" and device.index):
        raise ValueError(f"{name!r} is not a device; use {DEVICE_NAMES}")
    return name


def available_devices() -> list[str]:
    """The device names this machine can use now: auto, cpu, then cuda:0.. and mps where present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{k}" for k in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """The torch device `name` means on this machine (`auto`: CUDA when present, else CPU).

    A misspelt or absent device is a ConfigError naming `option` (the config key or CLI option the
    name came from), what this machine has and the fix, before any tensor is made.
    """
    try:
        check_device_name(name)
    except ValueError as exc:
        raise ConfigError(f"bad value for '{option}': {exc} (this machine has {', '.join(available_devices())})") \
            from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    present = {"cpu": True, "mps": torch.backends.mps.is_available(),
               "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()}[device.type]
    if not present:
        reason = ("torch finds no CUDA device here" if device.type == "cuda" and not torch.cuda.is_available()
                  else "this machine has no such device")
        fix = f"--set {option}=auto" if "." in option else f"{option} auto"
        raise ConfigError(f"bad value for '{option}': {name!r}, but {reason} (available: "
                          f"{', '.join(available_devices())}); use {fix} or one of those")
    return device


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on `device`, or nothing for fp32 (fp16 is only offered on CUDA)."""
    if precision in _AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()
