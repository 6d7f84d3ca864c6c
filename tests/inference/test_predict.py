import csv

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
