"""Every command end to end, and every bad input as one line on stderr with exit code 2."""

import json
import subprocess
import sys

import pytest
from run_fixtures import TINY, assert_choice_refused, assert_one_line_error, run_cli

SET_TINY = [arg for item in TINY for arg in ("--set", item)]




def test_train_evaluate_predict(tgs_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", str(tgs_dir), "--out", str(run), "--no-progress",
                              *SET_TINY, "--set", "train.epochs=1"], capsys)
    assert code == 0, err
    assert "epoch   1" in out and (run / "checkpoints" / "best.pt").is_file()
    code, out, err = run_cli(["evaluate", str(run), "--data", str(tgs_dir), "--threshold", "0.3",
                              "--split", "all", "--which", "last"], capsys)
    assert code == 0, err
    assert "tgs_map" in out
    result = json.loads((run / "evaluation" / "last-all-t0.3.json").read_text())
    assert result["threshold"] == 0.3 and result["command"].startswith("unetlab evaluate")
    images = tgs_dir / "train" / "images"
    code, out, err = run_cli(["predict", str(run), str(images), "--out", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == len(list(images.glob("*.png")))


def test_demo_says_the_data_is_synthetic(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run_cli(["demo", "--out", str(out_dir), "--images", "24", "--minutes", "1", "--no-progress",
                              "--set", "model.base_width=4", "--set", "model.depth=2", "--set", "train.epochs=1",
                              "--set", "train.batch_size=8"], capsys)
    assert code == 0, err
    assert "SYNTHETIC" in out
    assert (out_dir / "synthetic-data" / "SYNTHETIC.txt").is_file()
    assert (out_dir / "run" / "figures" / "predictions-best-val.png").is_file()
    assert (out_dir / "run" / "report.md").is_file()


def test_bench_reports_all_paths(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, text, err = run_cli(["bench", "train", "--size", "32", "--batch-size", "4", "--steps", "1", "--rounds", "1",
                               "--set", "model.base_width=4", "--set", "model.depth=2", "--no-memory",
                               "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert len(result["images_per_s"]) == 3 and result["speedup"] > 0
    assert "speed-up" in text


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "unetlab", "evaluate", "/nonexistent-run", "--data", "/x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: /nonexistent-run")
    assert "Traceback" not in done.stderr
    helped = subprocess.run([sys.executable, "-m", "unetlab", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "predict" in helped.stdout


# ---- bad input: one line naming the file or option, exit code 2


def _train(data, tmp_path, capsys, *extra):
    return run_cli(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress",
                    *SET_TINY, *extra], capsys)


def test_missing_data_folder(tmp_path, capsys):
    code, _, err = _train(tmp_path / "nowhere", tmp_path, capsys)
    assert_one_line_error(code, err, str(tmp_path / "nowhere"), "not found")


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "data" / "train" / "images").mkdir(parents=True)
    code, _, err = _train(tmp_path / "data", tmp_path, capsys)
    assert_one_line_error(code, err, "images", "empty")


def test_mask_without_its_image(tgs_copy, tmp_path, capsys):
    victim = sorted((tgs_copy / "train" / "images").glob("*.png"))[0]
    victim.unlink()
    code, _, err = _train(tgs_copy, tmp_path, capsys)
    assert_one_line_error(code, err, victim.stem, "mask without its image")


def test_corrupt_png(tgs_copy, tmp_path, capsys):
    victim = sorted((tgs_copy / "train" / "images").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:60])
    code, _, err = _train(tgs_copy, tmp_path, capsys)
    assert_one_line_error(code, err, str(victim), "corrupt")


def test_unknown_config_key_and_bad_value(tgs_dir, tmp_path, capsys):
    code, _, err = _train(tgs_dir, tmp_path, capsys, "--set", "train.epoch=3")
    assert_one_line_error(code, err, "train.epoch", "unknown")
    code, _, err = _train(tgs_dir, tmp_path, capsys, "--set", "data.sizing=stretch")
    assert_one_line_error(code, err, "data.sizing")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  widht: 8\n")
    code, _, err = run_cli(["train", "--data", str(tgs_dir), "--config", str(bad)], capsys)
    assert_one_line_error(code, err, str(bad), "model.widht")
    code, _, err = run_cli(["train", "--data", str(tgs_dir), "--config", str(tmp_path / "none.yaml")], capsys)
    assert_one_line_error(code, err, "none.yaml", "not found")


def test_predict_and_evaluate_bad_inputs(tiny_run, tgs_dir, tmp_path, capsys):
    code, _, err = run_cli(["predict", str(tmp_path), str(tgs_dir), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "checkpoints/best.pt")
    code, _, err = run_cli(["predict", str(tiny_run), str(tmp_path / "nothing.png"), "--out", str(tmp_path / "o")],
                           capsys)
    assert_one_line_error(code, err, "nothing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, _, err = run_cli(["predict", str(tiny_run), str(broken), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, str(broken))
    code, _, err = run_cli(["evaluate", str(tiny_run), "--data", str(tgs_dir), "--split", "test"], capsys)
    assert_choice_refused(code, err, "--split", "test", "auto", "val", "train", "all")
    code, _, err = run_cli(["predict", str(tiny_run), str(tgs_dir), "--out", str(tmp_path / "o"), "--tta", "vflip"],
                           capsys)
    assert_choice_refused(code, err, "--tta", "vflip", "none", "hflip")
    code, _, err = run_cli(["evaluate", str(tiny_run), "--data", str(tgs_dir), "--which", "first"], capsys)
    assert_choice_refused(code, err, "--which", "first", "best", "last")
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"nope")
    code, _, err = run_cli(["predict", str(fake), str(tgs_dir), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "fake.pt")


def test_bad_option_values_are_refused_by_the_parser(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--minutes", "-1"], capsys)
    assert code == 2 and "--minutes" in err


def test_models_lists_every_registered_model(capsys):
    from unetlab.models import list_models

    code, out, err = run_cli(["models", "--size", "64x64"], capsys)
    assert code == 0, err
    assert "unet-noskip" in list_models()  # named variants are models of the one name space
    for name in list_models():
        assert name in out
    code, _, err = run_cli(["models", "--size", "64xfoo"], capsys)
    assert_one_line_error(code, err, "--size")


def test_models_base_only_and_the_old_variants_flag(capsys, monkeypatch):
    import unetlab.models.summary as summary
    from unetlab.models import list_models

    asked = []

    def fake_table(names, **kwargs):
        asked.append(list(names))
        return [{"name": n, "params": 1, "gflops": 1.0, "receptive_field": 1, "clipped": False} for n in names]

    monkeypatch.setattr(summary, "model_table", fake_table)
    for args, expected in ((["--base-only"], list_models(variants=False)), (["--variants"], list_models())):
        code, out, err = run_cli(["models", *args], capsys)
        assert code == 0, err
        assert asked.pop() == expected
    assert "unet-add" not in list_models(variants=False) and "unet" in list_models(variants=False)


def test_bench_models_takes_a_variant_name(capsys, monkeypatch):
    import unetlab.bench

    seen = {}
    monkeypatch.setattr(unetlab.bench, "bench_models", lambda specs, **kwargs: seen.update(specs))
    code, _, err = run_cli(["bench", "models", "--model", "unet-add", "--model", "fcn"], capsys)
    assert code == 0, err
    assert seen == {"unet-add": {"name": "unet-add"}, "fcn": {"name": "fcn"}}


def test_bench_models_times_a_chosen_model(tmp_path, capsys):
    out = tmp_path / "models.json"
    code, text, err = run_cli(["bench", "models", "--model", "fcn-small", "--size", "32", "--batch-size", "2",
                               "--steps", "1", "--out", str(out)], capsys)
    assert code == 0, err
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "fcn-small" and row["train_images_per_s"] > 0 and row["receptive_field"] == 9
    code, _, err = run_cli(["bench", "models", "--model", "nope"], capsys)
    assert_one_line_error(code, err, "--model nope")


def test_bench_layers_writes_the_tables(tmp_path, capsys):
    out = tmp_path / "layers.json"
    code, text, err = run_cli(["bench", "layers", "--set", "model.base_width=4", "--set", "model.depth=2",
                               "--size", "32", "--batch-size", "2", "--setting", "fp32-cl", "--min-seconds", "0.001",
                               "--steps", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "peak measured now" in text and "per level" in text and "step phases" in text
    assert json.loads(out.read_text())["input"] == "2x1x32x32"
    code, _, err = run_cli(["bench", "layers", "--setting", "int8-cl"], capsys)
    assert_one_line_error(code, err, "--setting int8-cl")


def test_export_onnx_checks_parity(tiny_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    target = tmp_path / "m.onnx"
    code, out, err = run_cli(["export", str(tiny_run), "--format", "onnx", "--out", str(target)], capsys)
    assert code == 0, err
    assert target.is_file() and "diff" in out
    code, _, err = run_cli(["export", str(tiny_run), "--format", "tflite", "--out", str(tmp_path / "x")], capsys)
    assert_choice_refused(code, err, "--format", "tflite", "onnx", "torchscript")


def test_cli_choices_are_their_owners_choices():
    from typing import get_args

    from unetlab import cli, export
    from unetlab.config import AugmentConfig, EvalConfig
    from unetlab.data.formats.registry import FORMATS

    assert [f.value for f in cli.ExportFormat] == list(export.FORMATS)
    assert [f.value for f in cli.DataFormat] == list(FORMATS)
    assert [t.value for t in cli.Tta] == list(get_args(EvalConfig.model_fields["tta"].annotation))
    assert [p.value for p in cli.Preset] == list(get_args(AugmentConfig.model_fields["preset"].annotation))


def test_configs_lists_the_builtin_recipes(capsys):
    code, out, err = run_cli(["configs"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["case-study", "tgs-salt"]
    assert all(len(line.split()) > 3 for line in lines)  # each with its description


def test_data_download_unknown_name_and_kaggle_missing(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["data", "download", "imagenet", str(tmp_path / "x")], capsys)
    assert_one_line_error(code, err, "imagenet")
    import shutil

    monkeypatch.setattr(shutil, "which", lambda _name: None)
    code, _, err = run_cli(["data", "download", "tgs-salt", str(tmp_path / "tgs")], capsys)
    assert_one_line_error(code, err, "kaggle")


def test_augment_preview_writes_a_grid(tgs_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "aug.png"
    code, text, err = run_cli(["augment-preview", str(tgs_dir), "--out", str(out), "--count", "4"], capsys)
    assert code == 0, err
    assert Image.open(out).size[0] > 100 and "preset seismic" in text
    code, _, err = run_cli(["augment-preview", str(tgs_dir), "--out", str(out), "--preset", "wild"], capsys)
    assert_choice_refused(code, err, "--preset", "wild", "seismic", "photographic", "none")
    code, _, err = run_cli(["augment-preview", str(tgs_dir), "--out", str(out), "--format", "voc"], capsys)
    assert_choice_refused(code, err, "--format", "voc", "tgs", "folders", "oxford-pet", "camvid", "isbi")
