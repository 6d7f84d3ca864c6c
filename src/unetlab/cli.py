"""The `unetlab` command: thin typer commands that parse, call the Python API and print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from unetlab.errors import UnetlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="U-Net semantic segmentation: train, evaluate and predict salt masks (and more).")


@app.callback()
def _root() -> None:
    """U-Net semantic segmentation: train, evaluate and predict salt masks (and more)."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="data folder (TGS layout: train/images, train/masks)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file (see configs/)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=5"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder to create (default runs/<name>-<time>)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="plain log lines instead of a progress bar"),
) -> None:
    """Train a model; writes a run folder with config, split, metrics, checkpoints and figures."""
    from unetlab.api import train as api_train
    from unetlab.config import load_config

    cfg = load_config(config, set_)
    api_train(cfg, data_root=data, run_dir=out, progress=not no_progress and sys.stderr.isatty())


def main() -> None:
    try:
        app()
    except UnetlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
