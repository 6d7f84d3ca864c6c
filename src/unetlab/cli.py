"""The `unetlab` command: thin typer commands that parse, call the Python API and print."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterable, List, Optional, get_args

import numpy as np
import typer

from unetlab.config import AugmentConfig, EvalConfig
from unetlab.data.formats.registry import FORMATS
from unetlab.errors import ConfigError, UnetlabError

ABOUT = ("U-Net semantic segmentation: train, evaluate and predict masks of image data sets "
         "(TGS Salt, Oxford-IIIT Pet, CamVid, ISBI or your own image/mask folders).")
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=ABOUT)


@app.callback()
def _root() -> None:
    """U-Net semantic segmentation: train, evaluate and predict masks of image data sets."""


# ---- choices: typer refuses any other value itself (exit code 2) and lists them in --help

class Split(str, Enum):
    auto = "auto"
    val = "val"
    train = "train"
    all = "all"


class Which(str, Enum):
    best = "best"
    last = "last"


class XAxis(str, Enum):
    epoch = "epoch"
    time = "time"


class ProbabilityFormat(str, Enum):  # unetlab.inference.predict.PROBABILITY_FORMATS (tests/inference check they agree)
    npy = "npy"
    png16 = "png16"


class SegyAxis(str, Enum):  # unetlab.inference.segy.AXES (tests/inference/test_segy.py checks they agree)
    inline = "inline"
    crossline = "crossline"
    time = "time"


class SegyWrite(str, Enum):  # unetlab.inference.segy.WRITES
    probability = "probability"
    mask = "mask"


class SegyFormat(str, Enum):  # unetlab.inference.segy.FORMATS
    segy = "segy"
    npy = "npy"


class ExportFormat(str, Enum):  # the keys of unetlab.export.FORMATS (tests/cli check they agree)
    onnx = "onnx"
    torchscript = "torchscript"


def _choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum of choices owned elsewhere (a config Literal, the format registry)."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)  # type: ignore[return-value]


Tta = _choices("Tta", get_args(EvalConfig.model_fields["tta"].annotation))
Preset = _choices("Preset", get_args(AugmentConfig.model_fields["preset"].annotation))
DataFormat = _choices("DataFormat", FORMATS)

# ---- the option block evaluate and predict share
ThresholdOption = Annotated[Optional[float], typer.Option(
    "--threshold", help="binary: probability threshold (default: the run's saved operating point, else "
    "eval.threshold)")]
TtaOption = Annotated[Optional[Tta], typer.Option(  # type: ignore[valid-type]
    "--tta", case_sensitive=False, help="test-time augmentation (default: the run's eval.tta)")]
WhichOption = Annotated[Which, typer.Option("--which", case_sensitive=False, help="which checkpoint to use")]
MinAreaOption = Annotated[Optional[int], typer.Option(
    "--min-area", help="binary: predict an image empty when fewer pixels than this pass the threshold "
    "(default: the run's saved operating point, else eval.min_area)")]
MinComponentOption = Annotated[Optional[int], typer.Option(
    "--min-component", help="binary: remove predicted connected components (8-connected) of fewer pixels than "
    "this, before --min-area counts (default: the run's saved operating point, else eval.min_component)")]
FormatOption = Annotated[DataFormat, typer.Option(  # type: ignore[valid-type]
    "--format", case_sensitive=False, help="data format (the readers of unetlab.data.formats.registry)")]


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _progress(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="data folder, read as the config's data.format "
                                        "(default tgs: train/images, train/masks)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file, or the name of a built-in "
                                          "recipe (unetlab configs lists them)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=5"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder to create (default runs/<name>-<time>)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip scoring the best checkpoint on validation"),
    no_progress: bool = typer.Option(False, "--no-progress", help="plain log lines instead of a progress bar"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last "
                                          "checkpoint; one stopped before its first checkpoint restarts from "
                                          "epoch 0 (only train.epochs / max_minutes / early_stop_patience "
                                          "may be --set)"),
) -> None:
    """Train a model; writes a run folder with config, split, metrics, checkpoints and figures.

    Several processes (CPU or GPUs): torchrun --nproc-per-node N -m unetlab train ...
    """
    from unetlab.api import resume as api_resume, train as api_train
    from unetlab.config import load_config

    if resume is not None:
        if config is not None or out is not None:
            raise ConfigError("--resume RUN continues RUN with its own config.yaml; drop --config and --out")
        api_resume(resume, data_root=data, overrides=set_, progress=_progress(no_progress),
                   evaluate_after=not no_eval)
        return
    cfg = load_config(config, set_)
    api_train(cfg, data_root=data, run_dir=out, progress=_progress(no_progress), evaluate_after=not no_eval)


@app.command("configs")
def configs_command() -> None:
    """The built-in recipes, each with its one-line description: train with --config NAME from any folder."""
    from unetlab.recipes import recipe_description, recipe_names

    names = recipe_names()
    width = max(map(len, names), default=0)
    for name in names:
        typer.echo(f"{name:<{width}}  {recipe_description(name)}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run folder (or a checkpoint file)"),
    data: Path = typer.Option(..., "--data", help="labelled data folder, read as the run's data.format"),
    split: Split = typer.Option(Split.auto, "--split", case_sensitive=False, help="auto = the run's validation "
                                "split when the data holds it, else all"),
    threshold: ThresholdOption = None,
    tta: TtaOption = None,
    which: WhichOption = Which.best,
    min_area: MinAreaOption = None,
    min_component: MinComponentOption = None,
    choose: List[str] = typer.Option([], "--choose", help="binary: choose the threshold, min area and min "
                                     "component on this set by a criterion: max-f1, max-iou, max-tgs, max-fbeta:B, "
                                     "precision@recall>=R, recall@precision>=P (repeat for a table; "
                                     "docs/operating-points.md)"),
    save: bool = typer.Option(False, "--save", help="store the one --choose point in the run "
                              "(operating-point.json): predict, export and evaluate then decode at it"),
    worst: int = typer.Option(8, "--worst", min=0, help="how many of the worst images the gallery "
                              "figures/worst-*.png shows (0: none)"),
    ensemble: List[Path] = typer.Option([], "--ensemble", help="another run folder (or checkpoint) whose "
                                        "probabilities are averaged with RUN's (repeat for more); results go to "
                                        "RUN's evaluation/ensemble<N>-*.json (docs/inference.md)"),
) -> None:
    """Score a run on labelled data: metrics, threshold and min-area sweeps, report.md and a prediction figure;
    --choose picks operating points, --save keeps one with the run."""
    from unetlab.api import evaluate as api_evaluate

    command = shlex.join(["unetlab", *sys.argv[1:]]) if sys.argv[1:2] == ["evaluate"] else None
    api_evaluate(run, data, split=split.value, threshold=threshold, tta=_value(tta), which=which.value,
                 command=command, min_area=min_area, choose=choose or None, save=save, min_component=min_component,
                 worst=worst, ensemble=ensemble)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="run folder (or a checkpoint file)"),
    inputs: List[Path] = typer.Argument(..., help="image files and/or folders of images"),
    out: Path = typer.Option(..., "--out", help="folder for masks/, overlays/ and predictions.csv"),
    threshold: ThresholdOption = None,
    tta: TtaOption = None,
    which: WhichOption = Which.best,
    min_area: MinAreaOption = None,
    min_component: MinComponentOption = None,
    probabilities: Optional[ProbabilityFormat] = typer.Option(  # type: ignore[valid-type]
        None, "--probabilities", case_sensitive=False, help="also write the probabilities into probabilities/: npy "
        "(float32; multiclass (classes, H, W)) or png16 (16-bit, 0..65535; multiclass one folder per class)"),
    tile: Optional[int] = typer.Option(None, "--tile", help="predict images with a side larger than this in "
                                       "overlapping tiles of at most this side (default: the run's eval.tile; "
                                       "0 = never tile)"),
    tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", help="pixels neighbouring tiles share at "
                                               "least (default: the run's eval.tile_overlap)"),
    segy_axis: SegyAxis = typer.Option(SegyAxis.inline, "--segy-axis", case_sensitive=False,
                                       help="SEG-Y: the slices fed to the model (a 2-D line is one section)"),
    segy_clip: Optional[float] = typer.Option(None, "--segy-clip", min=0.0, help="SEG-Y: clip amplitudes at +-this "
                                              "before mapping to grey 0..255 (overrides --segy-clip-percentile)"),
    segy_clip_percentile: float = typer.Option(99.0, "--segy-clip-percentile", min=0.0, max=100.0,
                                               help="SEG-Y: clip at this percentile of |amplitude| (a random "
                                               "sample of traces)"),
    segy_reverse_polarity: bool = typer.Option(False, "--segy-reverse-polarity", help="SEG-Y: negate amplitudes "
                                               "first (when salt shows the opposite colour to the training images)"),
    segy_write: SegyWrite = typer.Option(SegyWrite.probability, "--segy-write", case_sensitive=False,
                                         help="SEG-Y: the cube written (the mask uses the decoding options)"),
    segy_format: List[SegyFormat] = typer.Option([], "--segy-format", case_sensitive=False,
                                                 help="SEG-Y: output format, repeatable (default segy)"),
    segy_preview: List[float] = typer.Option([], "--segy-preview", help="SEG-Y: a PNG of this inline / crossline "
                                             "number or sample time, repeatable"),
    segy_inline_byte: int = typer.Option(189, "--segy-inline-byte", help="SEG-Y: trace-header byte of the inline"),
    segy_crossline_byte: int = typer.Option(193, "--segy-crossline-byte", help="SEG-Y: trace-header byte of the "
                                            "crossline"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing files of the same names in --out "
                                   "(without it, only files an earlier predict wrote there are replaced)"),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="refuse images of more pixels "
                                             "than this (default: the run's data.max_pixels)"),
    ensemble: List[Path] = typer.Option([], "--ensemble", help="another run folder (or checkpoint) whose "
                                        "probabilities are averaged with RUN's (repeat for more); TTA, tiling and "
                                        "decoding default to RUN's, no run's operating point is applied "
                                        "(docs/inference.md)"),
) -> None:
    """Predict masks (0/255 foreground, or class indices) and overlays: one PNG each per image, at its own size.

    Images of any size (PNG, JPEG, TIFF / BigTIFF, .npy; docs/inference.md): one larger than the tile is
    predicted in overlapping tiles, in bounded memory. SEG-Y volumes (.sgy, .segy; docs/seismic-volumes.md):
    a salt probability or mask cube with the input's geometry and headers, slice by slice."""
    from unetlab.api import predict as api_predict

    segy = {"axis": segy_axis.value, "clip": segy_clip, "clip_percentile": segy_clip_percentile,
            "reverse_polarity": segy_reverse_polarity, "write": segy_write.value,
            "formats": tuple(f.value for f in segy_format) or ("segy",), "previews": tuple(segy_preview),
            "inline_byte": segy_inline_byte, "crossline_byte": segy_crossline_byte}
    api_predict(run, inputs, out, threshold=threshold, tta=_value(tta), which=which.value, min_area=min_area,
                min_component=min_component, probabilities=_value(probabilities), tile=tile,
                tile_overlap=tile_overlap, segy=segy, overwrite=overwrite, max_pixels=max_pixels, ensemble=ensemble)


@app.command()
def plot(
    runs: List[Path] = typer.Argument(..., help="run folders (each holds the metrics.csv of `unetlab train`)"),
    out: Path = typer.Option(..., "--out", help="PNG file to write"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="comma-separated panels, e.g. loss,val/iou,lr "
                                          "(default: loss, every val/* metric, lr)"),
    x: XAxis = typer.Option(XAxis.epoch, "--x", case_sensitive=False, help="time = minutes since the start "
                            "of training"),
) -> None:
    """Learning curves of one or more runs in one PNG: one panel per metric, one line per run."""
    from unetlab.api import plot_runs

    names = [name.strip() for name in metrics.split(",") if name.strip()] if metrics else None
    path = plot_runs(runs, out, metrics=names or None, x=x.value)
    typer.echo(f"wrote {path} ({len(runs)} run{'s' if len(runs) != 1 else ''}, x = {x.value})")


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


@app.command("augment-preview")
def augment_preview_command(
    data: Path = typer.Argument(..., help="data folder"),
    out: Path = typer.Option(..., "--out", help="PNG file to write"),
    preset: Preset = typer.Option("seismic", "--preset", case_sensitive=False,  # type: ignore[valid-type]
                                  help="augmentation preset"),
    data_format: FormatOption = "tgs",  # type: ignore[assignment]
    count: int = typer.Option(12, "--count", min=1, help="number of augmented pairs"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """A PNG grid of augmented image/mask pairs, mask boundaries drawn, to check a preset by eye."""
    from unetlab.data.augment_kornia import PRESETS, augment_preview
    from unetlab.data.formats.registry import read_dataset

    samples = read_dataset(data_format.value, data)
    chosen = [int(i) for i in np.random.default_rng(seed).choice(len(samples), min(count, len(samples)), replace=False)]
    augment_preview(out, [samples.images[i] for i in chosen], [samples.masks[i] for i in chosen],
                    PRESETS[preset.value], n=len(chosen), seed=seed, ignore_index=samples.ignore_index)
    typer.echo(f"wrote {out} ({len(chosen)} pairs, preset {preset.value})")


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="data folder"),
    format_: FormatOption = "tgs",  # type: ignore[assignment]
    set_option: List[str] = typer.Option([], "--set-option", help="a reader option, e.g. --set-option binary_rule=nonzero"),
    out: Optional[Path] = typer.Option(None, "--out", help="write samples.png and inspection.json here"),
    classes: Optional[int] = typer.Option(None, "--classes", min=1, help="number of classes: larger mask values are fatal"),
) -> None:
    """What is in a data set: counts, sizes, modes, mask values, class shares, coverage, every problem."""
    import yaml

    from unetlab.data.inspect import inspect_dataset

    options = {}
    for item in set_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set-option {item}: expected key=value, e.g. binary_rule=nonzero")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    report = inspect_dataset(data, format=format_.value, options=options, num_classes=classes, out_dir=out)
    if report.fatal:
        _fail(report.summary())


data_app = typer.Typer(no_args_is_help=True, help="Data sets: download public ones.")
app.add_typer(data_app, name="data")


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="oxford-pet | tgs-salt (tgs-salt needs the kaggle tool and an API token)"),
    dest: Path = typer.Argument(..., help="folder to create; pass it to --data afterwards"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="keep the downloaded archives here"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Download a public data set (SHA-256 checked, resumable) and unpack it into DEST."""
    from unetlab.data.download import download_dataset

    download_dataset(name, dest, cache_dir=cache_dir, progress=_progress(no_progress))


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: training throughput, the model zoo, prediction of "
                        "large images.")
app.add_typer(bench_app, name="bench")


@bench_app.command("train")
def bench_train_command(
    data: Optional[Path] = typer.Option(None, "--data", help="data folder in the config's data.format for the full "
                                        "pipeline and the naive loop (default: synthetic TGS-like images in memory)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config or built-in recipe name for the "
                                          "model (default U-Net-16)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key"),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="input side in pixels (default data.input_size)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="default train.batch_size"),
    steps: int = typer.Option(10, "--steps", min=1, help="timed steps per round"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="alternating rounds per path (median reported)"),
    warmup: int = typer.Option(3, "--warmup", min=1, help="untimed steps per path first"),
    images: int = typer.Option(256, "--images", min=2, help="size of the synthetic data set (without --data)"),
    no_memory: bool = typer.Option(False, "--no-memory", help="skip the peak-memory probes"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result as JSON"),
) -> None:
    """Training images/s and peak memory: default path on synthetic tensors and with the full data pipeline,
    and the naive fp32 NCHW eager loop, side by side in one run."""
    from unetlab.bench import bench_train
    from unetlab.config import load_config

    bench_train(load_config(config, set_), size=size, batch_size=batch_size, steps=steps, rounds=rounds,
                warmup=warmup, out=out, data=data, images=images, memory=not no_memory)


@bench_app.command("predict")
def bench_predict_command(
    sizes: List[int] = typer.Option([4096], "--size", min=16, help="side of the square grey section (repeat for "
                                    "several: each runs in a fresh process)"),
    run: Optional[Path] = typer.Option(None, "--run", help="a trained run folder (default: --config's model with "
                                       "random weights)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config or built-in recipe of the random-weight "
                                          "model (default tgs-salt: U-Net-16)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key"),
    tile: Optional[int] = typer.Option(None, "--tile", help="default: the config's eval.tile"),
    tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", help="default: the config's eval.tile_overlap"),
    tta: TtaOption = None,
    out: Optional[Path] = typer.Option(None, "--out", help="write the result as JSON"),
) -> None:
    """Seconds and peak memory (RSS) of predicting one large grey section per size, tiled as `predict` does."""
    from unetlab.bench import bench_predict
    from unetlab.config import load_config

    if run is not None and (config is not None or set_):
        raise ConfigError("--run predicts with the run's own config; drop --config and --set")
    cfg = None if run is not None else load_config(config or "tgs-salt", set_)
    bench_predict(tuple(sizes), config=cfg, run=run, tile=tile, overlap=tile_overlap, tta=_value(tta), out=out)


@bench_app.command("models")
def bench_models_command(
    sizes: List[int] = typer.Option([128, 256], "--size", min=16, help="input side(s) in pixels"),
    model: List[str] = typer.Option([], "--model", help="only these registered models (named variants included)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    steps: int = typer.Option(3, "--steps", min=1, help="timed steps per measurement (median reported)"),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="stop timing a model after this long"),
    skip_gflops: float = typer.Option(150.0, "--skip-gflops", help="list but do not time costlier models"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the rows as JSON"),
) -> None:
    """Every model: parameters, GFLOPs, receptive field, inference and training images/s."""
    from unetlab.bench import bench_models
    from unetlab.models.registry import list_models

    specs = None
    if model:
        unknown = [m for m in model if m not in list_models()]
        if unknown:
            _fail(f"--model {unknown[0]}: unknown; choose from {', '.join(list_models())}")
        specs = {m: {"name": m} for m in model}
    bench_models(specs, sizes=tuple(sizes), batch_size=batch_size, steps=steps, max_seconds=max_seconds,
                 skip_gflops=skip_gflops, out=out)


@bench_app.command("layers")
def bench_layers_command(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config or built-in recipe of the model and "
                                          "how it trains (default tgs-salt)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key"),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="input side in pixels (default data.input_size)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="default train.batch_size"),
    setting: List[str] = typer.Option([], "--setting", help="precision and layout to time every layer in, repeat "
                                      "for several: bf16-cl, bf16-nchw, fp32-cl, fp32-nchw (default: the config's)"),
    min_seconds: float = typer.Option(0.2, "--min-seconds", min=0.001, help="time each pass of a layer for at "
                                      "least this long per round (best of 3 rounds)"),
    steps: int = typer.Option(6, "--steps", min=2, help="training steps timed by phase (half as many profiled)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result as JSON"),
) -> None:
    """Where a training step's time goes: every convolution per pass (forward, backward to input, backward to
    weights) in GFLOP/s against bf16 and fp32 matmul peaks measured on the spot, per level, and the step's
    phases and operator kinds."""
    from unetlab.bench_layers import bench_layers
    from unetlab.config import load_config

    bench_layers(load_config(config or "tgs-salt", set_), size=size, batch_size=batch_size, settings=setting or None,
                 min_seconds=min_seconds, steps=steps, out=out)


@app.command()
def study(
    name: str = typer.Argument(..., metavar="STUDY", help="a built-in study (q51-downsampling, q52-skips, q53-fcn, "
                               "q54-threshold, phases, stem-s2d) or a study YAML file"),
    data: Optional[Path] = typer.Option(None, "--data", help="data folder of the cells (default: the base "
                                        "config's data.root)"),
    out: Optional[Path] = typer.Option(None, "--out", help="study folder (default studies/<name>)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage the workers share, e.g. "
                                          "postgresql+psycopg://user@host/db (default sqlite:///OUT/study.db)"),
    status: bool = typer.Option(False, "--status", help="show the cells done / running / left, then exit"),
    report: bool = typer.Option(False, "--report", help="rebuild OUT/report/ from the finished cells, then exit"),
    max_cells: Optional[int] = typer.Option(None, "--max-cells", min=1, help="stop after running this many cells"),
    heartbeat: Optional[int] = typer.Option(None, "--heartbeat", min=1, help="seconds between a worker's "
                                            "heartbeats (default 20); a cell whose worker misses 6 is taken over"),
    no_sharing: bool = typer.Option(False, "--no-sharing", help="train every cell here, even one that another "
                                    "study in the same parent folder finished with the same config, seed and split"),
) -> None:
    """Run a study: every variant x seed is a cell (a run folder), trained, then scored on one shared split.

    Start it several times (or on several machines: one --storage, a shared --out): each cell runs once.
    """
    from unetlab.api import load_study, run_study, study_status
    from unetlab.studies import build_study_report

    if status and report:
        _fail("--status and --report: give one of them")
    spec = load_study(name)
    folder = out if out is not None else Path("studies") / spec.name
    if status:
        cells = study_status(spec, folder, storage)
        total = sum(len(labels) for labels in cells.values())
        typer.echo(f"study {spec.name}: {total} cells ({len(spec.variants)} variants x {len(spec.seeds)} seeds) "
                   f"in {folder}")
        for key, labels in cells.items():
            typer.echo(f"{key:<8} {len(labels):>3}/{total}" + (f": {', '.join(labels)}" if labels else ""))
        return
    if report:
        typer.echo(f"wrote {build_study_report(spec, folder)}")
        return
    extra = {"heartbeat_s": heartbeat} if heartbeat is not None else {}
    run_study(spec, folder, data_root=data, storage=storage, log=typer.echo, max_cells=max_cells,
              share=not no_sharing, **extra)


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        height, width = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        height, width = 0, 0
    if height < 1 or width < 1:
        _fail(f"--size {text}: expected HxW in pixels, e.g. 128x128 or 101")
    return height, width


@app.command()
def models(
    size: str = typer.Option("128x128", "--size", help="input size HxW for GFLOPs and receptive field"),
    in_channels: int = typer.Option(1, "--in-channels", min=1),
    base_only: bool = typer.Option(False, "--base-only", help="only the base architectures, not their named "
                                   "variants (unet-add, fcn-small, ...)"),
    variants: bool = typer.Option(False, "--variants", hidden=True, help="no effect: variants are listed by default"),
) -> None:
    """Every registered model, named variants included: parameters, GFLOPs per image at --size, receptive field."""
    from unetlab.models.registry import list_models
    from unetlab.models.summary import model_table, print_model_table

    height, width = _parse_size(size)
    names = {name: {"name": name} for name in list_models(variants=not base_only)}
    print_model_table(model_table(names, in_channels=in_channels, size=(height, width), rf_max_size=256))


@app.command()
def export(
    run: Path = typer.Argument(..., help="run folder (or a checkpoint file)"),
    format_: ExportFormat = typer.Option(ExportFormat.onnx, "--format", case_sensitive=False, help="export format"),
    out: Optional[Path] = typer.Option(None, "--out", help="output file (default RUN/export/model.<ext>)"),
    which: WhichOption = Which.best,
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)"),
) -> None:
    """Export the model (dynamic batch and size) and check it against PyTorch on the spot."""
    from unetlab.export import export_run

    export_run(run, format=format_.value, out=out, which=which.value, opset=opset)


@app.command()
def serve(
    run: Path = typer.Argument(..., help="run folder (or a checkpoint file)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 = every interface: only "
                             "on a network you trust, there is no authentication)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port"),
    which: WhichOption = Which.best,
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", min=0.001, help="refuse uploads larger "
                                                  "than this, 413 (default 32)"),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="refuse images of more pixels than "
                                             "this, decompression bombs included, 413 (default 4096 x 4096)"),
) -> None:
    """Serve a run: a web page at http://HOST:PORT/ and a JSON API (POST /predict, GET /model, /docs).

    Upload PNG, JPEG or TIFF; get the mask (PNG) or the probabilities (docs/serve.md). Needs the serve extra."""
    try:
        from unetlab.serve.app import serve as serve_run
    except ImportError as exc:
        raise UnetlabError(f"unetlab serve needs {exc.name or 'fastapi'}: pip install 'unetlab[serve]'") from None

    serve_run(run, host=host, port=port, which=which.value, max_pixels=max_pixels,
              max_upload_bytes=None if max_upload_mb is None else int(max_upload_mb * 1024 * 1024))


@app.command()
def tune(
    config: Path = typer.Argument(..., help="YAML config with a tune: section, or a built-in recipe; with --report "
                                  "also a tune folder (one holding tune.db)"),
    data: Optional[Path] = typer.Option(None, "--data", help="data folder (default: the config's data.root)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for tune.db, trials/, best.yaml and trials.csv "
                                       "(default tune/<config name>)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="SQLAlchemy URL that workers share, e.g. "
                                          "postgresql+psycopg://user@host/db (default sqlite:///OUT/tune.db)"),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="default: the config's name"),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="finished trials of the study, all workers "
                                         "together (default: tune.trials)"),
    set_: List[str] = typer.Option([], "--set", help="override a config key, e.g. --set tune.trials=40"),
    report: bool = typer.Option(False, "--report", help="train nothing: write best.yaml, trials.csv and "
                                "figures/*.png (history, importances, slices) of the study"),
) -> None:
    """Search hyper-parameters with Optuna over the config's tune.space; every trial is a run folder.

    More workers: run the same command (same --out, or same --storage) in other processes or on other machines.
    """
    from unetlab.api import tune as api_tune, tune_report
    from unetlab.config import load_config

    if report and config.is_dir():
        tune_report(config, storage=storage, study_name=study_name)
        return
    cfg = load_config(config, set_)
    folder = out if out is not None else Path("tune") / Path(config).stem
    if report:
        tune_report(folder, storage=storage, study_name=study_name or cfg.name)
        return
    api_tune(cfg, data, folder, storage=storage, study_name=study_name, trials=trials)


def main() -> None:
    try:
        app()
    except UnetlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
