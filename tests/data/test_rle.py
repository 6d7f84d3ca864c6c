"""Tests for the Kaggle run-length encoding (column-major, 1-indexed) of TGS Salt train.csv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unetlab.data.rle import rle_decode, rle_encode
from unetlab.errors import DataError

# (mask, rle) pairs computed by hand: pixels are numbered down column 0 (1..H), then column 1, ...
HAND_CASES = [
    # column 0 = 0,0,1; column 1 = 1,1,1; column 2 = 1,0,0 -> pixels 3..7: ONE run that wraps from
    # the bottom of column 0 over all of column 1 to the top of column 2
    ([[0, 1, 1],
      [0, 1, 0],
      [1, 1, 0]], "3 5"),
    # column 0 = 1,0,1; column 1 = 0,0,0; column 2 = 0,1,1 -> pixels 1, 3, 8-9
    ([[1, 0, 0],
      [0, 0, 1],
      [1, 0, 1]], "1 1 3 1 8 2"),
    # a single pixel at the bottom-right corner is pixel 9
    ([[0, 0, 0],
      [0, 0, 0],
      [0, 0, 1]], "9 1"),
    # the top-right corner is pixel 7 (column-major!), not 3
    ([[0, 0, 1],
      [0, 0, 0],
      [0, 0, 0]], "7 1"),
    # non-square, H=2, W=3: column 0 = 1,1; column 1 = 0,1; column 2 = 1,0 -> pixels 1,2,4,5
    ([[1, 0, 1],
      [1, 1, 0]], "1 2 4 2"),
    # non-square, H=3, W=2: a full bottom row is two runs of one (pixels 3 and 6)
    ([[0, 0],
      [0, 0],
      [1, 1]], "3 1 6 1"),
    # a single row (H=1): column-major equals row-major
    ([[0, 1, 1, 0, 1]], "2 2 5 1"),
]


@pytest.mark.parametrize("mask, rle", HAND_CASES)
def test_encode_hand_cases(mask, rle):
    assert rle_encode(np.array(mask, dtype=bool)) == rle


@pytest.mark.parametrize("mask, rle", HAND_CASES)
def test_decode_hand_cases(mask, rle):
    expected = np.array(mask, dtype=bool)
    decoded = rle_decode(rle, expected.shape)
    assert decoded.dtype == bool
    assert decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def test_wrapping_run_is_one_run():
    mask = np.zeros((4, 3), dtype=bool)
    mask[2:, 0] = True  # bottom of column 0 (pixels 3, 4)
    mask[:2, 1] = True  # top of column 1 (pixels 5, 6)
    assert rle_encode(mask) == "3 4"


@pytest.mark.parametrize("shape", [(3, 3), (101, 101), (2, 7), (1, 1)])
def test_empty_mask_is_empty_string(shape):
    assert rle_encode(np.zeros(shape, dtype=bool)) == ""
    np.testing.assert_array_equal(rle_decode("", shape), np.zeros(shape, dtype=bool))


@pytest.mark.parametrize("shape", [(3, 3), (101, 101), (2, 7), (1, 1)])
def test_full_mask_is_one_run(shape):
    h, w = shape
    assert rle_encode(np.ones(shape, dtype=bool)) == f"1 {h * w}"
    assert rle_decode(f"1 {h * w}", shape).all()


def test_encode_treats_any_nonzero_as_foreground():
    mask = np.array([[0, 255], [65535, 0]], dtype=np.uint16)
    assert rle_encode(mask) == "2 2"  # pixels 2 (row 1, col 0) and 3 (row 0, col 1)


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError):
        rle_encode(np.zeros((2, 3, 3), dtype=bool))


@pytest.mark.parametrize("empty", [None, "", "   ", "nan", "NaN"])
def test_decode_missing_values_are_empty(empty):
    assert not rle_decode(empty, (5, 4)).any()


def test_decode_tolerates_surrounding_whitespace():
    np.testing.assert_array_equal(rle_decode("  3 5\n", (3, 3)), rle_decode("3 5", (3, 3)))


def test_decode_zero_length_run():
    assert not rle_decode("4 0", (3, 3)).any()


def test_decode_run_reaching_last_pixel_is_allowed():
    mask = rle_decode("8 2", (3, 3))
    assert mask[1, 2] and mask[2, 2] and mask.sum() == 2


def test_real_tgs_row_a266a2a9df():
    """train.csv of TGS Salt: 'a266a2a9df,5051 5151' on a 101x101 image.

    5051 - 1 = 5050 = 50 * 101, and 5050 + 5151 = 10201 = 101 * 101: the run starts at the top of
    column 50 and runs to the last pixel, so columns 50..100 are fully salt, columns 0..49 empty.
    """
    mask = rle_decode("5051 5151", (101, 101))
    assert mask.shape == (101, 101)
    assert mask.sum() == 5151 == 51 * 101
    assert not mask[:, :50].any()
    assert mask[:, 50:].all()
    flat = np.flatnonzero(mask.flatten(order="F"))
    np.testing.assert_array_equal(flat, np.arange(5050, 10201))
    assert rle_encode(mask) == "5051 5151"


@pytest.mark.parametrize("text", [
    "1 2 3",        # odd number of values
    "10 1",         # starts after the last pixel of a 3x3 image
    "8 3",          # runs past the last pixel
    "0 1",          # pixels are 1-indexed
    "-1 2",         # negative start
    "1 -1",         # negative length
    "1.5 2",        # not integers
    "1 2.0",
    "a b",
    "1,2",
])
def test_decode_errors(text):
    with pytest.raises(DataError):
        rle_decode(text, (3, 3))


def test_decode_error_message_mentions_size():
    with pytest.raises(DataError, match="3x3"):
        rle_decode("8 3", (3, 3))


masks = st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(
    lambda shape: hnp.arrays(dtype=bool, shape=shape)
)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_round_trip_random_masks(mask):
    rle = rle_encode(mask)
    decoded = rle_decode(rle, mask.shape)
    np.testing.assert_array_equal(decoded, mask)
    # the encoding is canonical: re-encoding the decoded mask gives the same string
    assert rle_encode(decoded) == rle


@settings(max_examples=150, deadline=None)
@given(masks)
def test_encoding_structure(mask):
    """Runs are sorted, non-empty, non-touching, inside the image, and cover exactly the foreground."""
    rle = rle_encode(mask)
    numbers = [int(v) for v in rle.split()]
    assert len(numbers) % 2 == 0
    starts, lengths = numbers[0::2], numbers[1::2]
    assert all(length >= 1 for length in lengths)
    for (s0, l0), s1 in zip(zip(starts, lengths), starts[1:]):
        assert s0 + l0 < s1  # a gap of at least one pixel between runs
    if starts:
        assert starts[0] >= 1 and starts[-1] + lengths[-1] - 1 <= mask.size
    assert sum(lengths) == int(mask.sum())


@pytest.mark.parametrize("text, message", [
    ("1 2 3", r"run-length string '1 2 3' has an odd number of values \(3\); runs are 'start length' pairs"),
    ("1 x", r"run-length string '1 x' is not a list of whole numbers"),
    ("1 99999999999999999999", r"is not a list of whole numbers"),
    ("8 3", r"run '8 3' lies outside a 3x3 image \(pixels 1..9"),
    (" ".join(["1"] * 41), r"run-length string '1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 \.\.\.' has an odd number"),
])
def test_decode_error_messages_say_what_is_wrong(text, message):
    with pytest.raises(DataError, match=message):
        rle_decode(text, (3, 3))
