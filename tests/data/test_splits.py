"""Tests for unetlab.data.splits: coverage classes, the stratified split, split.json round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unetlab.data.splits import coverage_classes, load_split, save_split, stratified_split
from unetlab.errors import DataError

# ----------------------------------------------------------------------------- coverage_classes


def test_coverage_classes_hand_cases():
    coverage = np.array([0.0, 1e-4, 0.05, 0.15, 0.55, 0.95, 0.999, 1.0])
    np.testing.assert_array_equal(coverage_classes(coverage, 10), [0, 1, 1, 2, 6, 10, 10, 10])


def test_coverage_classes_empty_is_zero_nonempty_is_not():
    coverage = np.array([0.0, 0.0, 1 / 10201, 0.5])
    classes = coverage_classes(coverage, 10)
    assert classes.dtype == np.int64
    assert classes[0] == classes[1] == 0
    assert (classes[2:] >= 1).all()


def test_coverage_classes_one_bin():
    np.testing.assert_array_equal(coverage_classes(np.array([0.0, 0.01, 0.5, 1.0]), 1), [0, 1, 1, 1])


def test_coverage_classes_accept_lists_and_empty_input():
    np.testing.assert_array_equal(coverage_classes([0.0, 0.3], 4), [0, 2])
    assert coverage_classes(np.array([]), 10).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.integers(1, 20))
def test_coverage_classes_range_and_monotone(values, bins):
    coverage = np.sort(np.array(values))
    classes = coverage_classes(coverage, bins)
    assert classes.min() >= 0 and classes.max() <= bins
    assert (np.diff(classes) >= 0).all()  # more salt never means a lower class
    np.testing.assert_array_equal(classes == 0, coverage == 0)


# ----------------------------------------------------------------------------- stratified_split


def check_split(strata: np.ndarray, fraction: float, train: np.ndarray, val: np.ndarray) -> None:
    n = len(strata)
    assert train.dtype.kind == "i" and val.dtype.kind == "i"
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()  # sorted, no repeats
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))
    assert len(val) == round(n * fraction)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        in_val = np.isin(members, val).sum()
        assert abs(in_val - len(members) * fraction) < 1.0 + 1e-9, (value, len(members), in_val)


def test_split_tgs_like_strata():
    rng = np.random.default_rng(0)
    coverage = np.where(rng.random(400) < 0.38, 0.0, rng.random(400))
    strata = coverage_classes(coverage, 10)
    train, val = stratified_split(strata, 0.2, seed=42)
    check_split(strata, 0.2, train, val)
    assert len(val) == 80 and len(train) == 320


def test_split_is_deterministic_by_seed():
    strata = np.repeat(np.arange(5), 20)
    a = stratified_split(strata, 0.25, seed=7)
    b = stratified_split(strata, 0.25, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_split_different_seeds_differ():
    strata = np.repeat(np.arange(5), 20)
    vals = {tuple(stratified_split(strata, 0.25, seed=s)[1]) for s in range(4)}
    assert len(vals) == 4


def test_split_single_stratum():
    strata = np.zeros(10, dtype=int)
    train, val = stratified_split(strata, 0.3, seed=0)
    check_split(strata, 0.3, train, val)
    assert len(val) == 3


def test_split_many_singleton_strata_keeps_total():
    """Rounding on the running total: 10 strata of one sample each, 20% -> exactly 2 in validation."""
    strata = np.arange(10)
    train, val = stratified_split(strata, 0.2, seed=3)
    check_split(strata, 0.2, train, val)


def test_split_accepts_string_strata():
    strata = np.array(["a"] * 6 + ["b"] * 4)
    train, val = stratified_split(strata, 0.5, seed=1)
    check_split(strata, 0.5, train, val)


@pytest.mark.parametrize("n", [0, 1])
def test_split_too_few_samples(n):
    with pytest.raises(DataError, match="at least 2"):
        stratified_split(np.zeros(n, dtype=int), 0.5, seed=0)


@pytest.mark.parametrize("n, fraction", [(3, 0.1), (4, 0.9), (2, 0.2)])
def test_split_empty_side_refused(n, fraction):
    with pytest.raises(DataError, match="val_fraction"):
        stratified_split(np.zeros(n, dtype=int), fraction, seed=0)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=2, max_size=150),
    st.floats(0.05, 0.95),
    st.integers(0, 2**32 - 1),
)
def test_split_properties(strata_list, fraction, seed):
    strata = np.array(strata_list)
    n = len(strata)
    assume(0 < round(n * fraction) < n)
    train, val = stratified_split(strata, fraction, seed)
    check_split(strata, fraction, train, val)


# ----------------------------------------------------------------------------- split.json


IDS = [f"id{i:02d}" for i in range(12)]


def test_save_load_round_trip(tmp_path):
    train, val = stratified_split(np.arange(12) % 3, 0.25, seed=0)
    path = save_split(tmp_path / "run" / "split.json", IDS, train, val, seed=0, val_fraction=0.25)
    assert path.exists()
    payload = json.loads(path.read_text())
    assert payload["seed"] == 0 and payload["val_fraction"] == 0.25
    assert payload["train"] == [IDS[i] for i in train] and payload["val"] == [IDS[i] for i in val]
    train2, val2 = load_split(path, IDS)
    assert train2.dtype == np.int64 and val2.dtype == np.int64
    np.testing.assert_array_equal(train2, train)
    np.testing.assert_array_equal(val2, val)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp files left


def test_load_split_maps_ids_by_name_not_position(tmp_path):
    train, val = np.array([0, 1, 2]), np.array([3])
    path = save_split(tmp_path / "split.json", ["a", "b", "c", "d"], train, val)
    # the data set lists the same ids in another order, plus a new one
    ids = ["d", "new", "c", "b", "a"]
    train2, val2 = load_split(path, ids)
    np.testing.assert_array_equal(train2, [2, 3, 4])
    np.testing.assert_array_equal(val2, [0])


def test_load_split_unknown_ids(tmp_path):
    path = save_split(tmp_path / "split.json", IDS, np.arange(9), np.arange(9, 12))
    with pytest.raises(DataError) as info:
        load_split(path, IDS[:10])  # id10 and id11 are gone
    message = str(info.value)
    assert str(path) in message and "id10" in message and "2 id(s)" in message


def test_load_split_missing_file(tmp_path):
    path = tmp_path / "split.json"
    with pytest.raises(DataError, match="not found"):
        load_split(path, IDS)


@pytest.mark.parametrize("text", ["{not json", '{"train": ["id00"]}', "[1, 2]", '"x"'])
def test_load_split_not_a_split_file(tmp_path, text):
    path = tmp_path / "split.json"
    path.write_text(text)
    with pytest.raises(DataError, match="not a split file"):
        load_split(path, IDS)
