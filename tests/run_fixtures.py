"""Helpers shared by the engine, inference and CLI tests: a tiny config and the CLI in-process.

The tiny trained run built from them is the `tiny_run` fixture in conftest.py."""

from __future__ import annotations

import sys

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
