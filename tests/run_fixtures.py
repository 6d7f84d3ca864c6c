"""Helpers shared by the engine, inference and CLI tests: a tiny config and the CLI in-process.

The tiny trained run built from them is the `tiny_run` fixture in conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from unetlab.config import Config, load_config

TINY = [
    "model.base_width=4", "model.depth=2", "data.input_size=104", "train.epochs=2", "train.batch_size=8",
    "train.precision=fp32", "train.channels_last=false", "data.val_fraction=0.25", "train.early_stop_patience=0",
]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `unetlab ARGS` in this process exactly as the console script does; return (code, stdout, stderr)."""
    from unetlab.cli import main

    saved = sys.argv
    sys.argv = ["unetlab", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """The CLI's contract for bad input: exit 2, one `error:` line naming what is wrong, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_choice_refused(code: int, err: str, option: str, value: str, *choices: str) -> None:
    """typer's own refusal of a value outside an option's choices: exit 2, naming the option, the value and
    every valid choice (typer's message is boxed over several lines, so it is read as one)."""
    assert code == 2, err
    assert "Traceback" not in err
    text = " ".join(err.replace("│", " ").split())
    for needle in (f"'{option}'", f"'{value}'", *(f"'{choice}'" for choice in choices)):
        assert needle in text, (needle, text)


def write_multiclass_folder(root: Path, count: int = 8, shape: tuple[int, int] = (32, 32), noise: float = 0.0,
                            seed: int = 0) -> Path:
    """A `folders`-format set of grey images with 3 classes: class 1 = bright squares, class 2 = dark
    stripes, 0 = the rest, and an ignored (255) top row like VOC's boundary. Returns `root`."""
    from PIL import Image

    height, width = shape
    side, stride = height // 3, width // 5
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for k in range(count):
        mask = np.zeros(shape, np.uint8)
        y, x = rng.integers(2, min(height, width) - side - 2, size=2)
        mask[y : y + side, x : x + side] = 1
        mask[:, (k % 4) * stride + 2 : (k % 4) * stride + 5] = 2
        image = np.full(shape, 120, np.uint8)
        image[mask == 1], image[mask == 2] = 220, 30
        if noise:
            image = np.clip(image + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
        mask[0, :] = 255
        Image.fromarray(image).save(root / "images" / f"img{k:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{k:02d}.png")
    return root


def multiclass_config(*overrides: str) -> Config:
    """`tiny_config` for the 3-class `write_multiclass_folder` sets (255 ignored), monitored by val/miou."""
    return tiny_config("task=multiclass", "model.classes=3", "data.format=folders",
                       "data.options={num_classes: 3, ignore_index: 255}", "data.cache=false",
                       "train.monitor=val/miou", "train.monitor_mode=max", *overrides)


def schedule_lrs(overrides: list[str], progress_points) -> list[float]:
    """The learning rate the config's schedule sets at each training progress in turn (one SGD parameter)."""
    import torch

    from unetlab.engine.schedule import build_scheduler

    cfg = load_config(None, overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    schedule = build_scheduler(cfg, optimizer)
    out = []
    for progress in progress_points:
        schedule.step(progress)
        out.append(optimizer.param_groups[0]["lr"])
    return out
