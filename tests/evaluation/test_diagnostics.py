"""The evaluation's diagnostics: worst images, coverage bins, per-class table, and the figures evaluate writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from run_fixtures import multiclass_config
from unetlab.errors import UnetlabError
from unetlab.evaluation import evaluate
from unetlab.evaluation.diagnostics import (coverage_bins, image_coverage_bins, image_multiclass_scores,
                                            per_class_table, report_section, worst_binary, worst_multiclass)
from unetlab.evaluation.evaluate import binary_per_image
from unetlab.metrics import BinarySegmentationMetrics, multiclass_confusion
from unetlab.viz import ERROR_COLORS, LABEL_ERROR_COLORS, error_map


def _mask(pixels: int, start: int = 0) -> np.ndarray:
    """A 10x10 mask with `pixels` salt pixels, row-major from `start`."""
    flat = np.zeros(100, bool)
    flat[start : start + pixels] = True
    return flat.reshape(10, 10)


# (truth, prediction, valid) on 10x10 images; coverage bin, TGS score and IoU worked out by hand.
CASES = {
    "empty-ok": (_mask(0), _mask(0), None),               # empty, TGS 1
    "empty-false": (_mask(0), _mask(3), None),            # empty, TGS 0, IoU 0
    "small-ok": (_mask(5), _mask(5), None),               # 5 %: small, TGS 1
    "small-half": (_mask(8), _mask(4), None),             # small, IoU 4/8 = 0.5 is above no threshold: TGS 0
    "large-most": (_mask(40), _mask(30), None),           # large, IoU 0.75 > 0.50..0.70: TGS 0.5
    "large-missed": (_mask(30), _mask(0), None),          # large, TGS 0, IoU 0
    "small-edge": (_mask(10), _mask(20), None),           # exactly 10 %: small; IoU 10/20: TGS 0
    "large-ignored": (_mask(10), _mask(10), _mask(50, 50) | _mask(10)),  # 10 of 60 labelled pixels: large
}
BINS = ["empty", "empty", "small", "small", "large", "large", "small", "large"]


def _per_image(names: list[str]) -> tuple[dict, list[int]]:
    metrics = BinarySegmentationMetrics()
    for name in names:
        truth, pred, valid = CASES[name]
        metrics.update(torch.from_numpy(pred[None]), torch.from_numpy(truth[None]),
                       valid=None if valid is None else torch.from_numpy(valid[None]))
    return binary_per_image(metrics, names), list(range(len(names)))


def _reference(names: list[str]) -> dict[str, float]:
    """BinarySegmentationMetrics run on the masks of these images alone."""
    metrics = BinarySegmentationMetrics()
    for name in names:
        truth, pred, valid = CASES[name]
        metrics.update(torch.from_numpy(pred[None]), torch.from_numpy(truth[None]),
                       valid=None if valid is None else torch.from_numpy(valid[None]))
    return metrics.compute()


def test_worst_images_are_ranked_by_tgs_then_iou_then_position():
    per_image, _ = _per_image(list(CASES))
    assert per_image["tgs"] == [1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0]
    # TGS 0 first: IoU 0 (empty-false, large-missed) before IoU 0.5 (small-half, small-edge); then TGS 0.5
    assert worst_binary(per_image, 5) == [1, 5, 3, 6, 4]
    assert worst_binary(per_image, 100) == [1, 5, 3, 6, 4, 0, 2, 7]
    assert worst_binary(per_image, 0) == []


def test_coverage_bins_match_the_metrics_of_each_bin_alone():
    names = list(CASES)
    per_image, _ = _per_image(names)
    assert image_coverage_bins(per_image) == BINS
    rows = {row["bin"]: row for row in coverage_bins(per_image)}
    assert list(rows) == ["empty", "small", "large"]
    for name, row in rows.items():
        members = [n for n, b in zip(names, BINS) if b == name]
        assert row["images"] == len(members)
        reference = _reference(members)
        for key in ("tgs_map", "iou", "precision", "recall"):
            assert row[key] == reference[key], (name, key)
    assert rows["empty"]["tgs_map"] == 0.5 and rows["empty"]["precision"] == 0.0  # 3 false pixels, no salt


def test_a_bin_without_images_has_no_values_and_shows_a_dash():
    per_image, _ = _per_image(["empty-ok", "small-ok"])
    rows = coverage_bins(per_image)
    assert rows[2] == {"bin": "large", "coverage": "(10%, 100%]", "images": 0, "tgs_map": None, "iou": None,
                       "precision": None, "recall": None}
    json.dumps(rows, allow_nan=False)  # never a NaN in the JSON
    result = {"checkpoint": "best", "split": "val", "images": 2, "threshold": 0.5, "tta": "none", "coverage_bins": rows,
              "worst_images": {"k": 0, "ranked_by": "x", "ids": [], "figure": None}}
    lines = report_section(result)
    assert "| large | (10%, 100%] | 0 | - | - | - | - |" in lines
    assert lines[0] == "## best checkpoint on val (2 images; threshold 0.5, min area 0, min component 0, TTA none)"
    assert not any("worst" in line.lower() for line in lines)  # no gallery, no link
    assert report_section({"checkpoint": "best", "split": "val", "images": 2}) == []  # an older JSON


def test_per_class_table_against_a_hand_computed_confusion_matrix():
    # pixels: truth / prediction; the last pixel is ignored (its prediction 2 counts nowhere); class 3 is absent
    truth = torch.tensor([[[0, 0, 0, 1, 1, 2, 2, 1]]])  # (N, H, W) = (1, 1, 8)
    pred = torch.tensor([[[0, 0, 1, 1, 1, 1, 0, 2]]])
    valid = torch.tensor([[[True] * 7 + [False]]])
    confusion = multiclass_confusion(pred, truth, 4, valid=valid)
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    rows = per_class_table(confusion.numpy(), ["sky", "road", "car", "sign"])
    expected = [  # class, IoU, precision, recall, pixel share
        ("sky", 2 / 4, 2 / 3, 2 / 3, 3 / 7),
        ("road", 2 / 4, 2 / 4, 1.0, 2 / 7),
        ("car", 0.0, None, 0.0, 2 / 7),  # never predicted: precision undefined
        ("sign", None, None, None, 0.0),  # in neither truth nor prediction
    ]
    for row, (name, iou, precision, recall, share) in zip(rows, expected):
        assert row["class"] == name
        for key, value in (("iou", iou), ("precision", precision), ("recall", recall), ("pixel_share", share)):
            assert row[key] == (None if value is None else pytest.approx(value, abs=1e-12)), (name, key)
    assert [r["truth_pixels"] for r in rows] == [3, 2, 2, 0] and [r["predicted_pixels"] for r in rows] == [3, 4, 0, 0]
    lines = report_section({"checkpoint": "best", "split": "val", "images": 1, "task": "multiclass", "tta": "flip",
                            "per_class": rows})
    assert "| car | 0.0000 | - | 0.0000 | 28.6% |" in lines and "| sign | - | - | - | 0.0% |" in lines


def test_worst_multiclass_images_by_miou_then_pixel_accuracy():
    confusions = [
        [[5, 0, 0], [0, 5, 0], [0, 0, 0]],  # perfect: mIoU 1
        [[3, 0, 0], [0, 0, 1], [0, 0, 0]],  # IoUs 1, 0, 0: mIoU 1/3, accuracy 3/4
        [[1, 1, 0], [1, 1, 0], [0, 0, 0]],  # IoUs 1/3, 1/3: mIoU 1/3, accuracy 1/2
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],  # no labelled pixel: not ranked
        [[1, 1, 0], [0, 0, 0], [0, 0, 0]],  # IoUs 1/2, 0: mIoU 1/4
    ]
    miou, accuracy = image_multiclass_scores(confusions)
    assert miou[1] == miou[2] == pytest.approx(1 / 3) and accuracy[1] > accuracy[2] and np.isnan(miou[3])
    assert worst_multiclass(confusions, 10) == [4, 2, 1, 0]
    assert worst_multiclass(confusions, 2) == [4, 2]


def test_error_map_colours_each_kind_of_pixel():
    truth = np.array([[0, 1, 0, 1, 1]], bool)
    pred = np.array([[0, 1, 1, 0, 0]], bool)
    valid = np.array([[1, 1, 1, 1, 0]], bool)
    kinds = ["true negative", "true positive", "false positive", "false negative", "ignored"]
    assert error_map(truth, pred, valid).tolist() == [[list(ERROR_COLORS[k]) for k in kinds]]
    labels = error_map(np.array([[0, 2, 1]]), np.array([[0, 1, 1]]), np.array([[1, 1, 0]], bool), labels=True)
    assert labels.tolist() == [[list(LABEL_ERROR_COLORS[k]) for k in ("correct", "wrong", "ignored")]]


def test_evaluate_writes_the_gallery_bins_and_report(tiny_run, tgs_dir, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))  # tiny_run is shared: evaluate a copy
    result = evaluate(run, tgs_dir, split="all", tta="none", worst=3, log=lambda _: None)
    saved = json.loads((run / "evaluation" / "best-all.json").read_text())
    assert saved["coverage_bins"] == result["coverage_bins"] == coverage_bins(saved["per_image"])
    assert sum(row["images"] for row in saved["coverage_bins"]) == 16
    per = saved["per_image"]
    worst = saved["worst_images"]
    assert worst["k"] == 3 and worst["ids"] == [per["ids"][p] for p in worst_binary(per, 3)]
    with Image.open(run / worst["figure"]) as png:
        width, height = png.size
    assert 800 < width < 1100 and 550 < height < 850  # 4 columns, 3 rows and the legend at 100 dpi
    report = (run / "report.md").read_text()
    assert "| bin | coverage | images | TGS metric | IoU | precision | recall |" in report
    assert f"]({worst['figure']})" in report and worst["figure"] == "figures/worst-best-all.png"
    with pytest.raises(UnetlabError, match="--worst -1"):
        evaluate(run, tgs_dir, worst=-1, log=lambda _: None)


def test_multiclass_evaluate_writes_confusion_matrix_and_per_class_table(multiclass_data, tmp_path):
    from unetlab.api import train

    config = multiclass_config("data.input_size=32", "train.epochs=1")
    run = tmp_path / "run"
    train(config, data_root=multiclass_data, run_dir=run, progress=False, evaluate_after=False, log=lambda _: None)
    result = evaluate(run, multiclass_data, split="all", worst=2, log=lambda _: None)
    assert result["per_class"] == per_class_table(result["confusion"], result["class_names"])
    assert result["worst_images"]["ids"] == [result["per_image"]["ids"][p]
                                             for p in worst_multiclass(result["per_image"]["confusion"], 2)]
    for figure in (result["confusion_figure"], result["worst_images"]["figure"]):
        with Image.open(run / figure) as png:
            assert png.size[0] > 300 and png.size[1] > 300
    report = (run / "report.md").read_text()
    assert "| class | IoU | precision | recall | pixel share |" in report
    assert "(figures/confusion-best-all.png)" in report and "(figures/worst-best-all.png)" in report
