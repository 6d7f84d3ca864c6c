"""Tests for unetlab.data.io: decoding by content, grey/mask conventions, errors naming the file."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from unetlab.data.io import read_binary_mask, read_grey, read_image, save_png
from unetlab.errors import DataError

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, size=(7, 5), dtype=np.uint8)
MASK = RNG.random((7, 5)) < 0.4


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write(path, image: Image.Image, fmt: str = "PNG"):
    path.write_bytes(png_bytes(image, fmt))
    return path


# ----------------------------------------------------------------------------- read_grey


def test_read_grey_l_image(tmp_path):
    path = write(tmp_path / "g.png", Image.fromarray(GREY))
    out = read_grey(path)
    assert out.dtype == np.uint8 and out.shape == GREY.shape
    np.testing.assert_array_equal(out, GREY)


def test_read_grey_accepts_str_path(tmp_path):
    path = write(tmp_path / "g.png", Image.fromarray(GREY))
    np.testing.assert_array_equal(read_grey(str(path)), GREY)


def test_read_grey_rgb_stored_grey_is_exact(tmp_path):
    """TGS stores grey as RGB with three equal channels: the channel is taken exactly."""
    rgb = np.repeat(GREY[:, :, None], 3, axis=2)
    path = write(tmp_path / "g.png", Image.fromarray(rgb))
    assert Image.open(path).mode == "RGB"
    out = read_grey(path)
    assert out.shape == GREY.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, GREY)


def test_read_grey_rgba_stored_grey_is_exact(tmp_path):
    rgba = np.concatenate([np.repeat(GREY[:, :, None], 3, axis=2), np.full(GREY.shape + (1,), 255, np.uint8)], 2)
    path = write(tmp_path / "g.png", Image.fromarray(rgba, mode="RGBA"))
    np.testing.assert_array_equal(read_grey(path), GREY)


def test_read_grey_true_colour_is_luminance(tmp_path):
    rgb = RNG.integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    path = write(tmp_path / "c.png", image)
    out = read_grey(path)
    assert out.shape == (6, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(image.convert("L")))
    # ITU-R 601 luma, as Pillow's "L" conversion: within rounding
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(out - luma).max() <= 1.0


def test_read_grey_16bit_is_scaled(tmp_path):
    values = np.array([[0, 65535], [32768, 16384]], dtype=np.uint16)
    path = write(tmp_path / "g16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = read_grey(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.round(values / 65535.0 * 255.0).astype(np.uint8))


def test_read_grey_bilevel_image(tmp_path):
    path = write(tmp_path / "b.png", Image.fromarray(MASK))
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_grey(path), MASK.astype(np.uint8) * 255)


def test_read_grey_png_with_jpg_name(tmp_path):
    """Files are decoded by content, not by extension."""
    path = write(tmp_path / "actually_png.jpg", Image.fromarray(GREY))
    np.testing.assert_array_equal(read_grey(path), GREY)


def test_read_grey_real_jpeg(tmp_path):
    path = write(tmp_path / "g.jpg", Image.fromarray(GREY), fmt="JPEG")
    out = read_grey(path)
    assert out.shape == GREY.shape and out.dtype == np.uint8


def test_read_grey_palette_image(tmp_path):
    indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # index i is grey 255 - i
    path = write(tmp_path / "p.png", image)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_grey(path), 255 - indices)


def test_read_grey_16bit_big_endian_tiff(tmp_path):
    values = np.array([[0, 1000], [30000, 65535]], dtype=">u2")
    image = Image.frombytes("I;16B", (2, 2), values.tobytes())
    path = write(tmp_path / "g16be.tif", image, fmt="TIFF")
    assert Image.open(path).mode == "I;16B"
    expected = np.round(values.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(read_grey(path), expected)


def test_read_grey_grey_with_alpha(tmp_path):
    la = np.stack([GREY, np.full(GREY.shape, 255, np.uint8)], axis=-1)
    path = write(tmp_path / "la.png", Image.fromarray(la, mode="LA"))
    np.testing.assert_array_equal(read_grey(path), GREY)


def test_read_grey_grey_with_alpha_equal_to_grey(tmp_path):
    la = np.stack([GREY, GREY], axis=-1)
    path = write(tmp_path / "la2.png", Image.fromarray(la, mode="LA"))
    np.testing.assert_array_equal(read_grey(path), GREY)


# ----------------------------------------------------------------------------- read_binary_mask


def test_read_mask_8bit_0_255(tmp_path):
    path = write(tmp_path / "m.png", Image.fromarray(MASK.astype(np.uint8) * 255))
    out = read_binary_mask(path)
    assert out.dtype == bool and out.shape == MASK.shape
    np.testing.assert_array_equal(out, MASK)


def test_read_mask_16bit_0_65535(tmp_path):
    path = write(tmp_path / "m16.png", Image.fromarray(MASK.astype(np.uint16) * np.uint16(65535)))
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_read_mask_0_1(tmp_path):
    path = write(tmp_path / "m01.png", Image.fromarray(MASK.astype(np.uint8)))
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_read_mask_bilevel(tmp_path):
    path = write(tmp_path / "m1.png", Image.fromarray(MASK))
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_read_mask_rgb(tmp_path):
    rgb = np.zeros(MASK.shape + (3,), np.uint8)
    rgb[MASK] = (255, 0, 0)  # a red mask: any channel counts
    path = write(tmp_path / "mrgb.png", Image.fromarray(rgb))
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_read_mask_rgba_ignores_alpha(tmp_path):
    rgba = np.zeros(MASK.shape + (4,), np.uint8)
    rgba[..., 3] = 255
    rgba[MASK, 1] = 255
    path = write(tmp_path / "mrgba.png", Image.fromarray(rgba, mode="RGBA"))
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_read_mask_png_with_jpg_name(tmp_path):
    path = write(tmp_path / "mask.jpg", Image.fromarray(MASK.astype(np.uint8) * 255))
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_read_mask_grey_with_alpha(tmp_path):
    la = np.stack([MASK.astype(np.uint8) * 255, np.full(MASK.shape, 255, np.uint8)], axis=-1)
    path = write(tmp_path / "mla.png", Image.fromarray(la, mode="LA"))
    assert Image.open(path).mode == "LA"
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("reader", [read_grey, read_binary_mask])
def test_missing_file_is_data_error(tmp_path, reader):
    path = tmp_path / "missing.png"
    with pytest.raises(DataError) as info:
        reader(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


@pytest.mark.parametrize("reader", [read_grey, read_binary_mask])
def test_random_bytes_are_data_error(tmp_path, reader):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as info:
        reader(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("reader", [read_grey, read_binary_mask])
def test_truncated_png_is_data_error(tmp_path, reader):
    data = png_bytes(Image.fromarray(RNG.integers(0, 256, size=(64, 64), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        reader(path)
    assert str(path) in str(info.value)


def test_empty_file_is_data_error(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_grey(path)


def test_text_file_is_data_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(DataError, match="notes.png"):
        read_binary_mask(path)


# ----------------------------------------------------------------------------- writing


def test_save_png_grey_round_trip(tmp_path):
    path = save_png(tmp_path / "a" / "g.png", GREY)
    assert path.exists()
    assert Image.open(path).format == "PNG"
    np.testing.assert_array_equal(read_grey(path), GREY)
    assert sorted(os.listdir(path.parent)) == ["g.png"]


def test_save_png_bool_mask_is_0_255(tmp_path):
    path = save_png(tmp_path / "m.png", MASK)
    stored = np.asarray(Image.open(path))
    assert stored.dtype == np.uint8
    assert set(np.unique(stored).tolist()) <= {0, 255}
    np.testing.assert_array_equal(stored == 255, MASK)
    np.testing.assert_array_equal(read_binary_mask(path), MASK)


def test_save_png_rgb(tmp_path):
    rgb = RNG.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    path = save_png(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)


def test_save_png_non_contiguous_input(tmp_path):
    view = GREY[:, ::2]
    path = save_png(tmp_path / "v.png", view)
    np.testing.assert_array_equal(read_grey(path), view)


def test_save_png_16bit_round_trip(tmp_path):
    values = np.array([[0, 1, 65535], [32768, 255, 4096]], dtype=np.uint16)
    path = save_png(tmp_path / "p16.png", values)
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), values)


# ----------------------------------------------------------------------------- read_image: TIFF, BigTIFF, NPY


def _expected_uint8(array: np.ndarray) -> np.ndarray:
    """The documented rule, computed directly: integers from [min(0, min), max], floats min-max (NaN, inf as 0)."""
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = min(values.min(), 0.0) if array.dtype.kind in "ui" else values.min()
    top = max(values.max() - low, 1.0 if array.dtype.kind in "ui" else 1e-12)
    return ((values - low) / top * 255.0).round().astype(np.uint8)


WIDE = {
    "uint16": RNG.integers(0, 65536, (9, 7)).astype(np.uint16),
    "int32": RNG.integers(-70000, 900000, (9, 7)).astype(np.int32),
    "uint32": RNG.integers(0, 2**32 - 1, (9, 7), dtype=np.uint64).astype(np.uint32),
    "float32": (RNG.normal(size=(9, 7)) * 300).astype(np.float32),
    "float64 unit": RNG.random((9, 7)),
}


@pytest.mark.parametrize("name", list(WIDE))
def test_read_image_wide_tiff_and_npy_follow_one_rule(tmp_path, name):
    import tifffile

    array = WIDE[name]
    tifffile.imwrite(tmp_path / "a.tif", array)
    tifffile.imwrite(tmp_path / "big.tif", array, bigtiff=True)
    np.save(tmp_path / "a.npy", array)
    expected = _expected_uint8(array)
    for file in ("a.tif", "big.tif", "a.npy"):
        for channels in (None, 1):
            out = read_image(tmp_path / file, channels=channels)
            assert out.dtype == np.uint8 and out.flags.c_contiguous, file
            np.testing.assert_array_equal(out, expected, err_msg=f"{file} channels={channels}")


def test_float_nan_and_infinity_count_as_zero(tmp_path):
    array = np.array([[np.nan, 2.0], [np.inf, 4.0], [-np.inf, -1.0]], np.float32)
    np.save(tmp_path / "f.npy", array)
    np.testing.assert_array_equal(read_image(tmp_path / "f.npy"), [[51, 153], [51, 255], [51, 0]])


def test_scaling_in_row_bands_equals_one_pass(monkeypatch):
    from unetlab.data import io as image_io

    bands = image_io._row_bands
    monkeypatch.setattr(image_io, "_row_bands", lambda array: bands(array, elements=10))  # 1-2 rows per band
    for array in (WIDE["int32"], WIDE["float32"], np.where(RNG.random((9, 7)) < 0.2, np.nan, WIDE["float32"])):
        np.testing.assert_array_equal(image_io._scale_to_uint8(array), _expected_uint8(array))


def test_read_image_npy_channels(tmp_path):
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npy"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npy", channels=3), rgb)
    luma = np.asarray(Image.fromarray(rgb).convert("L"))  # the same luminance as read_grey's for RGB files
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npy", channels=1), luma)
    np.save(tmp_path / "one.npy", GREY[..., None])
    np.testing.assert_array_equal(read_image(tmp_path / "one.npy"), GREY)
    bands = RNG.integers(0, 256, (6, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "six.npy", bands)
    np.testing.assert_array_equal(read_image(tmp_path / "six.npy"), bands)
    with pytest.raises(DataError, match="six.npy.*6 channels"):
        read_image(tmp_path / "six.npy", channels=1)
    with pytest.raises(DataError, match="six.npy.*6 channel"):
        read_image(tmp_path / "six.npy", channels=3)


def test_read_image_rgb_tiff_as_grey_matches_read_grey_of_the_png(tmp_path):
    import tifffile

    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif", channels=1), read_grey(tmp_path / "c.png"))


@pytest.mark.parametrize("content,needle", [
    (b"\x93NUMPY\x01\x00garbage", "cannot read .npy"),
    (None, "holds object"),
    (np.zeros((2, 3, 4, 5), np.uint8), "shape (2, 3, 4, 5)"),
    (b"II*\x00" + bytes(20), "cannot decode TIFF"),
])
def test_unreadable_npy_and_tiff_are_one_line_data_errors(tmp_path, content, needle):
    path = tmp_path / "bad.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and needle in message and "\n" not in message


# ----------------------------------------------------------------------------- the pixel limit

def bomb_png(path, width: int = 100_000, height: int = 100_000):
    """A PNG header claiming `width` x `height` grey pixels with almost no data: a decompression bomb as
    the readers see it (they refuse it from the header, before decoding a byte)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("reader", ["read_grey", "read_mask_values", "read_image", "read_index_mask",
                                    "read_rgb_mask"])
def test_a_bomb_is_refused_before_decoding_naming_file_size_and_option(tmp_path, reader):
    from unetlab.data import io as image_io

    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(DataError) as caught:
        getattr(image_io, reader)(bomb)
    message = str(caught.value)
    assert "bomb.png" in message and "100000 x 100000 = 10,000,000,000 pixels" in message
    assert "data.max_pixels" in message and "268,435,456" in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_pixel_limit_applies_to_every_format_and_is_restored(tmp_path, suffix):
    import tifffile

    from unetlab.data.io import DEFAULT_MAX_PIXELS, max_pixels, pixel_limit

    path = tmp_path / f"image{suffix}"
    {".png": lambda: Image.fromarray(GREY).save(path), ".tif": lambda: tifffile.imwrite(path, GREY),
     ".npy": lambda: np.save(path, GREY)}[suffix]()
    with pixel_limit(35, "--max-pixels"):  # 7 x 5 = 35 pixels: exactly at the limit is allowed
        np.testing.assert_array_equal(read_image(path), GREY)
    with pytest.raises(DataError, match=r"image\S* 5 x 7 = 35 pixels, more than the 34 .*\(--max-pixels\)"):
        with pixel_limit(34, "--max-pixels"):
            read_image(path)
    assert max_pixels() == DEFAULT_MAX_PIXELS


def test_our_limit_replaces_pillows_without_a_warning(tmp_path, monkeypatch, recwarn):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; images under our limit read silently
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    path = write(tmp_path / "g.png", Image.fromarray(GREY))
    np.testing.assert_array_equal(read_grey(path), GREY)
    assert Image.MAX_IMAGE_PIXELS == 10 and not [w for w in recwarn if "pixels" in str(w.message)]


def test_train_refuses_a_bomb_in_the_data_with_one_line(tgs_copy, tmp_path, capsys):
    from run_fixtures import TINY, assert_one_line_error, run_cli

    victim = sorted((tgs_copy / "train" / "images").iterdir())[3]
    bomb_png(victim)
    args = ["train", "--data", str(tgs_copy), "--out", str(tmp_path / "run"), "--no-progress"]
    code, _, err = run_cli([*args, *(item for o in TINY for item in ("--set", o))], capsys)
    assert_one_line_error(code, err, victim.name, "data.max_pixels")


def test_train_applies_the_configs_max_pixels(tgs_dir, tmp_path, capsys):
    from run_fixtures import TINY, assert_one_line_error, run_cli

    args = ["train", "--data", str(tgs_dir), "--out", str(tmp_path / "run"), "--no-progress"]
    overrides = [*TINY, "data.cache=false", "data.max_pixels=10000"]  # the images are 101 x 101 = 10,201 pixels
    code, _, err = run_cli([*args, *(item for o in overrides for item in ("--set", o))], capsys)
    assert_one_line_error(code, err, "10,201 pixels", "data.max_pixels")
    assert not (tmp_path / "run").exists()
