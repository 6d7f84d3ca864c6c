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


def _progress(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="data folder (TGS layout: train/images, train/masks)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file (see configs/)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=5"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder to create (default runs/<name>-<time>)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip scoring the best checkpoint on validation"),
    no_progress: bool = typer.Option(False, "--no-progress", help="plain log lines instead of a progress bar"),
) -> None:
    """Train a model; writes a run folder with config, split, metrics, checkpoints and figures."""
    from unetlab.api import train as api_train
    from unetlab.config import load_config

    cfg = load_config(config, set_)
    api_train(cfg, data_root=data, run_dir=out, progress=_progress(no_progress), evaluate_after=not no_eval)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run folder (or a checkpoint file)"),
    data: Path = typer.Option(..., "--data", help="labelled data folder (TGS layout)"),
    split: str = typer.Option("auto", "--split", help="val | train | all; auto = the run's validation split "
                              "when the data holds it, else all"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="probability threshold (default: the run's)"),
    tta: Optional[str] = typer.Option(None, "--tta", help="none | hflip (default: the run's)"),
    which: str = typer.Option("best", "--which", help="best | last checkpoint"),
) -> None:
    """Score a run on labelled data: metrics, threshold sweep, report.md and a prediction figure."""
    from unetlab.api import evaluate as api_evaluate

    if split not in ("auto", "val", "train", "all"):
        _fail(f"--split {split}: choose auto, val, train or all")
    if tta not in (None, "none", "hflip"):
        _fail(f"--tta {tta}: choose none or hflip")
    if which not in ("best", "last"):
        _fail(f"--which {which}: choose best or last")
    command = " ".join(["unetlab", *sys.argv[1:]]) if sys.argv[1:2] == ["evaluate"] else None
    api_evaluate(run, data, split=split, threshold=threshold, tta=tta, which=which, command=command)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="run folder (or a checkpoint file)"),
    inputs: List[Path] = typer.Argument(..., help="image files and/or folders of images"),
    out: Path = typer.Option(..., "--out", help="folder for masks/, overlays/ and predictions.csv"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="probability threshold (default: the run's)"),
    tta: Optional[str] = typer.Option(None, "--tta", help="none | hflip (default: the run's)"),
    which: str = typer.Option("best", "--which", help="best | last checkpoint"),
) -> None:
    """Predict salt masks: one mask PNG and one overlay PNG per image, at the image's own size."""
    from unetlab.api import predict as api_predict

    if tta not in (None, "none", "hflip"):
        _fail(f"--tta {tta}: choose none or hflip")
    api_predict(run, inputs, out, threshold=threshold, tta=tta, which=which)


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the synthetic data and the run"),
    minutes: float = typer.Option(3.0, "--minutes", min=0.1, help="training time budget"),
    images: int = typer.Option(400, "--images", min=20, help="number of synthetic images"),
    seed: int = typer.Option(0, "--seed", help="seed of the synthetic data"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=2"),
    no_progress: bool = typer.Option(False, "--no-progress", help="plain log lines instead of a progress bar"),
) -> None:
    """Generate synthetic seismic data, train a small U-Net for a few minutes, evaluate, draw figures."""
    from unetlab.api import demo as api_demo

    api_demo(out, minutes=minutes, images=images, seed=seed, overrides=set_, progress=_progress(no_progress))


@app.command()
def bench(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config for the model (default U-Net-16)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key"),
    size: int = typer.Option(128, "--size", min=16, help="input side in pixels"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    steps: int = typer.Option(10, "--steps", min=1, help="timed steps per round"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="alternating rounds per path (median reported)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result as JSON"),
) -> None:
    """Training images/s: default fast path (bf16 + channels_last) vs fp32 NCHW eager, side by side."""
    from unetlab.bench import bench_train
    from unetlab.config import load_config

    bench_train(load_config(config, set_), size=size, batch_size=batch_size, steps=steps, rounds=rounds, out=out)


def main() -> None:
    try:
        app()
    except UnetlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
