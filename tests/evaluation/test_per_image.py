"""The per-image scores of an evaluation JSON add up to its aggregate metrics, exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from run_fixtures import tiny_config
from unetlab.evaluation import evaluate
from unetlab.evaluation.evaluate import result_json
from unetlab.metrics import micro_scores, multiclass_scores


def test_binary_per_image_counts_sum_to_the_metrics(tiny_run, tgs_dir):
    result = evaluate(tiny_run, tgs_dir, tta="none", log=lambda _: None)
    saved = json.loads((tiny_run / "evaluation" / "best-val.json").read_text())
    per = saved["per_image"]
    val_ids = json.loads((tiny_run / "split.json").read_text())["val"]
    assert sorted(per["ids"]) == sorted(val_ids) and len(per["ids"]) == saved["images"]
    counts = np.stack([per[k] for k in ("tp", "fp", "fn", "tn")], axis=1)
    assert counts.dtype == np.int64 and counts.shape == (saved["images"], 4)
    totals = micro_scores(torch.from_numpy(counts.sum(axis=0)))
    for key, value in totals.items():
        assert saved["metrics"][key] == float(value), key  # exact: same counts, same formula
    tgs = np.array(per["tgs"])
    assert np.all(np.isclose(tgs * 10, np.round(tgs * 10)))  # k / 10 per image
    assert int(np.round(tgs * 10).sum()) / (10 * len(tgs)) == saved["metrics"]["tgs_map"]
    assert tgs.mean() == pytest.approx(saved["metrics"]["tgs_map"], abs=1e-12)
    assert np.mean(per["iou"]) == pytest.approx(saved["metrics"]["mean_image_iou"], abs=1e-12)
    assert result["per_image"] == per


def test_result_json_keeps_per_image_lists_on_one_line():
    result = {"a": 1, "sweep": {"t": [0.1, 0.2]}, "per_image": {"ids": ["x", "y"], "tp": [1, 2]}}
    text = result_json(result)
    assert json.loads(text) == result
    assert '  "tp": [1,2]' in text.splitlines()
    assert json.loads(result_json({"a": [1]})) == {"a": [1]}


@pytest.fixture(scope="module")
def multiclass_dir(tmp_path_factory):
    """8 grey 32x32 images: a bright square is class 1, a dark stripe class 2; an ignored (255) top row."""
    root = tmp_path_factory.mktemp("mc") / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(8):
        mask = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(2, 18, size=2)
        mask[y : y + 10, x : x + 10] = 1
        mask[:, (k % 4) * 6 + 2 : (k % 4) * 6 + 5] = 2
        image = np.full(mask.shape, 120, np.uint8)
        image[mask == 1], image[mask == 2] = 220, 30
        mask[0, :] = 255
        Image.fromarray(image).save(root / "images" / f"img{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{k}.png")
    return root


def test_multiclass_per_image_confusions_sum_to_the_metrics(multiclass_dir, tmp_path):
    from unetlab.api import train

    config = tiny_config("task=multiclass", "model.classes=3", "data.format=folders",
                         "data.options={num_classes: 3, ignore_index: 255}", "data.input_size=32", "data.cache=false",
                         "train.epochs=1", "train.monitor=val/miou", "train.monitor_mode=max")
    run = tmp_path / "run"
    train(config, data_root=multiclass_dir, run_dir=run, progress=False, evaluate_after=False, log=lambda _: None)
    evaluate(run, multiclass_dir, log=lambda _: None)
    saved = json.loads((run / "evaluation" / "best-val.json").read_text())
    per = saved["per_image"]
    confusions = np.array(per["confusion"], dtype=np.int64)
    assert confusions.shape == (saved["images"], 3, 3) and len(per["ids"]) == saved["images"]
    assert confusions.sum(axis=0).tolist() == saved["confusion"]
    assert confusions.sum() == saved["images"] * 31 * 32  # labelled pixels only: the top row is ignored
    scores = multiclass_scores(torch.from_numpy(confusions.sum(axis=0)), saved["class_names"])
    for key, value in saved["metrics"].items():
        assert scores[key] == value or (np.isnan(value) and np.isnan(scores[key])), key
