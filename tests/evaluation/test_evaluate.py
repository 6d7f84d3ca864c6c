import json

import numpy as np
import pytest
import torch

from unetlab.data.formats.tgs import load_tgs
from unetlab.data.splits import load_split
from unetlab.errors import UnetlabError
from unetlab.evaluation import evaluate
from unetlab.inference.predictor import Predictor
from unetlab.metrics import BinarySegmentationMetrics


def test_evaluate_matches_an_independent_scoring(tiny_run, tgs_dir):
    result = evaluate(tiny_run, tgs_dir, threshold=0.4, tta="none", log=lambda _: None)
    data = load_tgs(tgs_dir)
    _, val = load_split(tiny_run / "split.json", data.ids)
    assert result["split"] == "val" and result["images"] == len(val)
    probs = Predictor.load(tiny_run).predict_proba(list(data.images[val]), tta="none")
    reference = BinarySegmentationMetrics()
    reference.update(torch.from_numpy(np.stack(probs)), torch.from_numpy(data.masks[val]), threshold=0.4)
    for key, value in reference.compute().items():
        assert result["metrics"][key] == pytest.approx(value), key
    saved = json.loads((tiny_run / "evaluation" / "best-val-t0.4.json").read_text())
    assert saved["threshold"] == 0.4
    report = (tiny_run / "report.md").read_text()
    assert "tgs_map" in report and "unetlab evaluate" in report
    assert (tiny_run / "figures" / "threshold-best-val-t0.4.png").is_file()


def test_evaluate_splits_and_last_checkpoint(tiny_run, tgs_dir, tgs_info):
    result = evaluate(tiny_run, tgs_dir, split="all", which="last", log=lambda _: None)
    assert result["images"] == tgs_info["n"] and result["epoch"] == 2
    train = evaluate(tiny_run, tgs_dir, split="train", log=lambda _: None)
    assert train["images"] == len(json.loads((tiny_run / "split.json").read_text())["train"])
    assert (tiny_run / "evaluation" / "last-all.json").is_file()


def test_evaluate_on_other_data_uses_all_images(tiny_run, tmp_path):
    from unetlab.data.synthetic import write_tgs_dataset

    other = write_tgs_dataset(tmp_path / "other", n=6, seed=99)
    result = evaluate(tiny_run, other, log=lambda _: None)
    assert result["split"] == "all" and result["images"] == 6
    with pytest.raises(UnetlabError, match="not in the data"):
        evaluate(tiny_run, other, split="val", log=lambda _: None)


def test_min_area_sweep_and_override(tiny_run, tgs_dir):
    result = evaluate(tiny_run, tgs_dir, tta="none", log=lambda _: None)
    sweep = result["min_area_sweep"]
    assert result["min_area"] == 0 and sweep["min_area"][0] == 0
    assert sweep["tgs_map"][0] == pytest.approx(result["metrics"]["tgs_map"])
    assert result["best_min_area_on_this_set"] in sweep["min_area"]
    # Scoring at a min area reproduces that row of the sweep and gets its own result file.
    area = int(sweep["min_area"][3])
    ruled = evaluate(tiny_run, tgs_dir, tta="none", min_area=area, log=lambda _: None)
    assert ruled["metrics"]["tgs_map"] == pytest.approx(sweep["tgs_map"][3])
    assert ruled["metrics"]["recall"] == pytest.approx(sweep["recall"][3])
    assert (tiny_run / "evaluation" / f"best-val-a{area}.json").is_file()
    assert f"| {area} |" in (tiny_run / "report.md").read_text()
    with pytest.raises(UnetlabError, match="--min-area"):
        evaluate(tiny_run, tgs_dir, min_area=-3, log=lambda _: None)
