import json
from pathlib import Path

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


# ---------------------------------------------------------------------------- operating points (--choose, --save)


def _scored_at(run, tgs_dir, threshold, min_area, min_component):
    """The accumulator's metrics on the run's validation images at one decoding (an independent scoring)."""
    data = load_tgs(tgs_dir)
    _, val = load_split(run / "split.json", data.ids)
    probs = Predictor.load(run).predict_proba(list(data.images[val]), tta="none")
    reference = BinarySegmentationMetrics(threshold, min_area, min_component)
    reference.update(torch.from_numpy(np.stack(probs)), torch.from_numpy(data.masks[val]))
    return reference.compute(), len(val)


def test_choose_save_then_evaluate_predict_and_predictor_decode_at_the_saved_point(tiny_run, tgs_dir, tmp_path,
                                                                                  capsys):
    import shutil

    from run_fixtures import run_cli
    from unetlab.data.io import read_binary_mask, read_grey

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))  # --save writes into the run: never the shared one
    criteria = ["max-tgs", "precision@recall>=0.5", "max-fbeta:2"]
    code, out, err = run_cli(["evaluate", str(run), "--data", str(tgs_dir), "--tta", "none",
                              *[a for c in criteria for a in ("--choose", c)]], capsys)
    assert code == 0, err
    result = json.loads((run / "evaluation" / "best-val.json").read_text())
    table = {p["criterion"]: p for p in result["operating_points"]}
    assert list(table) == criteria and "operating points chosen on val" in out
    for point in table.values():  # each chosen point's metrics are the accumulator's there
        assert point["unreachable"] is None
        reference, _ = _scored_at(run, tgs_dir, point["threshold"], point["min_area"], point["min_component"])
        for key in ("precision", "recall", "dice", "iou", "tgs_map"):
            assert point["metrics"][key] == pytest.approx(reference[key], abs=1e-12), (point["criterion"], key)
    for figure in ("precision-recall-best-val.png", "operating-points-best-val.png"):
        assert (run / "figures" / figure).is_file()
    report = (run / "report.md").read_text()
    assert "Precision of salt pixels" in report and "Recall of salt pixels" in report and "| max-fbeta:2 |" in report
    assert not (run / "operating-point.json").exists()  # choosing alone saves nothing

    code, out, err = run_cli(["evaluate", str(run), "--data", str(tgs_dir), "--choose", "max-tgs", "--save"], capsys)
    assert code == 0, err
    saved = json.loads((run / "operating-point.json").read_text())
    chosen = table["max-tgs"]
    assert {k: saved[k] for k in ("threshold", "min_area", "min_component")} == \
        {k: chosen[k] for k in ("threshold", "min_area", "min_component")}
    assert (saved["criterion"], saved["checkpoint"], saved["split"], saved["images"]) == \
        ("max-tgs", "best", "val", result["images"])
    assert saved["data"] == str(tgs_dir.resolve()) and "--save" in saved["command"] and saved["written"]

    predictor = Predictor.load(run)
    decoding = (predictor.threshold, predictor.min_area, predictor.min_component)
    assert decoding == (saved["threshold"], saved["min_area"], saved["min_component"])
    assert predictor.task.new_metrics().min_component == saved["min_component"]
    other = Predictor.load(run, which="last")  # chosen for best.pt: last.pt keeps its own threshold
    assert (other.threshold, other.min_area, other.min_component, other.operating_point) == (0.5, 0, 0, None)
    overridden = Predictor.load(run, threshold=0.3)
    assert (overridden.threshold, overridden.min_area) == (0.3, saved["min_area"])

    plain = evaluate(run, tgs_dir, tta="none", log=lambda _: None)  # a plain evaluate reports the saved point
    assert (plain["threshold"], plain["min_area"], plain["min_component"]) == decoding
    assert plain["operating_point"]["criterion"] == "max-tgs" and plain["chosen_on_these"]
    assert plain["metrics"]["tgs_map"] == pytest.approx(chosen["metrics"]["tgs_map"], abs=1e-12)
    assert "Warning: chosen on these images" in (run / "report.md").read_text()

    image = sorted((tgs_dir / "train" / "images").glob("*.png"))[0]
    code, out, err = run_cli(["predict", str(run), str(image), "--out", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    assert f"threshold {saved['threshold']:g}" in out and "operating point max-tgs" in out
    probs = predictor.predict_proba([read_grey(image)])[0]
    expected = predictor.labels(probs).astype(bool)
    assert np.array_equal(read_binary_mask(tmp_path / "pred" / "masks" / f"{image.stem}.png"), expected)


@pytest.mark.parametrize("args, needle", [
    (["--choose", "precision@recall>=1.5"], "--choose precision@recall>=1.5: R must lie in (0, 1]"),
    (["--choose", "best-f1"], "unknown criterion"),
    (["--choose", "max-f1", "--choose", "max-tgs", "--save"], "give exactly one --choose (got 2)"),
    (["--save"], "give exactly one --choose (got 0)"),
    (["--min-component", "-1"], "--min-component -1: must be 0"),
])
def test_bad_choose_and_save_are_one_line_errors(tiny_run, tgs_dir, capsys, args, needle):
    from run_fixtures import assert_one_line_error, run_cli

    code, _, err = run_cli(["evaluate", str(tiny_run), "--data", str(tgs_dir), *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tiny_run / "operating-point.json").exists()


def test_choose_is_refused_for_a_multiclass_run(tiny_run, tgs_dir, tmp_path):
    import shutil

    from run_fixtures import tiny_config
    from unetlab.models import create_model
    from unetlab.run_folder import RunFolder

    folder = RunFolder(shutil.copytree(tiny_run, tmp_path / "mc"))
    config = tiny_config("task=multiclass", "model.classes=3", "data.format=folders", "data.options={num_classes: 3}")
    payload = folder.load_checkpoint("best")
    payload.update(config=config.to_dict(), class_names=["a", "b", "c"],
                   model_state=create_model(config.model.name, **config.model.options()).state_dict())
    folder.save_checkpoint("best", payload)
    with pytest.raises(UnetlabError, match="--choose applies to binary runs .*this run is multiclass"):
        evaluate(folder.path, tgs_dir, choose=["max-f1"], log=lambda _: None)


def test_figure_row_scores_only_the_pixels_that_count():
    """The predictions figure's label: foreground share and IoU over valid pixels, by hand; the row carries
    the valid mask so the figure greys the ignored ones."""
    from unetlab.data.dataset import ArrayDataset
    from unetlab.evaluation.evaluate import _row

    truth = np.zeros((1, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 foreground pixels
    valid = np.ones((1, 4, 4), bool)
    valid[0, 3, :] = False  # 4 ignored pixels, where the prediction is wrong
    prediction = truth[0].copy()
    prediction[3, :] = True
    prediction[0, 2] = True  # one counted false positive
    data = ArrayDataset(ids=["a"], images=np.zeros((1, 4, 4), np.uint8), masks=truth, valid=valid)
    row = _row(data, 0, prediction, prediction.astype(np.float32), "val")
    assert "foreground 33%" in row["label"] and "IoU 0.80" in row["label"]  # 4 of 12; 4 / (4 + 1)
    assert np.array_equal(row["valid"], valid[0])
    plain = _row(ArrayDataset(ids=["a"], images=np.zeros((1, 4, 4), np.uint8), masks=truth), 0, prediction,
                 prediction.astype(np.float32), "val")
    assert plain["valid"] is None and "IoU 0.44" in plain["label"]  # 4 / 9 with every pixel counted
