"""The per-image scores of an evaluation JSON add up to its aggregate metrics, exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from run_fixtures import multiclass_config
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


def test_multiclass_per_image_confusions_sum_to_the_metrics(multiclass_data, tmp_path):
    from unetlab.api import train

    config = multiclass_config("data.input_size=32", "train.epochs=1")
    run = tmp_path / "run"
    train(config, data_root=multiclass_data, run_dir=run, progress=False, evaluate_after=False, log=lambda _: None)
    evaluate(run, multiclass_data, log=lambda _: None)
    saved = json.loads((run / "evaluation" / "best-val.json").read_text())
    per = saved["per_image"]
    confusions = np.array(per["confusion"], dtype=np.int64)
    assert confusions.shape == (saved["images"], 3, 3) and len(per["ids"]) == saved["images"]
    assert confusions.sum(axis=0).tolist() == saved["confusion"]
    assert confusions.sum() == saved["images"] * 31 * 32  # labelled pixels only: the top row is ignored
    scores = multiclass_scores(torch.from_numpy(confusions.sum(axis=0)), saved["class_names"])
    for key, value in saved["metrics"].items():
        assert scores[key] == value or (np.isnan(value) and np.isnan(scores[key])), key
