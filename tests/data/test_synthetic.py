"""Tests of the synthetic seismic/salt generator and its TGS Salt folder writer."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image

from unetlab.data.rle import rle_decode
from unetlab.data.synthetic import generate_seismic, write_tgs_dataset
from unetlab.errors import ConfigError


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """200 default-size images, shared by the statistical tests (about 1 s)."""
    return generate_seismic(200, seed=11)


def _box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over (2r+1)^2 windows of each image in a stack ('valid' region only)."""
    k = 2 * r + 1
    c = np.cumsum(np.cumsum(np.pad(a, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
    return (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / k**2


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_output():
    a_img, a_mask = generate_seismic(6, seed=1)
    b_img, b_mask = generate_seismic(6, seed=1)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)


def test_different_seed_differs():
    a_img, _ = generate_seismic(4, seed=1)
    b_img, _ = generate_seismic(4, seed=2)
    assert not np.array_equal(a_img, b_img)
    # every image differs, not just one
    assert all(not np.array_equal(a, b) for a, b in zip(a_img, b_img))


def test_shorter_run_is_prefix_of_longer_run():
    short_img, short_mask = generate_seismic(4, seed=5)
    long_img, long_mask = generate_seismic(9, seed=5)
    np.testing.assert_array_equal(short_img, long_img[:4])
    np.testing.assert_array_equal(short_mask, long_mask[:4])


# ----------------------------------------------------------------------------- shapes, ranges


@pytest.mark.parametrize("size, shape", [(101, (101, 101)), ((48, 80), (48, 80)), (16, (16, 16))])
def test_shapes_and_dtypes(size, shape):
    images, masks = generate_seismic(5, size=size, seed=0)
    assert images.shape == (5, *shape) and images.dtype == np.uint8
    assert masks.shape == (5, *shape) and masks.dtype == np.bool_


def test_zero_images():
    images, masks = generate_seismic(0)
    assert images.shape == (0, 101, 101) and masks.shape == (0, 101, 101)


def test_grey_levels_look_like_tgs(batch):
    images, _ = batch
    # centred on mid-grey with real contrast, every image textured
    assert 118 < images.mean() < 138
    stds = images.reshape(len(images), -1).std(axis=1)
    assert stds.min() > 8 and 25 < stds.mean() < 70
    assert (images == 0).mean() < 0.05 and (images == 255).mean() < 0.05


@pytest.mark.parametrize("bad", [dict(n=-1), dict(n=2, seed=-3), dict(n=2, empty_fraction=1.5),
                                 dict(n=2, size=4), dict(n=2, size=(10, 20, 30))])
def test_bad_arguments_raise_config_error(bad):
    with pytest.raises(ConfigError):
        generate_seismic(**bad)


# ----------------------------------------------------------------------------- salt statistics


def test_empty_fraction_roughly_honoured(batch):
    _, masks = batch
    empty = ~masks.any(axis=(1, 2))
    assert 0.25 < empty.mean() < 0.45  # default 0.35; binomial sd over 200 is ~0.034


def test_empty_fraction_extremes():
    _, masks = generate_seismic(12, seed=4, empty_fraction=0.0)
    assert masks.any(axis=(1, 2)).all()
    _, masks = generate_seismic(12, seed=4, empty_fraction=1.0)
    assert not masks.any()


def test_empty_fraction_keeps_sediments_of_empty_images():
    # image i's salt decision is monotone in empty_fraction; images empty under both agree
    img_a, mask_a = generate_seismic(20, seed=8, empty_fraction=0.3)
    img_b, mask_b = generate_seismic(20, seed=8, empty_fraction=0.6)
    empty_a = ~mask_a.any(axis=(1, 2))
    empty_b = ~mask_b.any(axis=(1, 2))
    assert (empty_b | ~empty_a).all()  # empty at 0.3 -> empty at 0.6
    np.testing.assert_array_equal(img_a[empty_a], img_b[empty_a])


def test_coverage_spread(batch):
    _, masks = batch
    coverage = masks.mean(axis=(1, 2))
    salty = coverage[coverage > 0]
    assert (salty < 0.05).sum() >= 3, "want slivers"
    assert (salty > 0.85).sum() >= 3, "want nearly full images"
    assert ((salty > 0.2) & (salty < 0.6)).sum() >= 10, "want medium bodies"


def test_salt_interior_is_quieter_than_sediment(batch):
    images, masks = batch
    x = images.astype(np.float64)
    local_var = _box_mean(x**2, 2) - _box_mean(x, 2) ** 2  # 5x5 windows, size H-4
    local_var = local_var[:, 3:-3, 3:-3]  # align with the 11x11 windows below (size H-10)
    salt_share = _box_mean(masks.astype(np.float64), 5)
    salt_var = local_var[salt_share == 1].mean()  # 11x11 all salt: away from the boundary
    sediment_var = local_var[salt_share == 0].mean()
    assert salt_var < 0.6 * sediment_var, (salt_var, sediment_var)


def test_strong_top_of_salt_reflection(batch):
    images, masks = batch
    edge, interior = [], []
    for i in np.flatnonzero(masks.any(axis=(1, 2))):
        dev = np.abs(images[i].astype(np.float64) - 128.0)
        for col in range(masks.shape[2]):
            column = masks[i, :, col]
            k = int(np.argmax(column))  # first salt row = top of salt in this column
            if not column[k] or k < 3 or k + 21 > column.size or not column[k:k + 21].all():
                continue
            edge.append(dev[k - 2:k + 2, col].mean())
            interior.append(dev[k + 12:k + 21, col].mean())
    assert len(edge) > 500
    assert np.mean(edge) > 2.0 * np.mean(interior), (np.mean(edge), np.mean(interior))


# ----------------------------------------------------------------------------- TGS folder


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_write_tgs_dataset_layout_and_quirks(tmp_path):
    root = write_tgs_dataset(tmp_path / "tgs", n=24, seed=3)
    assert root == tmp_path / "tgs"
    images, masks = generate_seismic(24, seed=3)

    rows = _read_csv(root / "train.csv")
    assert list(rows[0].keys()) == ["id", "rle_mask"]
    ids = [row["id"] for row in rows]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert all(re.fullmatch(r"[0-9a-f]{10}", i) for i in ids)
    assert sorted(p.stem for p in (root / "train" / "images").glob("*.png")) == sorted(ids)
    assert sorted(p.stem for p in (root / "train" / "masks").glob("*.png")) == sorted(ids)

    seen_empty = seen_salt = False
    for k, row in enumerate(rows):
        with Image.open(root / "train" / "images" / f"{row['id']}.png") as im:
            assert im.mode == "RGB"
            rgb = np.array(im)
        assert rgb.shape == (101, 101, 3)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
        np.testing.assert_array_equal(rgb[..., 0], images[k])

        with Image.open(root / "train" / "masks" / f"{row['id']}.png") as im:
            mode = im.mode
            mask = np.array(im)
        if masks[k].any():
            seen_salt = True
            assert mode == "I;16" and mask.dtype == np.uint16
            assert set(np.unique(mask)) == {0, 65535}
        else:
            seen_empty = True
            assert mode == "L" and mask.dtype == np.uint8 and not mask.any()
            assert row["rle_mask"] == ""
        np.testing.assert_array_equal(mask != 0, masks[k])
        # the CSV run-length code decodes to exactly the mask written
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], (101, 101)), mask != 0)
    assert seen_empty and seen_salt

    depths = _read_csv(root / "depths.csv")
    assert list(depths[0].keys()) == ["id", "z"]
    assert [d["id"] for d in depths] == ids
    assert all(50 <= int(d["z"]) <= 950 for d in depths)

    note = (root / "SYNTHETIC.txt").read_text()
    assert "synthetic" in note.lower() and "seed=3" in note and "n=24" in note
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_write_tgs_dataset_without_quirks(tmp_path):
    root = write_tgs_dataset(tmp_path, n=10, size=(40, 56), seed=2, quirks=False)
    _, masks = generate_seismic(10, size=(40, 56), seed=2)
    rows = _read_csv(root / "train.csv")
    for k, row in enumerate(rows):
        with Image.open(root / "train" / "images" / f"{row['id']}.png") as im:
            assert im.mode == "L" and im.size == (56, 40)
        with Image.open(root / "train" / "masks" / f"{row['id']}.png") as im:
            assert im.mode == "L"
            mask = np.array(im)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, masks[k])
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], (40, 56)), masks[k])


def test_write_tgs_dataset_is_deterministic(tmp_path):
    a = write_tgs_dataset(tmp_path / "a", n=5, seed=9)
    b = write_tgs_dataset(tmp_path / "b", n=5, seed=9)
    c = write_tgs_dataset(tmp_path / "c", n=5, seed=10)
    for name in ("train.csv", "depths.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    # rewriting into an existing folder works (files are replaced)
    assert write_tgs_dataset(a, n=5, seed=9) == a
    assert (a / "train.csv").read_bytes() == (b / "train.csv").read_bytes()
