"""Tests for the multi-class and k-fold parts of unetlab.data.splits: dominant-class strata,
an unstratified split (one stratum), kfold_splits (against sklearn's StratifiedKFold) and folds.json round trip."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import StratifiedKFold

from unetlab.data.splits import (
    dominant_class_strata,
    kfold_splits,
    load_kfold,
    save_kfold,
    stratified_split,
)
from unetlab.errors import DataError

# ----------------------------------------------------------------------------- dominant_class_strata


def mask_with(counts: dict[int, int], size: int = 10000, fill: int = 0) -> np.ndarray:
    mask = np.full(size, fill, dtype=np.int64)
    start = 0
    for value, count in counts.items():
        mask[start:start + count] = value
        start += count
    return mask.reshape(100, -1)


def test_dominant_class_rule_by_hand():
    masks = [
        mask_with({}),                          # background only -> 0
        mask_with({1: 500, 2: 800}),            # most frequent foreground -> 2
        mask_with({3: 99}),                     # 0.99 % -> below 1 % -> 0
        mask_with({3: 100}),                    # exactly 1 % -> 3
        mask_with({1: 300, 2: 300}),            # tie -> lowest index 1
        mask_with({1: 50, 2: 120}),             # class 1 under 1 %, class 2 over -> 2
        mask_with({2: 9000}),                   # foreground larger than background -> 2
    ]
    strata = dominant_class_strata(masks, 4)
    assert strata.dtype == np.int64
    np.testing.assert_array_equal(strata, [0, 2, 0, 3, 1, 2, 2])


def test_dominant_class_ignore_index_is_out_of_the_total():
    # 60 of class 1 among 10000 pixels is 0.6 %; with 5000 ignored it is 60 / 5000 = 1.2 %
    mask = mask_with({1: 60, 255: 5000})
    assert dominant_class_strata([mask], 2, ignore_index=255)[0] == 1
    assert dominant_class_strata([mask_with({1: 60})], 2)[0] == 0
    # nothing labelled, or a single class: 0
    assert dominant_class_strata([np.full((3, 3), 255)], 3, ignore_index=255)[0] == 0
    np.testing.assert_array_equal(dominant_class_strata([np.zeros((2, 2), int)] * 2, 1), [0, 0])
    assert dominant_class_strata([], 3).shape == (0,)


def test_dominant_class_min_fraction_and_sizes():
    masks = [mask_with({1: 400}), np.array([[0, 0, 0, 2]])]   # images of different sizes
    np.testing.assert_array_equal(dominant_class_strata(masks, 3), [1, 2])
    np.testing.assert_array_equal(dominant_class_strata(masks, 3, min_fraction=0.05), [0, 2])


def test_dominant_class_bad_value():
    with pytest.raises(ValueError, match="class value 7"):
        dominant_class_strata([np.array([[0, 7]])], 3)


def test_dominant_class_strata_feed_stratified_split():
    rng = np.random.default_rng(0)
    masks = [mask_with({int(rng.integers(1, 4)): int(rng.integers(0, 3000))}) for _ in range(60)]
    strata = dominant_class_strata(masks, 4)
    train, val = stratified_split(strata, 0.25, seed=1)
    assert len(val) == 15 and len(train) == 45


# ----------------------------------------------------------------------------- one stratum


def random_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An unstratified split of range(n): `stratified_split` with a single stratum."""
    return stratified_split(np.zeros(n, dtype=np.int64), val_fraction, seed)


def test_random_split():
    train, val = random_split(10, 0.3, seed=0)
    assert len(val) == 3 and len(train) == 7
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(10))
    np.testing.assert_array_equal(random_split(10, 0.3, seed=0)[1], val)
    assert len({tuple(random_split(50, 0.2, seed=s)[1]) for s in range(5)}) == 5
    with pytest.raises(DataError, match="at least 2"):
        random_split(1, 0.5, seed=0)
    with pytest.raises(DataError, match="val_fraction"):
        random_split(3, 0.1, seed=0)


# ----------------------------------------------------------------------------- kfold_splits


def check_folds(strata: np.ndarray, k: int, folds: list) -> None:
    n = len(strata)
    assert len(folds) == k
    vals = []
    for train, val in folds:
        assert train.dtype == np.int64 and val.dtype == np.int64
        assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
        assert len(val) >= 1
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))
        vals.append(val)
    every = np.concatenate(vals)
    np.testing.assert_array_equal(np.sort(every), np.arange(n))     # each index in exactly one val fold
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        per_fold = [np.isin(members, v).sum() for v in vals]
        assert max(per_fold) - min(per_fold) <= 1, (value, per_fold)


def per_stratum_fold_sizes(strata: np.ndarray, vals: list[np.ndarray]) -> dict:
    return {value: sorted(int(np.isin(np.flatnonzero(strata == value), v).sum()) for v in vals)
            for value in np.unique(strata)}


def test_kfold_tgs_like_strata():
    rng = np.random.default_rng(0)
    strata = rng.choice(11, size=403, p=[0.38] + [0.062] * 10)
    folds = kfold_splits(strata, 5, seed=42)
    check_folds(strata, 5, folds)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_kfold_same_per_stratum_fold_sizes_as_sklearn(k, seed):
    rng = np.random.default_rng(seed)
    strata = np.repeat(np.arange(6), rng.integers(1, 40, size=6))
    strata[: k] = 0  # make sure some stratum has at least k members (sklearn's requirement)
    rng.shuffle(strata)
    ours = [val for _, val in kfold_splits(strata, k, seed=seed)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has only m members" for small strata
        theirs = [val for _, val in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(
            np.zeros(len(strata)), strata)]
    assert per_stratum_fold_sizes(strata, ours) == per_stratum_fold_sizes(strata, theirs)
    assert sorted(map(len, ours)) == sorted(map(len, theirs))
    check_folds(strata, k, kfold_splits(strata, k, seed=seed))


def test_kfold_deterministic_and_seed_dependent():
    strata = np.repeat(np.arange(4), 25)
    a, b = kfold_splits(strata, 5, seed=3), kfold_splits(strata, 5, seed=3)
    for (ta, va), (tb, vb) in zip(a, b):
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(va, vb)
    firsts = {tuple(kfold_splits(strata, 5, seed=s)[0][1]) for s in range(5)}
    assert len(firsts) == 5


def test_kfold_extra_samples_not_always_in_the_first_folds():
    strata = np.zeros(11, dtype=int)   # 11 = 2 * 5 + 1: one fold of 3, four of 2
    big = {int(np.argmax([len(v) for _, v in kfold_splits(strata, 5, seed=s)])) for s in range(30)}
    assert len(big) > 1


def test_kfold_k_equals_n_is_leave_one_out():
    strata = np.array(["a", "b", "a", "c"])
    folds = kfold_splits(strata, 4, seed=0)
    check_folds(strata, 4, folds)
    assert sorted(int(v[0]) for _, v in folds) == [0, 1, 2, 3]


@pytest.mark.parametrize("n, k, match", [(10, 1, "k >= 2"), (10, 0, "k >= 2"), (3, 4, "4 folds of 3"),
                                         (0, 2, "2 folds of 0"), (10, 2.5, "k >= 2")])
def test_kfold_refusals(n, k, match):
    with pytest.raises(DataError, match=match):
        kfold_splits(np.zeros(n, dtype=int), k, seed=0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=120), st.integers(2, 10), st.integers(0, 2**32 - 1))
def test_kfold_properties(strata_list, k, seed):
    strata = np.array(strata_list)
    if k > len(strata):
        with pytest.raises(DataError):
            kfold_splits(strata, k, seed)
        return
    folds = kfold_splits(strata, k, seed)
    check_folds(strata, k, folds)
    # the per-stratum fold sizes are exactly floor/ceil of m / k (what sklearn's allocation gives)
    vals = [v for _, v in folds]
    for value, sizes in per_stratum_fold_sizes(strata, vals).items():
        m = int((strata == value).sum())
        assert sizes == [m // k] * (k - m % k) + [m // k + 1] * (m % k)


# ----------------------------------------------------------------------------- folds.json


IDS = [f"id{i:02d}" for i in range(12)]


def test_save_load_kfold_round_trip(tmp_path):
    folds = kfold_splits(np.arange(12) % 3, 4, seed=0)
    path = save_kfold(tmp_path / "run" / "folds.json", IDS, folds, seed=0, strata="coverage")
    payload = json.loads(path.read_text())
    assert payload["k"] == 4 and payload["seed"] == 0 and payload["strata"] == "coverage"
    assert payload["folds"][1] == {"train": [IDS[i] for i in folds[1][0]], "val": [IDS[i] for i in folds[1][1]]}
    loaded = load_kfold(path, IDS)
    assert len(loaded) == 4
    for (train, val), (train2, val2) in zip(folds, loaded):
        assert train2.dtype == np.int64 and val2.dtype == np.int64
        np.testing.assert_array_equal(train2, train)
        np.testing.assert_array_equal(val2, val)
    assert [p.name for p in path.parent.iterdir()] == ["folds.json"]  # atomic: no temp file left


def test_load_kfold_maps_ids_by_name(tmp_path):
    folds = [(np.array([0, 1]), np.array([2])), (np.array([1, 2]), np.array([0]))]
    path = save_kfold(tmp_path / "folds.json", ["a", "b", "c"], folds)
    loaded = load_kfold(path, ["c", "new", "b", "a"])
    np.testing.assert_array_equal(loaded[0][0], [2, 3])
    np.testing.assert_array_equal(loaded[0][1], [0])
    np.testing.assert_array_equal(loaded[1][1], [3])


def test_load_kfold_unknown_ids(tmp_path):
    path = save_kfold(tmp_path / "folds.json", IDS, kfold_splits(np.zeros(12, int), 3, seed=0))
    with pytest.raises(DataError) as info:
        load_kfold(path, IDS[:10])
    message = str(info.value)
    assert str(path) in message and "2 id(s)" in message and "not in the data" in message


def test_load_kfold_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_kfold(tmp_path / "folds.json", IDS)


@pytest.mark.parametrize("text", ["{not json", '{"k": 1}', '{"folds": []}', "[1]", '{"k": 1, "folds": [{"train": []}]}',
                                  '{"k": 1, "folds": [{"train": [[1]], "val": []}]}', '{"k": 1, "folds": 3}'])
def test_load_kfold_not_a_kfold_file(tmp_path, text):
    path = tmp_path / "folds.json"
    path.write_text(text)
    with pytest.raises(DataError, match="not a k-fold file"):
        load_kfold(path, IDS)


def test_load_kfold_k_mismatch(tmp_path):
    path = tmp_path / "folds.json"
    path.write_text(json.dumps({"k": 3, "folds": [{"train": ["id00"], "val": ["id01"]}]}))
    with pytest.raises(DataError, match="k=3 but holds 1 fold"):
        load_kfold(path, IDS)
