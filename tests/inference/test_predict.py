import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetlab.data.io import read_binary_mask, read_grey
from unetlab.data.rle import rle_decode
from unetlab.data.synthetic import generate_seismic
from unetlab.errors import UnetlabError
from unetlab.inference.predict import collect_images, predict
from unetlab.inference.predictor import Predictor


@pytest.fixture
def mixed_images(tmp_path):
    """Three grey images of two sizes, one stored as RGB and one with a misleading .jpg name."""
    folder = tmp_path / "in"
    folder.mkdir()
    big, _ = generate_seismic(2, size=101, seed=5)
    small, _ = generate_seismic(1, size=(64, 80), seed=6)
    Image.fromarray(big[0]).save(folder / "a.png")
    Image.fromarray(np.repeat(big[1][..., None], 3, axis=2)).save(folder / "b.png")
    Image.fromarray(small[0]).save(folder / "c.jpg", format="PNG")  # a PNG named .jpg
    return folder


def test_predict_writes_masks_overlays_and_rle_at_input_size(tiny_run, mixed_images, tmp_path):
    out = tmp_path / "out"
    written = predict(tiny_run, [mixed_images], out, log=lambda _: None)
    assert sorted(p.name for p in written) == ["a.png", "b.png", "c.png"]
    sizes = {"a": (101, 101), "b": (101, 101), "c": (80, 64)}
    for stem, size in sizes.items():
        assert Image.open(out / "masks" / f"{stem}.png").size == size
        overlay = Image.open(out / "overlays" / f"{stem}.png")
        assert overlay.size == size and overlay.mode == "RGB"
    with open(out / "predictions.csv") as handle:
        rows = {r["id"]: r["rle_mask"] for r in csv.DictReader(handle)}
    for stem, (width, height) in sizes.items():
        mask = read_binary_mask(out / "masks" / f"{stem}.png")
        assert np.array_equal(rle_decode(rows[stem], (height, width)), mask)


def test_predict_masks_match_predictor_probabilities(tiny_run, mixed_images, tmp_path):
    predictor = Predictor.load(tiny_run)
    image = read_grey(mixed_images / "a.png")
    prob = predictor.predict_proba([image])[0]
    assert prob.shape == image.shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    threshold = float(np.median(prob))  # a threshold that splits the pixels, so the mask is not trivial
    predict(tiny_run, [mixed_images / "a.png"], tmp_path / "o", threshold=threshold, log=lambda _: None)
    assert np.array_equal(read_binary_mask(tmp_path / "o" / "masks" / "a.png"), prob > threshold)


def test_hflip_tta_is_mirror_symmetric(tiny_run, mixed_images):
    predictor = Predictor.load(tiny_run)
    image = read_grey(mixed_images / "a.png")
    left = predictor.predict_proba([image], tta="hflip")[0]
    right = predictor.predict_proba([image[:, ::-1].copy()], tta="hflip")[0]
    np.testing.assert_allclose(left, right[:, ::-1], atol=1e-5)


def test_batched_prediction_equals_one_by_one(tiny_run):
    predictor = Predictor.load(tiny_run)
    images, _ = generate_seismic(5, seed=9)
    together = predictor.predict_proba(list(images), batch_size=4)
    for image, prob in zip(images, together):
        np.testing.assert_allclose(predictor.predict_proba([image])[0], prob, atol=1e-5)


def test_collect_images_errors(tmp_path):
    with pytest.raises(UnetlabError, match="no such image"):
        collect_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnetlabError, match="no image files"):
        collect_images([tmp_path / "empty"])
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / sub / "same.png")
    with pytest.raises(UnetlabError, match="collide"):
        collect_images([tmp_path / "x", tmp_path / "y"])


def test_bad_threshold_is_refused(tiny_run, mixed_images, tmp_path):
    with pytest.raises(UnetlabError, match="--threshold"):
        predict(tiny_run, [mixed_images], tmp_path / "o", threshold=1.5, log=lambda _: None)


def test_min_area_empties_small_predictions(tiny_run, mixed_images, tmp_path):
    predictor = Predictor.load(tiny_run)
    probs = predictor.predict_proba([read_grey(mixed_images / "a.png")], tta="none")[0]
    salt = int((probs > 0.5).sum())
    kept = predict(tiny_run, [mixed_images / "a.png"], tmp_path / "kept", threshold=0.5, min_area=salt,
                   log=lambda _: None)
    emptied = predict(tiny_run, [mixed_images / "a.png"], tmp_path / "emptied", threshold=0.5, min_area=salt + 1,
                      log=lambda _: None)
    assert read_binary_mask(kept[0]).sum() == salt
    assert read_binary_mask(emptied[0]).sum() == 0
    rows = dict(csv.reader((tmp_path / "emptied" / "predictions.csv").read_text().splitlines()))
    assert rows["a"] == ""


# ---------------------------------------------------------------- never destroys the user's files

def _hashes(root):
    """sha256 of every file under `root` by relative path: the user's files, to compare before and after."""
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _predict_cli(capsys, tiny_run, *args):
    from run_fixtures import run_cli

    return run_cli(["predict", str(tiny_run), *map(str, args)], capsys)


@pytest.fixture
def labelled(tmp_path):
    """A TGS-like folder: train/images and train/masks (ground truth with the images' names)."""
    train = tmp_path / "data" / "train"
    images, _ = generate_seismic(2, size=40, seed=9)
    for name in ("images", "masks"):
        (train / name).mkdir(parents=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(train / "images" / f"s{k}.png")
        Image.fromarray(((image > 128) * 255).astype(np.uint8)).save(train / "masks" / f"s{k}.png")
    return train


@pytest.mark.parametrize("where", ["parent", "input", "masks beside", "masks inside"])
def test_predict_refuses_an_out_folder_holding_the_inputs_or_their_masks(tiny_run, labelled, capsys, where):
    before = _hashes(labelled.parent)
    out, inputs = {"parent": (labelled, labelled / "images"), "input": (labelled / "images", labelled / "images"),
                   "masks beside": (labelled / "masks", labelled / "images"),
                   "masks inside": (labelled, labelled / "images" / "s0.png")}[where]
    code, _, err = _predict_cli(capsys, tiny_run, inputs, "--out", out)
    from run_fixtures import assert_one_line_error

    assert_one_line_error(code, err, f"--out {out}", "another folder")
    assert _hashes(labelled.parent) == before  # nothing changed, nothing added


def test_predict_never_overwrites_files_it_did_not_write(tiny_run, labelled, tmp_path, capsys):
    from run_fixtures import assert_one_line_error

    truth = tmp_path / "truth"  # ground-truth masks copied elsewhere, named like the predictions
    (truth / "masks").mkdir(parents=True)
    (truth / "masks" / "s1.png").write_bytes((labelled / "masks" / "s1.png").read_bytes())
    (truth / "notes.txt").write_text("mine\n")
    before = _hashes(truth)
    code, _, err = _predict_cli(capsys, tiny_run, labelled / "images", "--out", truth)
    assert_one_line_error(code, err, str(truth / "masks" / "s1.png"), "--overwrite", "--out")
    assert _hashes(truth) == before
    code, _, err = _predict_cli(capsys, tiny_run, labelled / "images", "--out", truth, "--overwrite")
    assert code == 0, err
    assert (truth / "notes.txt").read_text() == "mine\n"
    assert read_binary_mask(truth / "masks" / "s1.png").shape == (40, 40)


@pytest.mark.parametrize("existing", ["predictions.csv", "overlays/s0.png", "probabilities/s0.npy"])
def test_every_output_name_is_checked_before_anything_is_written(tiny_run, labelled, tmp_path, capsys, existing):
    from run_fixtures import assert_one_line_error

    out = tmp_path / "out"
    (out / existing).parent.mkdir(parents=True, exist_ok=True)
    (out / existing).write_bytes(b"user data")
    code, _, err = _predict_cli(capsys, tiny_run, labelled / "images", "--out", out, "--probabilities", "npy")
    assert_one_line_error(code, err, str(out / existing), "--overwrite")
    assert _hashes(out) == {existing: _hashes(out)[existing]} and (out / existing).read_bytes() == b"user data"


def test_predict_replaces_its_own_earlier_output_without_overwrite(tiny_run, labelled, tmp_path):
    from unetlab.inference.predict import MANIFEST

    out = tmp_path / "out"
    predict(tiny_run, [labelled / "images"], out, log=lambda _: None)
    first = _hashes(out)
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(name for name in first if name != MANIFEST)
    predict(tiny_run, [labelled / "images"], out, log=lambda _: None)  # a rerun: its own files, no --overwrite
    assert _hashes(out) == first


def test_predict_out_naming_a_file_is_one_line(tiny_run, labelled, tmp_path, capsys):
    from run_fixtures import assert_one_line_error

    target = tmp_path / "result.png"
    target.write_bytes(b"keep me")
    code, _, err = _predict_cli(capsys, tiny_run, labelled / "images", "--out", target)
    assert_one_line_error(code, err, str(target), "is a file")
    assert target.read_bytes() == b"keep me"


def test_segy_output_names_are_checked_before_the_volume_is_read(tiny_run, tmp_path, capsys):
    from run_fixtures import assert_one_line_error

    (tmp_path / "in").mkdir()
    volume = tmp_path / "in" / "vol.sgy"
    volume.write_bytes(b"never read: the refusal comes first")
    out = tmp_path / "results" / "out"  # not beside the input folder (that alone is refused)
    (out / "previews").mkdir(parents=True)
    for name in ("vol-salt-mask.npy", "previews/vol-inline-12.5.png"):
        (out / name).write_bytes(b"user data")
        code, _, err = _predict_cli(capsys, tiny_run, volume, "--out", out, "--segy-write", "mask", "--segy-format",
                                    "npy", "--segy-preview", "12.5")
        assert_one_line_error(code, err, str(out / name), "--overwrite")
        (out / name).unlink()
    assert not any(out.rglob("*.*"))


def test_the_manifest_lists_exactly_the_files_predict_wrote(tiny_run, labelled, tmp_path):
    """Images and a SEG-Y volume with every output switched on: the names checked beforehand (and listed
    in the manifest) are the names written, so the check covers every file."""
    import segyio.tools

    from unetlab.inference.predict import MANIFEST

    volume = tmp_path / "vol.sgy"
    segyio.tools.from_array(str(volume), np.random.default_rng(0).normal(size=(3, 4, 24)).astype(np.float32))
    out = tmp_path / "results"
    predict(tiny_run, [volume, labelled / "images"], out, probabilities="png16", log=lambda _: None,
            segy={"write": "mask", "formats": ("segy", "npy"), "previews": (2,), "axis": "crossline", "clip": 1.0})
    written = sorted(name for name in _hashes(out) if name != MANIFEST)
    assert written == sorted(json.loads((out / MANIFEST).read_text())["files"])
    assert {"vol-salt-mask.sgy", "vol-salt-mask.npy", "vol-salt.json", "previews/vol-crossline-2.png",
            "probabilities/s0.png", "predictions.csv"} <= set(written)


# ---------------------------------------------------------------- huge images: limit and bounded memory

@pytest.mark.parametrize("multiclass", [False, True])
def test_overlays_drawn_in_bands_equal_the_whole_image(monkeypatch, multiclass):
    from unetlab.inference import predict as module
    from unetlab.viz import colorize_labels, label_palette, overlay_boundary

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 23), dtype=np.uint8)
    labels = (rng.random((37, 23)) < 0.5).astype(np.uint8) * (2 if multiclass else 1)
    palette = label_palette(3)
    if multiclass:
        draw, halo = (lambda im, lab: module._blend(im, colorize_labels(lab, palette))), 0
    else:
        draw, halo = (lambda im, lab: overlay_boundary(im, lab.astype(bool))), 1
    whole = draw(image, labels)
    monkeypatch.setattr(module, "BAND_PIXELS", 23 * 4)  # bands of 4 rows
    np.testing.assert_array_equal(module._in_row_bands(draw, image, labels, halo=halo), whole)


def test_a_large_image_is_predicted_in_bounded_memory(tiny_run, tmp_path, monkeypatch):
    """Peak NumPy memory of predicting one 1200 x 1000 image in tiles stays within ~16 bytes per pixel:
    the image (1), its probabilities (4), the mask (1), the overlay (3) and RLE temporaries; an overlay
    computed in float64 at once (24 bytes per pixel) would break it. (tracemalloc sees NumPy's buffers;
    the model runs tile by tile.)"""
    import tracemalloc

    from unetlab.inference import predict as module

    monkeypatch.setattr(module, "BAND_PIXELS", 1 << 16)
    image, _ = generate_seismic(1, size=(1200, 1000), seed=1)
    Image.fromarray(image[0]).save(tmp_path / "big.png")
    tracemalloc.start()
    try:
        predict(tiny_run, [tmp_path / "big.png"], tmp_path / "out", tile=256, tile_overlap=16, log=lambda _: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read_binary_mask(tmp_path / "out" / "masks" / "big.png").shape == (1200, 1000)
    assert peak < 16 * 1200 * 1000, peak / (1200 * 1000)


def test_an_image_over_the_pixel_limit_is_refused_naming_the_option(tiny_run, labelled, tmp_path, capsys):
    from run_fixtures import assert_one_line_error

    before = _hashes(labelled)
    code, _, err = _predict_cli(capsys, tiny_run, labelled / "images", "--out", tmp_path / "o", "--max-pixels", 1000)
    assert_one_line_error(code, err, "s0.png", "40 x 40 = 1,600 pixels", "--max-pixels")
    assert _hashes(labelled) == before
