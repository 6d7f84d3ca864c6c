"""`task: multiclass` end to end: index masks with an ignore label through train, evaluate and predict."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from run_fixtures import assert_one_line_error, run_cli, tiny_config, write_multiclass_folder
from unetlab.engine.checkpoint import load_checkpoint
from unetlab.engine.trainer import train
from unetlab.errors import ConfigError

CLASSES = 3
IGNORE = 255


@pytest.fixture(scope="module")
def multiclass_dir(tmp_path_factory) -> Path:
    """12 noisy grey 40x48 images: class 1 = bright squares, class 2 = dark stripes, 0 = rest; a 255 top row."""
    return write_multiclass_folder(tmp_path_factory.mktemp("multiclass") / "data", count=12, shape=(40, 48), noise=10)


def _config(*extra: str):
    return tiny_config("task=multiclass", f"model.classes={CLASSES}", "data.format=folders",
                       f"data.options={{num_classes: {CLASSES}, ignore_index: {IGNORE}}}", "data.input_size=48",
                       "data.cache=false", "train.epochs=3", "optim.lr=0.01", "train.monitor=val/miou",
                       "train.monitor_mode=max", *extra)


@pytest.fixture(scope="module")
def multiclass_run(multiclass_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mc-run") / "run"
    train(_config("loss.name=ce_dice", "loss.class_weights=inverse", "train.image_every_epochs=1"),
          data_root=multiclass_dir, run_dir=run, progress=False, log=lambda _: None)
    return run


def test_training_logs_multiclass_metrics_and_saves_class_names(multiclass_run):
    rows = list(csv.DictReader((multiclass_run / "metrics.csv").open()))
    assert len(rows) == 3
    for key in ("val/miou", "val/pixel_accuracy", "val/mean_accuracy", "val/iou/class_0", "val/iou/class_2"):
        assert key in rows[0], key
        assert all(math.isfinite(float(row[key])) for row in rows)
    best = load_checkpoint(multiclass_run / "checkpoints" / "best.pt")
    assert best["class_names"] == ["class_0", "class_1", "class_2"]
    assert best["config"]["task"] == "multiclass"
    last = load_checkpoint(multiclass_run / "checkpoints" / "last.pt")
    assert len(last["loss_class_weights"]) == CLASSES
    split = json.loads((multiclass_run / "split.json").read_text())
    assert "dominant class" in json.dumps(split)


def test_evaluate_and_predict_multiclass(multiclass_run, multiclass_dir, tmp_path, capsys):
    code, out, err = run_cli(["evaluate", str(multiclass_run), "--data", str(multiclass_dir)], capsys)
    assert code == 0, err
    result = json.loads((multiclass_run / "evaluation" / "best-val.json").read_text())
    assert result["task"] == "multiclass" and 0.0 <= result["metrics"]["miou"] <= 1.0
    confusion = np.array(result["confusion"])
    assert confusion.shape == (CLASSES, CLASSES)
    # Ignored pixels count nowhere: the matrix holds exactly the labelled pixels of the validation images.
    assert confusion.sum() == result["images"] * (40 - 1) * 48
    assert "miou" in (multiclass_run / "report.md").read_text()
    assert (multiclass_run / "figures" / "predictions-best-val.png").stat().st_size > 1000

    out_dir = tmp_path / "pred"
    code, out, err = run_cli(["predict", str(multiclass_run), str(multiclass_dir / "images"), "--out", str(out_dir)],
                             capsys)
    assert code == 0, err
    mask = np.asarray(Image.open(out_dir / "masks" / "img00.png"))
    assert mask.shape == (40, 48) and mask.max() < CLASSES
    overlay = np.asarray(Image.open(out_dir / "overlays" / "img00.png"))
    assert overlay.shape == (40, 48, 3)
    header = (out_dir / "predictions.csv").read_text().splitlines()[0]
    assert header == "id,share_class_0,share_class_1,share_class_2"
    code, out, err = run_cli(["predict", str(multiclass_run), str(multiclass_dir / "images"), "--out", str(out_dir),
                              "--min-area", "5"], capsys)
    assert_one_line_error(code, err, "--min-area 5", "multiclass")


def test_multiclass_learns_the_easy_classes(multiclass_dir, tmp_path):
    result = train(_config("train.epochs=12", "model.base_width=8", "train.batch_size=4"),
                   data_root=multiclass_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert result.best_value > 0.6, result.history[-1]


def test_multiclass_config_mistakes_are_named():
    with pytest.raises(ConfigError, match="model.classes"):
        tiny_config("task=multiclass")
    with pytest.raises(ConfigError, match="loss.name"):
        tiny_config("task=multiclass", "model.classes=3", "loss.name=bce")


def test_class_count_must_match_the_data(multiclass_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.classes=3"):
        train(_config("model.classes=4"), data_root=multiclass_dir, run_dir=tmp_path / "r", progress=False,
              log=lambda _: None)


def test_native_size_with_random_crops(multiclass_dir, tmp_path):
    """Large images: train on random crops at native size, validate on whole images."""
    result = train(_config("data.sizing=native", "augment.crop=32", "train.epochs=2"), data_root=multiclass_dir,
                   run_dir=tmp_path / "crop", progress=False, log=lambda _: None)
    assert result.epochs_run == 2
    with pytest.raises(ConfigError, match="augment.crop"):
        train(_config("data.sizing=native", "augment.crop=41"), data_root=multiclass_dir, run_dir=tmp_path / "big",
              progress=False, log=lambda _: None)


def test_random_crop_keeps_image_and_masks_aligned():
    import torch

    from unetlab.data.augment import random_crop

    images = torch.arange(2 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    masks = images.clone()
    valid = images > 50
    generator = torch.Generator().manual_seed(0)
    x, m, v = random_crop(images, masks, valid, 6, generator)
    assert x.shape == (2, 1, 6, 6)
    assert torch.equal(x, m) and torch.equal(v, x > 50)
    for k in range(2):  # each crop is a contiguous window of its own image
        top, left = divmod(int(x[k, 0, 0, 0]) - k * 120, 12)
        assert torch.equal(x[k], images[k, :, top : top + 6, left : left + 6])


def test_a_format_palette_travels_from_the_data_into_checkpoints_and_predictions(multiclass_dir, tmp_path):
    import dataclasses

    from unetlab.data.formats.registry import load_for_config
    from unetlab.inference.predictor import Predictor
    from unetlab.inference.predict import predict

    cfg = _config("train.epochs=1")
    colours = [(0, 0, 200), (200, 0, 0), (0, 200, 0)]
    dataset = dataclasses.replace(load_for_config(cfg, multiclass_dir), palette=colours)
    result = train(cfg, data_root=multiclass_dir, run_dir=tmp_path / "run", dataset=dataset, progress=False,
                   log=lambda _: None)
    assert load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["palette"] == [list(c) for c in colours]
    predictor = Predictor.load(result.run_dir)
    assert predictor.task.palette == colours
    predict(result.run_dir, [multiclass_dir / "images" / "img00.png"], tmp_path / "out", log=lambda _: None)
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "img00.png").convert("RGB")).astype(float)
    labels = np.asarray(Image.open(tmp_path / "out" / "masks" / "img00.png"))
    grey = np.asarray(Image.open(multiclass_dir / "images" / "img00.png")).astype(float)[..., None]
    # Each pixel is the image blended with its class's colour from this palette (not the generic colours).
    expected = grey * 0.55 + np.asarray(colours, float)[labels] * 0.45
    assert np.abs(overlay - expected).max() <= 1.0
