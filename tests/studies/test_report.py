"""`studies/report.py`: a study's report from its finished cells (tiny 2 variants x 2 seeds study)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from run_fixtures import multiclass_config, tiny_config
from unetlab.studies.report import (NO_DIFFERENCE, OPTIMISTIC, build_report, cell_dir, metric_function,
                                    operating_point, paired_bootstrap)

VARIANTS = {"base": [], "wide": ["model.base_width=6"]}
SEEDS = [0, 1]


def _spec(variants=VARIANTS, **extra) -> SimpleNamespace:
    fields = {"name": "tiny", "description": "two widths", "variants": variants, "seeds": SEEDS,
              "baseline": "base", "metric": None, **extra}
    return SimpleNamespace(**fields)


def _train_cell(study: Path, variant: str, seed: int, data: Path) -> None:
    from unetlab.api import train
    from unetlab.evaluation import evaluate

    split = study / "split.json"
    shared = [f"data.split_file={split}"] if split.is_file() else []
    run = cell_dir(study, variant, seed)
    train(tiny_config("train.epochs=2", f"seed={seed}", *VARIANTS[variant], *shared), data_root=data, run_dir=run,
          progress=False, evaluate_after=False, log=lambda _: None)
    if not split.is_file():
        shutil.copyfile(run / "split.json", split)  # the one validation split every cell shares
    evaluate(run, data, split="val", log=lambda _: None)


@pytest.fixture(scope="module")
def study(tgs_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study") / "tiny"
    for variant in VARIANTS:
        for seed in SEEDS:
            _train_cell(root, variant, seed, tgs_dir)
    return root


def _evaluation(study: Path, variant: str, seed: int) -> dict:
    return json.loads((cell_dir(study, variant, seed) / "evaluation" / "best-val.json").read_text())


def test_report_files_and_numbers(study):
    report = build_report(_spec(analysis="threshold"), study)
    for name in ("report.md", "cells.csv", "summary.json", "curves.png", "predictions.png", "threshold.png",
                 "precision-recall.png"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    text = (report / "report.md").read_text()
    assert "4 of 4 cells done" in text and summary["metric"] == "val/tgs_map"
    for variant in VARIANTS:
        for key in ("tgs_map", "iou", "dice", "precision", "recall"):
            values = [_evaluation(study, variant, seed)["metrics"][key] for seed in SEEDS]
            stats = summary["variants"][variant]["metrics"][key]
            assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-15)
            assert stats["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
            assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in text
        epochs = [_evaluation(study, variant, seed)["epoch"] for seed in SEEDS]
        assert summary["variants"][variant]["metrics"]["best_epoch"]["mean"] == np.mean(epochs)
    assert summary["variants"]["wide"]["params"] > summary["variants"]["base"]["params"] > 0
    rows = list(csv.DictReader((report / "cells.csv").open()))
    assert [(r["variant"], int(r["seed"])) for r in rows] == [(v, s) for v in VARIANTS for s in SEEDS]
    assert float(rows[0]["tgs_map"]) == _evaluation(study, "base", 0)["metrics"]["tgs_map"]
    comparison = summary["comparisons"]["wide"]
    observed = np.mean([_evaluation(study, "wide", s)["metrics"]["tgs_map"]
                        - _evaluation(study, "base", s)["metrics"]["tgs_map"] for s in SEEDS])
    assert comparison["difference"] == pytest.approx(observed, abs=1e-12) and comparison["seeds"] == SEEDS
    low, high = comparison["ci95"]
    assert low <= comparison["difference"] <= high and comparison["resamples"] == 2000
    assert comparison["verdict"] in text and "Threshold analysis" in text and OPTIMISTIC in text
    points = summary["threshold_analysis"]["operating_points"]
    assert points["max TGS metric"]["seeds"] == len(SEEDS)
    chosen = [_evaluation(study, "base", s)["best_threshold_on_this_set"] for s in SEEDS]
    assert points["max TGS metric"]["threshold"]["mean"] == pytest.approx(np.mean(chosen))


def test_a_variant_against_a_copy_of_itself(study, tmp_path):
    copy = tmp_path / "same"
    copy.mkdir()
    shutil.copyfile(study / "split.json", copy / "split.json")
    for seed in SEEDS:
        shutil.copytree(cell_dir(study, "base", seed), cell_dir(copy, "base", seed))
        shutil.copytree(cell_dir(study, "base", seed), cell_dir(copy, "same", seed))
    report = build_report(_spec({"base": [], "same": []}), copy)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["comparisons"]["same"]["ci95"] == [0.0, 0.0]
    assert summary["comparisons"]["same"]["difference"] == 0.0
    assert NO_DIFFERENCE in (report / "report.md").read_text()


def test_partial_study_says_how_many_cells_are_done(study, tmp_path):
    partial = Path(shutil.copytree(study, tmp_path / "partial"))
    shutil.rmtree(cell_dir(partial, "wide", 1))
    (cell_dir(partial, "base", 1) / "evaluation" / "best-val.json").unlink()  # trained, not yet evaluated
    shutil.rmtree(partial / "report", ignore_errors=True)
    report = build_report(_spec(), partial)
    text = (report / "report.md").read_text()
    assert "2 of 4 cells done" in text and "wide/seed-1" in text and "base/seed-1" in text
    summary = json.loads((report / "summary.json").read_text())
    assert summary["variants"]["wide"]["done"] == 1 and summary["comparisons"]["wide"]["seeds"] == [0]
    assert len(list(csv.DictReader((report / "cells.csv").open()))) == 2
    empty = build_report(_spec(analysis="threshold"), tmp_path / "empty")
    assert "0 of 4 cells done" in (empty / "report.md").read_text()
    assert (empty / "cells.csv").read_text().strip() == "variant,seed"


def _counts(tp: int, fp: int, fn: int, n: int, rng: np.random.Generator) -> np.ndarray:
    jitter = rng.integers(0, 3, size=(n, 3))
    counts = np.array([tp, fp, fn]) + jitter
    return np.concatenate([counts, 10_000 - counts.sum(1, keepdims=True)], axis=1).astype(np.int64)


@pytest.mark.parametrize("key", ["tgs_map", "iou"])
def test_bootstrap_excludes_zero_when_one_side_wins_every_image(key):
    rng = np.random.default_rng(1)
    worse = [_counts(50, 30, 30, 25, rng) for _ in SEEDS]   # IoU ~0.45 on every image
    better = [_counts(90, 4, 4, 25, rng) for _ in SEEDS]    # IoU ~0.9 on every image
    result = paired_bootstrap(better, worse, metric_function("binary", key))
    low, high = result["ci95"]
    assert 0 < low <= result["difference"] <= high
    same = paired_bootstrap(worse, worse, metric_function("binary", key))
    assert same["ci95"] == [0.0, 0.0] and same["difference"] == 0.0


def test_multiclass_bootstrap_recomputes_miou_from_summed_confusions():
    rng = np.random.default_rng(2)
    confusions = rng.integers(0, 50, size=(6, 3, 3)).astype(np.int64)
    metric = metric_function("multiclass", "miou")
    whole = metric(confusions, np.ones((1, 6)))[0]
    total = confusions.sum(0)
    iou = np.diag(total) / (total.sum(0) + total.sum(1) - np.diag(total))
    assert whole == pytest.approx(iou.mean(), abs=1e-15)
    twice_first = metric(confusions, np.array([[2.0, 0, 0, 0, 0, 0]]))[0]
    single = np.diag(confusions[0]) / (confusions[0].sum(0) + confusions[0].sum(1) - np.diag(confusions[0]))
    assert twice_first == pytest.approx(single.mean(), abs=1e-15)


def test_operating_points_follow_their_criteria():
    sweep = {"threshold": np.array([0.2, 0.4, 0.6, 0.8]), "precision": np.array([0.5, 0.7, 0.96, 0.99]),
             "recall": np.array([0.99, 0.96, 0.8, 0.4]), "dice": np.array([0.6, 0.8, 0.85, 0.5]),
             "iou": np.array([0.4, 0.7, 0.72, 0.3]), "tgs_map": np.array([0.5, 0.6, 0.55, 0.2])}
    assert [operating_point(sweep, c) for c in ("max F1", "max IoU", "max TGS metric")] == [2, 2, 1]
    assert operating_point(sweep, "recall >= 0.95") == 1  # highest precision among recall >= 0.95
    assert operating_point(sweep, "precision >= 0.95") == 2  # highest recall among precision >= 0.95
    assert operating_point({**sweep, "recall": sweep["recall"] * 0.5}, "recall >= 0.95") is None


def test_multiclass_study_reports_miou(multiclass_data, tmp_path):
    from unetlab.api import train
    from unetlab.evaluation import evaluate

    data = multiclass_data
    study = tmp_path / "study"
    variants = {"base": [], "wide": ["model.base_width=6"]}
    for variant, overrides in variants.items():
        split = [f"data.split_file={study / 'split.json'}"] if (study / "split.json").is_file() else []
        run = cell_dir(study, variant, 0)
        config = multiclass_config("data.input_size=32", "train.epochs=1", *overrides, *split)
        train(config, data_root=data, run_dir=run, progress=False, evaluate_after=False, log=lambda _: None)
        if not split:
            shutil.copyfile(run / "split.json", study / "split.json")
        evaluate(run, data, split="val", log=lambda _: None)
    report = build_report(SimpleNamespace(name="mc", description=None, variants=variants, seeds=[0],
                                          baseline="base", metric=None), study)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["metric"] == "val/miou" and (report / "predictions.png").is_file()
    for variant in variants:
        saved = json.loads((cell_dir(study, variant, 0) / "evaluation" / "best-val.json").read_text())
        assert summary["variants"][variant]["metrics"]["miou"]["mean"] == saved["metrics"]["miou"]
    wide = [json.loads((cell_dir(study, v, 0) / "evaluation" / "best-val.json").read_text())["metrics"]["miou"]
            for v in variants]
    assert summary["comparisons"]["wide"]["difference"] == pytest.approx(wide[1] - wide[0], abs=1e-12)
    text = (report / "report.md").read_text()
    assert "2 of 2 cells done" in text and "| base | 1 of 1 | " in text and "mIoU" in text


def test_cells_kept_without_checkpoints_still_report(study, tmp_path):
    kept = Path(shutil.copytree(study, tmp_path / "kept"))
    for checkpoints in kept.glob("cells/*/seed-*/checkpoints"):
        shutil.rmtree(checkpoints)  # as in benchmarks/results/studies: configs, metrics and evaluations only
    shutil.rmtree(kept / "report", ignore_errors=True)
    report = build_report(_spec(), kept)
    text = (report / "report.md").read_text()
    assert "4 of 4 cells done" in text and "no finished cell keeps its checkpoints/best.pt" in text
    assert json.loads((report / "summary.json").read_text())["comparisons"]["wide"]["seeds"] == [0, 1]
