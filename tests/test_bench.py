"""`unetlab bench train`: the three paths on a tiny model, with synthetic data and with --data.

One step of one round each: these check what is measured and reported, not how fast it is."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from run_fixtures import run_cli

from unetlab.bench import NAIVE, PATH_NAMES, PIPELINE, SYNTHETIC, NaiveDataset, bench_train
from unetlab.config import load_config

TINY_BENCH = ["model.base_width=4", "model.depth=2"]
KEYS = {"date", "machine", "device", "model", "input", "loss", "steps_per_round", "rounds", "images_per_s", "samples",
        "speedup", "speedup_full_pipeline", "ratio_to_naive", "peak_memory_mb", "peak_memory_method", "optimizer",
        "parameters", "batch_size", "size", "warmup_steps", "data", "paths"}


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _check_result(result: dict, memory: bool = True) -> None:
    assert KEYS <= set(result)
    assert set(result["images_per_s"]) == set(PATH_NAMES) == set(result["samples"]) == set(result["paths"])
    assert all(_positive(result["images_per_s"][name]) for name in PATH_NAMES)
    assert set(result["ratio_to_naive"]) == {SYNTHETIC, PIPELINE}
    assert result["speedup"] == pytest.approx(result["images_per_s"][SYNTHETIC] / result["images_per_s"][NAIVE])
    assert result["speedup_full_pipeline"] == pytest.approx(result["ratio_to_naive"][PIPELINE])
    assert _positive(result["speedup"]) and _positive(result["speedup_full_pipeline"])
    if memory:
        assert all(_positive(result["peak_memory_mb"][name]) for name in PATH_NAMES), result["peak_memory_mb"]
        assert "minus" in result["peak_memory_method"]
    json.dumps(result)  # what --out writes


def test_bench_train_three_paths_on_synthetic_data():
    """All three paths and their memory probes (each a fresh Python process fed the data set through a file)."""
    lines: list[str] = []
    result = bench_train(load_config(None, TINY_BENCH), size=32, batch_size=2, steps=1, rounds=1, warmup=1,
                         images=4, log=lines.append)
    _check_result(result)
    assert result["input"] == "2x1x32x32" and "synthetic" in result["data"]
    # the naive loop really runs fp32 NCHW without autocast; the default paths bf16 autocast + channels_last
    naive = result["paths"][NAIVE]
    assert naive["precision"] == "fp32" and naive["memory_format"] == "NCHW"
    assert naive["observed"] == {"weights_dtype": "float32", "weights_memory_format": "NCHW", "input_dtype": "float32",
                                 "compute_dtype": "float32", "autocast": False, "activation_memory_format": "NCHW"}
    for name in (SYNTHETIC, PIPELINE):
        observed = result["paths"][name]["observed"]
        assert observed["compute_dtype"] == "bfloat16" and observed["autocast"] is True
        assert observed["weights_memory_format"] == observed["activation_memory_format"] == "channels_last"
    text = "\n".join(lines)
    assert all(name in text for name in PATH_NAMES) and "speed-up" in text and "peak MB" in text


def test_bench_train_cli_with_data(tgs_dir, tmp_path, capsys):
    """--data read as the config says, padded 101 -> 104 like the trainer; no memory probes, to stay fast."""
    out = tmp_path / "bench.json"
    code, text, err = run_cli(["bench", "train", "--data", str(tgs_dir), "--size", "104", "--batch-size", "2",
                               "--steps", "1", "--rounds", "1", "--warmup", "1",
                               *[arg for item in TINY_BENCH for arg in ("--set", item)],
                               "--set", "train.precision=fp32", "--set", "train.channels_last=false",
                               "--no-memory", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    _check_result(result, memory=False)  # the probes (and their data hand-over) are checked above
    assert result["peak_memory_mb"] == {name: None for name in PATH_NAMES} and result["peak_memory_method"] is None
    assert str(tgs_dir) in result["data"] and "16 images 101x101" in result["data"]
    assert result["input"] == "2x1x104x104"
    # with fp32 NCHW configured, the default paths are fp32 NCHW too: the config decides them, not the bench
    assert result["paths"][PIPELINE]["observed"]["compute_dtype"] == "float32"
    assert result["paths"][PIPELINE]["memory_format"] == "NCHW"
    assert "fp32 NCHW eager (naive)" in text and "speed-up" in text


def test_bench_train_data_errors(tgs_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(["bench", "train", "--data", str(missing), "--no-memory"], capsys)
    assert code == 2 and err.startswith("error: ") and str(missing) in err and "Traceback" not in err
    # 101x101 images padded cannot become 64x64
    code, _, err = run_cli(["bench", "train", "--data", str(tgs_dir), "--size", "64", "--batch-size", "2",
                            "--no-memory"], capsys)
    assert code == 2 and "data.sizing=resize" in err
    code, _, err = run_cli(["bench", "train", "--data", str(tgs_dir), "--size", "104", "--batch-size", "64",
                            "--no-memory"], capsys)
    assert code == 2 and "fewer than the batch size" in err


def test_naive_dataset_returns_float32_pairs_and_flips():
    images = np.arange(2 * 1 * 2 * 3, dtype=np.uint8).reshape(2, 1, 2, 3)
    masks = np.zeros((2, 2, 3), dtype=np.uint8)
    masks[:, :, 0] = 1
    dataset = NaiveDataset(images, masks, None, [0.0], [1.0], seed=0)
    seen = set()
    for _ in range(20):
        image, mask = dataset[0]
        assert image.dtype == mask.dtype == torch.float32
        assert image.shape == (1, 2, 3) and mask.shape == (1, 2, 3)
        flipped = bool(mask[0, 0, 2] == 1)
        expected = images[0].astype(np.float32) / 255.0
        np.testing.assert_allclose(image.numpy(), expected[..., ::-1] if flipped else expected)
        seen.add(flipped)
    assert seen == {True, False}


def test_bench_models_times_a_named_variant():
    """`bench models` takes every registered name, U-Net variants included, with options on top."""
    from unetlab.bench import bench_models

    rows = bench_models({"unet-noskip": {"name": "unet-noskip", "base_width": 4, "depth": 2}}, sizes=(32,),
                        batch_size=2, steps=1, warmup=0, device="cpu", log=lambda line: None)
    assert [row["model"] for row in rows] == ["unet-noskip"]
    assert rows[0]["params"] > 0 and rows[0]["train_images_per_s"] > 0


def test_bench_predict_measures_each_size_in_its_own_process(tmp_path):
    """Two tiny sections through a tiny U-Net in tiles: timing and memory of each, and the JSON written."""
    from unetlab.bench import bench_predict

    lines: list[str] = []
    out = tmp_path / "predict.json"
    result = bench_predict((96, 160), config=load_config(None, TINY_BENCH), tile=64, overlap=16, out=out,
                           log=lines.append)
    assert json.loads(out.read_text()) == result
    assert [row["size"] for row in result["rows"]] == [96, 160] and len(lines) == 2
    for row, side in zip(result["rows"], (96, 160)):
        assert _positive(row["seconds"]) and row["tiled"] and row["tile_side"] == 64 and row["tiles"] >= 4
        assert row["image_mb"] == pytest.approx(side * side / 2**20)
        assert row["output_mb"] == pytest.approx(4 * side * side / 2**20)  # float32 probabilities
        assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0 and row["method"] in ("VmHWM", "ru_maxrss")
        assert row["rise_bytes_per_pixel"] == pytest.approx(row["rise_mb"] * 2**20 / side**2)
    assert result["model"]["base_width"] == 4 and "VmHWM" in result["memory_method"]


def test_bench_predict_cli_refuses_run_with_config(tmp_path, capsys):
    from run_fixtures import assert_one_line_error

    code, _, err = run_cli(["bench", "predict", "--run", str(tmp_path), "--config", "tgs-salt"], capsys)
    assert_one_line_error(code, err, "--run")
