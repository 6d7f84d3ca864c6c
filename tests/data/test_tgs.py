"""Tests for the TGS Salt folder reader: unetlab.data.formats.tgs (load_tgs, list_pairs, read_depths)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetlab.data.dataset import ArrayDataset
from unetlab.data.formats.tgs import list_pairs, load_tgs, read_depths
from unetlab.data.rle import rle_decode
from unetlab.data.synthetic import write_tgs_dataset
from unetlab.errors import DataError

SIDE = 8


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def make_folder(root: Path, ids=("a", "b", "c"), *, train: bool = True, masks: bool = True,
                side: int = SIDE) -> Path:
    """A hand-made TGS-like folder of tiny 8-bit images and {0,255} masks; returns the images' parent."""
    base = root / "train" if train else root
    rng = np.random.default_rng(0)
    for name in ids:
        _save(base / "images" / f"{name}.png", rng.integers(0, 256, (side, side), dtype=np.uint8))
        if masks:
            _save(base / "masks" / f"{name}.png", (rng.random((side, side)) < 0.5).astype(np.uint8) * 255)
    if not ids:
        (base / "images").mkdir(parents=True, exist_ok=True)
        if masks:
            (base / "masks").mkdir(parents=True, exist_ok=True)
    return base


def raises_naming(path: Path | str, *, match: str | None = None):
    """pytest.raises(DataError) whose message contains `path` (and `match`, if given)."""
    pattern = re.escape(str(path)) + (f".*{match}" if match else "")
    return pytest.raises(DataError, match=pattern)


# ----------------------------------------------------------------------------- the synthetic TGS set


@pytest.fixture(scope="module")
def dataset(tgs_dir) -> ArrayDataset:
    return load_tgs(tgs_dir)


def test_load_shapes_and_dtypes(dataset, tgs_dir, tgs_info):
    TGS_N, TGS_SIZE = tgs_info["n"], tgs_info["size"]
    assert isinstance(dataset, ArrayDataset)
    assert len(dataset) == TGS_N
    assert dataset.images.shape == (TGS_N, TGS_SIZE, TGS_SIZE) and dataset.images.dtype == np.uint8
    assert dataset.masks.shape == (TGS_N, TGS_SIZE, TGS_SIZE) and dataset.masks.dtype == bool
    assert dataset.ids == sorted(dataset.ids) and len(set(dataset.ids)) == TGS_N
    assert dataset.root == Path(tgs_dir)


def test_fixture_has_the_real_file_quirks(tgs_dir, dataset):
    """Images are RGB on disk; empty masks 8-bit 'L', non-empty ones 16-bit 'I;16'."""
    modes = {Image.open(p).mode for p in (tgs_dir / "train" / "images").iterdir()}
    assert modes == {"RGB"}
    empty = [i for i, m in zip(dataset.ids, dataset.masks) if not m.any()]
    full = [i for i, m in zip(dataset.ids, dataset.masks) if m.any()]
    assert empty and full, "the fixture should hold both empty and non-empty masks"
    assert {Image.open(tgs_dir / "train" / "masks" / f"{i}.png").mode for i in empty} == {"L"}
    assert {Image.open(tgs_dir / "train" / "masks" / f"{i}.png").mode for i in full} == {"I;16"}


def test_images_equal_the_stored_channel(tgs_dir, dataset):
    for k in (0, len(dataset) - 1):
        rgb = np.asarray(Image.open(tgs_dir / "train" / "images" / f"{dataset.ids[k]}.png"))
        np.testing.assert_array_equal(dataset.images[k], rgb[..., 0])


def test_masks_equal_train_csv_rle(dataset, tgs_rles):
    assert set(tgs_rles) == set(dataset.ids)
    for sample_id, mask in zip(dataset.ids, dataset.masks):
        np.testing.assert_array_equal(mask, rle_decode(tgs_rles[sample_id], mask.shape), err_msg=sample_id)


def test_depths_read(dataset):
    assert set(dataset.depths) == set(dataset.ids)
    assert all(isinstance(z, float) and 50 <= z <= 950 for z in dataset.depths.values())


def test_coverage(dataset):
    cov = dataset.coverage
    assert cov.shape == (len(dataset),)
    np.testing.assert_allclose(cov, dataset.masks.mean(axis=(1, 2)))
    assert (cov == 0).any() and (cov > 0).any()


def test_list_pairs_matches_by_stem(tgs_dir, dataset):
    ids, images, masks = list_pairs(tgs_dir)
    assert ids == dataset.ids
    assert [p.stem for p in images] == ids and [p.stem for p in masks] == ids
    assert all(p.parent == tgs_dir / "train" / "images" for p in images)
    assert all(p.parent == tgs_dir / "train" / "masks" for p in masks)


def test_load_accepts_str_root(tgs_dir, dataset):
    again = load_tgs(str(tgs_dir))
    np.testing.assert_array_equal(again.masks, dataset.masks)


def test_without_quirks(tmp_path):
    root = write_tgs_dataset(tmp_path / "plain", n=4, size=24, seed=3, quirks=False)
    data = load_tgs(root)
    assert data.images.shape == (4, 24, 24)
    rles = {line.split(",")[0]: line.split(",")[1] for line in (root / "train.csv").read_text().splitlines()[1:]}
    for sample_id, mask in zip(data.ids, data.masks):
        np.testing.assert_array_equal(mask, rle_decode(rles[sample_id], (24, 24)))


# ----------------------------------------------------------------------------- hand-made layouts


def test_flat_layout_without_train_folder(tmp_path):
    make_folder(tmp_path, ids=("x1", "x0"), train=False)
    data = load_tgs(tmp_path)
    assert data.ids == ["x0", "x1"]
    assert data.images.shape == (2, SIDE, SIDE)
    assert data.depths == {}  # no depths.csv: no depths


def test_non_square_images(tmp_path):
    base = tmp_path / "train"
    _save(base / "images" / "a.png", np.zeros((6, 10), np.uint8))
    mask = np.zeros((6, 10), np.uint8)
    mask[:, 7:] = 255
    _save(base / "masks" / "a.png", mask)
    data = load_tgs(tmp_path)
    assert data.images.shape == (1, 6, 10)
    assert data.masks[0].sum() == 18 and data.masks[0][:, 7:].all()


def test_mixed_extensions_and_case_are_matched_by_stem(tmp_path):
    base = make_folder(tmp_path, ids=("a",))
    _save(base / "images" / "b.PNG", np.zeros((SIDE, SIDE), np.uint8))
    _save(base / "masks" / "b.tif", np.zeros((SIDE, SIDE), np.uint8))  # written as PNG bytes: decoded by content
    ids, images, masks = list_pairs(tmp_path)
    assert ids == ["a", "b"]
    assert images[1].name == "b.PNG" and masks[1].name == "b.tif"
    assert load_tgs(tmp_path).masks.shape == (2, SIDE, SIDE)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    (base / "images" / ".DS_Store").write_bytes(b"\x00junk")
    (base / "images" / "._a.png").write_bytes(b"\x00junk")  # macOS resource fork
    (base / "images" / "README.txt").write_text("hello")
    (base / "masks" / "Thumbs.db").write_bytes(b"junk")
    (base / "images" / "sub.png").mkdir()  # a folder with an image-like name
    assert list_pairs(tmp_path)[0] == ["a", "b"]
    assert len(load_tgs(tmp_path)) == 2


def test_train_folder_preferred_over_flat(tmp_path):
    make_folder(tmp_path, ids=("t1", "t2"), train=True)
    make_folder(tmp_path, ids=("f1",), train=False)
    assert list_pairs(tmp_path)[0] == ["t1", "t2"]


def test_list_pairs_without_masks_when_not_required(tmp_path):
    make_folder(tmp_path, ids=("a", "b"), masks=False)
    ids, images, masks = list_pairs(tmp_path, require_masks=False)
    assert ids == ["a", "b"] and masks == [None, None]
    assert [p.name for p in images] == ["a.png", "b.png"]


def test_list_pairs_partial_masks_when_not_required(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    (base / "masks" / "b.png").unlink()
    ids, _, masks = list_pairs(tmp_path, require_masks=False)
    assert ids == ["a", "b"] and masks[0].name == "a.png" and masks[1] is None


# ----------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with raises_naming(root, match="not found"):
        load_tgs(root)


def test_root_is_a_file(tmp_path):
    root = tmp_path / "file.png"
    root.write_bytes(b"x")
    with raises_naming(root, match="not a folder"):
        load_tgs(root)


def test_no_images_folder(tmp_path):
    (tmp_path / "train" / "masks").mkdir(parents=True)
    with raises_naming(tmp_path, match="no images/ folder"):
        load_tgs(tmp_path)


def test_empty_images_folder(tmp_path):
    base = make_folder(tmp_path, ids=())
    with raises_naming(base / "images", match="no image files"):
        load_tgs(tmp_path)


def test_images_folder_with_only_junk_is_empty(tmp_path):
    base = make_folder(tmp_path, ids=())
    (base / "images" / "notes.txt").write_text("x")
    with raises_naming(base / "images"):
        load_tgs(tmp_path)


def test_no_masks_folder(tmp_path):
    base = make_folder(tmp_path, masks=False)
    with raises_naming(base / "masks", match="masks folder not found"):
        load_tgs(tmp_path)


def test_mask_without_its_image(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    _save(base / "masks" / "zz.png", np.zeros((SIDE, SIDE), np.uint8))
    with raises_naming(base / "masks" / "zz.png", match="mask without its image"):
        load_tgs(tmp_path)


def test_mask_without_image_even_when_masks_not_required(tmp_path):
    base = make_folder(tmp_path, ids=("a",))
    _save(base / "masks" / "zz.png", np.zeros((SIDE, SIDE), np.uint8))
    with raises_naming(base / "masks" / "zz.png"):
        list_pairs(tmp_path, require_masks=False)


def test_image_without_its_mask(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b", "c"))
    (base / "masks" / "b.png").unlink()
    with raises_naming(base / "images" / "b.png", match="image without its mask"):
        load_tgs(tmp_path)


@pytest.mark.parametrize("which", ["images", "masks"])
def test_corrupt_png(tmp_path, which):
    base = make_folder(tmp_path, ids=("a", "b"))
    bad = base / which / "b.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with raises_naming(bad, match="cannot decode"):
        load_tgs(tmp_path)


def test_corrupt_png_in_synthetic_set(tgs_copy):
    bad = sorted((tgs_copy / "train" / "images").iterdir())[3]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with raises_naming(bad):
        load_tgs(tgs_copy)


def test_image_size_mismatch(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    _save(base / "images" / "b.png", np.zeros((SIDE + 1, SIDE), np.uint8))
    _save(base / "masks" / "b.png", np.zeros((SIDE + 1, SIDE), np.uint8))
    with raises_naming(base / "images" / "b.png", match="differs"):
        load_tgs(tmp_path)


def test_mask_size_mismatch(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    _save(base / "masks" / "a.png", np.zeros((SIDE, SIDE + 2), np.uint8))
    with raises_naming(base / "masks" / "a.png", match="mask size"):
        load_tgs(tmp_path)


def test_duplicate_image_stem(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    _save(base / "images" / "a.jpg", np.zeros((SIDE, SIDE), np.uint8))
    with pytest.raises(DataError, match=r"duplicate image id 'a'") as info:
        load_tgs(tmp_path)
    message = str(info.value)
    assert str(base / "images") in message
    assert "a.png" in message and "a.jpg" in message


def test_duplicate_mask_stem(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    _save(base / "masks" / "b.tif", np.zeros((SIDE, SIDE), np.uint8))
    with pytest.raises(DataError, match=r"duplicate mask id 'b'") as info:
        load_tgs(tmp_path)
    assert str(base / "masks") in str(info.value)


# ----------------------------------------------------------------------------- depths.csv


def test_read_depths_missing_file_is_empty(tmp_path):
    assert read_depths(tmp_path / "depths.csv") == {}


def test_read_depths_values(tmp_path):
    path = tmp_path / "depths.csv"
    path.write_text("id,z\na,101\nb,7.5\n")
    assert read_depths(path) == {"a": 101.0, "b": 7.5}


def test_read_depths_wrong_columns(tmp_path):
    path = tmp_path / "depths.csv"
    path.write_text("name,depth\na,1\n")
    with raises_naming(path, match="id,z"):
        read_depths(path)


def test_read_depths_bad_number_names_line(tmp_path):
    path = tmp_path / "depths.csv"
    path.write_text("id,z\na,1\nb,deep\n")
    with raises_naming(path, match="line 3"):
        read_depths(path)


def test_bad_depths_csv_fails_load(tmp_path):
    make_folder(tmp_path, ids=("a",))
    (tmp_path / "depths.csv").write_text("id,z\na,?\n")
    with raises_naming(tmp_path / "depths.csv"):
        load_tgs(tmp_path)


def test_masks_from_train_csv_when_masks_folder_is_absent(tgs_copy):
    """Kaggle ships masks both as PNGs and as train.csv; either alone is enough."""
    with_pngs = load_tgs(tgs_copy)
    shutil.rmtree(tgs_copy / "train" / "masks")
    from_csv = load_tgs(tgs_copy)
    assert from_csv.ids == with_pngs.ids
    assert np.array_equal(from_csv.masks, with_pngs.masks)


def test_train_csv_missing_a_row_names_the_image(tgs_copy):
    shutil.rmtree(tgs_copy / "train" / "masks")
    lines = (tgs_copy / "train.csv").read_text().splitlines()
    dropped = lines[1].split(",")[0]
    (tgs_copy / "train.csv").write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=dropped):
        load_tgs(tgs_copy)


# ----------------------------------------------------------------------------- mask values and lossy masks


def test_masks_with_other_values_are_refused_unless_a_rule_maps_them(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b"))
    odd = np.tile(np.array([0, 1, 2, 7], np.uint8), (SIDE, SIDE // 4))
    bad = _save(base / "masks" / "b.png", odd)
    with raises_naming(bad, match=re.escape("mask values {0, 1, 2, 7} are not binary") +
                       ".*data.options.binary_rule=nonzero"):
        load_tgs(tmp_path)
    np.testing.assert_array_equal(load_tgs(tmp_path, binary_rule="nonzero").masks[1], odd > 0)
    np.testing.assert_array_equal(load_tgs(tmp_path, binary_rule="threshold:1").masks[1], odd > 1)


def test_sixteen_bit_and_one_value_masks_pass_strict(tmp_path):
    base = make_folder(tmp_path, ids=("a", "b", "c"))
    Image.fromarray(np.full((SIDE, SIDE), 65535, np.uint16)).save(base / "masks" / "b.png")
    _save(base / "masks" / "c.png", np.ones((SIDE, SIDE), np.uint8))
    data = load_tgs(tmp_path)
    assert data.masks[1].all() and data.masks[2].all()


@pytest.mark.parametrize("name", ["b.jpg", "b.png"])  # by content: a JPEG named .png is refused too
def test_jpeg_masks_are_refused_unless_allowed(tmp_path, name):
    base = make_folder(tmp_path, ids=("a", "b"))
    (base / "masks" / "b.png").unlink()
    square = np.zeros((SIDE, SIDE), np.uint8)
    square[2:6, 2:6] = 255
    Image.fromarray(square).save(base / "masks" / name, format="JPEG", quality=50)
    with raises_naming(base / "masks" / name, match="mask stored as JPEG.*data.options.allow_lossy_masks=true"):
        load_tgs(tmp_path)
    data = load_tgs(tmp_path, binary_rule="threshold:127", allow_lossy_masks=True)
    np.testing.assert_array_equal(data.masks[1], square > 0)


def test_the_cache_never_serves_masks_read_under_another_rule(tmp_path):
    from unetlab.data.formats.registry import cached_read_dataset

    base = make_folder(tmp_path / "data", ids=("a", "b"))
    odd = np.tile(np.array([0, 1, 2, 7], np.uint8), (SIDE, SIDE // 4))
    _save(base / "masks" / "b.png", odd)
    cache = tmp_path / "cache"
    nonzero = cached_read_dataset("tgs", tmp_path / "data", cache, binary_rule="nonzero")
    threshold = cached_read_dataset("tgs", tmp_path / "data", cache, binary_rule="threshold:1")
    np.testing.assert_array_equal(nonzero.masks[1], odd > 0)
    np.testing.assert_array_equal(threshold.masks[1], odd > 1)
    with raises_naming(base / "masks" / "b.png", match="not binary"):
        cached_read_dataset("tgs", tmp_path / "data", cache)  # strict, the default: not served from the cache


# ----------------------------------------------------------------------------- bad train.csv rows


@pytest.mark.parametrize("row, problem", [
    ("b,1 2 3", r"line 3 \(id 'b'\): run-length string '1 2 3' has an odd number of values \(3\)"),
    ("b,1 x", r"line 3 \(id 'b'\): run-length string '1 x' is not a list of whole numbers"),
    ("b,60 10", r"line 3 \(id 'b'\): run '60 10' lies outside a 8x8 image"),
    ("b,0 1", r"line 3 \(id 'b'\): run '0 1' lies outside"),
    (",1 2", r"line 3: no id"),
    ("a,1 2", r"line 3: id 'a' already on line 2"),
    ("b", r"line 3 \(id 'b'\): no rle_mask column"),
])
def test_bad_train_csv_rows_name_the_file_line_and_id(tmp_path, row, problem):
    make_folder(tmp_path, ids=("a", "b"), masks=False)
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(f"id,rle_mask\na,1 2\n{row}\n")
    with raises_naming(csv_path, match=problem):
        load_tgs(tmp_path)


def test_train_csv_that_is_not_text_is_one_error(tmp_path):
    make_folder(tmp_path, ids=("a",), masks=False)
    (tmp_path / "train.csv").write_bytes(b"id,rle_mask\na,1 2\xff\xfe\n")
    with raises_naming(tmp_path / "train.csv", match="cannot read as CSV text.*save it as UTF-8"):
        load_tgs(tmp_path)


def test_train_cli_refuses_odd_masks_and_a_bad_csv_row_in_one_line(tgs_copy, tmp_path, capsys):
    from run_fixtures import assert_one_line_error, run_cli

    masks = sorted((tgs_copy / "train" / "masks").glob("*.png"))
    values = np.zeros((101, 101), np.uint8)
    values[:50, :50], values[50:, 50:] = 2, 7
    _save(masks[3], values)
    args = ["train", "--data", str(tgs_copy), "--set", "train.epochs=1", "--out", str(tmp_path / "run"),
            "--no-progress"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, str(masks[3]), "{0, 2, 7}", "data.options.binary_rule")
    Image.fromarray(values).save(masks[3], format="JPEG")
    code, _, err = run_cli(args + ["--set", "data.options.binary_rule=nonzero"], capsys)
    assert_one_line_error(code, err, str(masks[3]), "JPEG", "data.options.allow_lossy_masks=true")
    shutil.rmtree(tgs_copy / "train" / "masks")
    lines = (tgs_copy / "train.csv").read_text().splitlines()
    sample_id = lines[4].split(",")[0]
    lines[4] = f"{sample_id},5 10 20"
    (tgs_copy / "train.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, str(tgs_copy / "train.csv"), f"line 5 (id '{sample_id}')", "odd number")
    assert not (tmp_path / "run").exists()
