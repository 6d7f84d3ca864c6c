"""`unetlab inspect` / `inspect_dataset`: numbers equal the truth, every problem found in one run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from run_fixtures import run_cli
from unetlab.data.inspect import InspectionReport, inspect_dataset
from unetlab.data.io import read_binary_mask, read_grey
from unetlab.errors import DataError


def _truth(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    images = sorted((root / "train" / "images").glob("*.png"))
    ids = [p.stem for p in images]
    stack = np.stack([read_grey(p) for p in images])
    masks = np.stack([read_binary_mask(root / "train" / "masks" / f"{i}.png") for i in ids])
    return ids, stack, masks


def test_tgs_numbers_equal_the_truth(tgs_dir, tgs_info):
    report = inspect_dataset(tgs_dir, console=False)
    assert isinstance(report, InspectionReport)
    n, size = tgs_info["n"], tgs_info["size"]
    ids, images, masks = _truth(tgs_dir)
    assert report.num_images == report.num_masks == report.num_pairs == n
    assert not report.fatal and not report.unmatched_images and not report.orphan_masks
    assert report.image_sizes == {f"{size}x{size}": n}
    assert report.image_modes == {"RGB 8-bit (grey)": n}
    empty = int((~masks.reshape(n, -1).any(axis=1)).sum())
    assert 0 < empty < n
    assert report.empty_masks == empty and report.empty_share == pytest.approx(empty / n)
    # stored values: 16-bit {0, 65535} masks and 8-bit all-zero masks
    assert report.mask_value_sets == {"0,65535": n - empty, "0": empty}
    assert set(report.mask_values) == {0, 65535}
    assert report.mask_values[65535] == int(masks.sum())
    assert report.mask_modes == {"grey 16-bit": n - empty, "grey 8-bit": empty}
    assert report.class_pixels == {0: int((~masks).sum()), 1: int(masks.sum())}
    assert report.class_share[1] == pytest.approx(masks.mean())
    coverage = masks.reshape(n, -1).mean(axis=1)
    assert report.coverage_quantiles["q50"] == pytest.approx(float(np.quantile(coverage, 0.5)))
    assert report.coverage_quantiles["q100"] == pytest.approx(coverage.max())
    assert sum(report.coverage_bins.values()) == n
    pixels = images.astype(np.float64) / 255.0
    assert report.channels == 1 and report.pixels_per_channel == pixels.size
    assert report.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
    assert report.std[0] == pytest.approx(pixels.std(), abs=1e-12)
    warnings = [p.message for p in report.warnings]
    assert any("masks are 0/65535" in m and "binarised with > 0 by the tgs reader" in m
               and "set a mapping" in m for m in warnings), warnings


def test_num_classes_beyond_is_fatal(tgs_dir):
    assert not inspect_dataset(tgs_dir, num_classes=2, console=False).fatal
    report = inspect_dataset(tgs_dir, num_classes=1, console=False)
    assert len(report.fatal) == 1 and "exceed 1 classes" in report.fatal[0].message


def test_tgs_from_train_csv(tgs_copy):
    import shutil

    ids, _, masks = _truth(tgs_copy)
    shutil.rmtree(tgs_copy / "train" / "masks")
    report = inspect_dataset(tgs_copy, console=False)
    assert not report.fatal and report.num_pairs == len(ids)
    assert report.mask_modes == {"train.csv run-length": len(ids)}
    assert report.class_pixels[1] == int(masks.sum())


def test_all_problems_in_one_run(tgs_copy, capsys):
    images, masks = tgs_copy / "train" / "images", tgs_copy / "train" / "masks"
    ids = sorted(p.stem for p in images.glob("*.png"))
    (images / f"{ids[0]}.png").unlink()                                  # orphan mask
    (images / f"{ids[1]}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt image
    data = (masks / f"{ids[2]}.png").read_bytes()
    (masks / f"{ids[2]}.png").write_bytes(data[: len(data) // 2])          # truncated mask
    Image.fromarray(np.zeros((101, 101), np.uint8)).save(images / "nomask.png")  # image without mask
    Image.fromarray(np.zeros((101, 101), np.uint8)).save(images / f"{ids[3]}.jpg")  # duplicate stem
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(images / "small.png")       # other size ...
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "small.png")        # ... with its mask

    report = inspect_dataset(tgs_copy, console=False)
    kinds = {p.kind for p in report.fatal}
    assert {"orphan-mask", "unreadable", "missing-mask", "duplicate", "size"} <= kinds
    assert report.orphan_masks == [str(masks / f"{ids[0]}.png")]
    assert report.unmatched_images == [str(images / "nomask.png")]
    assert report.duplicate_stems == [str(images / f"{ids[3]}.png")]  # a.jpg sorts first and is kept
    assert sorted(report.unreadable) == sorted([str(images / f"{ids[1]}.png"), str(masks / f"{ids[2]}.png")])
    assert any("small.png" in p.message and "64x64" in p.message for p in report.fatal)
    for path in [*report.orphan_masks, *report.unmatched_images, *report.duplicate_stems, *report.unreadable]:
        assert any(Path(path).name in p.message for p in report.fatal), path
    assert all("\n" not in p.message for p in report.problems)
    assert report.num_images == 16 - 1 + 3  # deleted one; added nomask, small and the duplicate .jpg

    code, out, err = run_cli(["inspect", str(tgs_copy)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"error: {len(report.fatal)} fatal problem(s); first: " in lines[0]
    assert "Problems:" in out and "images without mask" in out  # the report is printed before


def test_cli_out_writes_png_and_json(tgs_dir, tmp_path, capsys):
    out_dir = tmp_path / "inspection"
    code, out, err = run_cli(["inspect", str(tgs_dir), "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert err == ""
    assert "empty masks" in out and "Mask values as stored" in out and "65535" in out
    with Image.open(out_dir / "samples.png") as figure:
        assert figure.size[0] > 200 and figure.size[1] > 100
    data = json.loads((out_dir / "inspection.json").read_text())
    assert data["num_images"] == 16 and data["num_fatal"] == 0 and data["num_warnings"] >= 1
    assert data["mask_value_sets"]["0"] > 0 and "65535" in data["mask_values"]
    assert len(data["mean"]) == 1 and data["problems"][0]["severity"] == "warning"


def _make_isbi(root: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    (root / "train" / "image").mkdir(parents=True)
    (root / "train" / "label").mkdir(parents=True)
    label = np.full((8, 8), 255, np.uint8)
    label[3, :] = 0
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "train" / "image" / f"{k}.png")
        Image.fromarray(label).save(root / "train" / "label" / f"{k}.png")
    return label


def test_isbi_format(tmp_path, capsys):
    label = _make_isbi(tmp_path / "isbi")
    report = inspect_dataset(tmp_path / "isbi", format="isbi", console=False)
    assert not report.problems and report.num_pairs == 3
    assert report.class_names == ["membrane", "cell"]
    assert report.class_pixels == {0: 3 * int((label == 0).sum()), 1: 3 * int((label == 255).sum())}
    code, out, err = run_cli(["inspect", str(tmp_path / "isbi"), "--format", "isbi",
                              "--set-option", "foreground=0", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "inspection.json").read_text())
    assert data["options"] == {"foreground": 0} and data["class_names"] == ["cell", "membrane"]
    # a reader error becomes one fatal problem
    (tmp_path / "isbi" / "train" / "label" / "2.png").unlink()
    report = inspect_dataset(tmp_path / "isbi", format="isbi", console=False)
    assert len(report.fatal) == 1 and "2.png" in report.fatal[0].message


def test_folders_255_masks_and_usage_errors(tmp_path):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((6, 6), np.uint8)
    mask[:3] = 255
    for k in range(2):
        Image.fromarray(np.full((6, 6, 3), 40 * k, np.uint8)).save(root / "images" / f"{k}.png")
        Image.fromarray(mask if k else np.zeros_like(mask)).save(root / "masks" / f"{k}.png")
    report = inspect_dataset(root, format="folders", console=False)
    assert len(report.fatal) == 1 and "binary_rule=nonzero" in report.fatal[0].message
    report = inspect_dataset(root, format="folders", options={"binary_rule": "nonzero"}, console=False)
    assert not report.fatal and report.empty_masks == 1 and report.class_pixels == {0: 54, 1: 18}
    assert report.channels == 3 and report.image_modes == {"RGB 8-bit (grey)": 2}
    with pytest.raises(DataError, match="unknown option"):
        inspect_dataset(root, format="folders", options={"nope": 1}, console=False)
    with pytest.raises(DataError, match="unknown data format"):
        inspect_dataset(root, format="voc", console=False)
    with pytest.raises(DataError, match="not found"):
        inspect_dataset(tmp_path / "missing", console=False)


def test_inspect_refuses_what_the_reader_refuses_with_the_same_message(tgs_copy):
    """One check for train and inspect: odd values and JPEG masks are fatal problems, in the reader's words."""
    from unetlab.data.formats.tgs import load_tgs

    masks = sorted((tgs_copy / "train" / "masks").glob("*.png"))
    values = np.zeros((101, 101), np.uint8)
    values[:40], values[60:] = 1, 2
    for path in masks[2:4]:
        Image.fromarray(values).save(path)
    with pytest.raises(DataError) as reader:
        load_tgs(tgs_copy)
    report = inspect_dataset(tgs_copy, console=False)
    refused = [p for p in report.fatal if p.kind == "values"]
    assert len(report.fatal) == 1 and refused[0].message == f"{reader.value} (2 such masks in all)"
    assert not any("every value > 0 foreground" in p.message for p in report.warnings)
    report = inspect_dataset(tgs_copy, options={"binary_rule": "nonzero"}, console=False)
    assert not report.fatal and any("every value > 0 foreground" in p.message for p in report.warnings)
    Image.fromarray(values * 100).save(masks[5], format="JPEG")
    with pytest.raises(DataError) as reader:
        load_tgs(tgs_copy, binary_rule="nonzero")
    report = inspect_dataset(tgs_copy, options={"binary_rule": "nonzero"}, console=False)
    assert [(p.kind, p.message) for p in report.fatal] == [("lossy", str(reader.value))]


def test_inspect_names_the_line_of_a_bad_train_csv_row(tgs_copy):
    import shutil

    shutil.rmtree(tgs_copy / "train" / "masks")
    lines = (tgs_copy / "train.csv").read_text().splitlines()
    sample_id = lines[2].split(",")[0]
    lines[2] = f"{sample_id},1 2 3"
    (tgs_copy / "train.csv").write_text("\n".join(lines) + "\n")
    report = inspect_dataset(tgs_copy, console=False)
    assert [p.kind for p in report.fatal] == ["unreadable"]
    assert report.fatal[0].message.startswith(f"{tgs_copy / 'train.csv'}: line 3 (id '{sample_id}'): "
                                              "run-length string '1 2 3' has an odd number of values (3)")
