"""Figures: pixel-exact overlays are checked pixel by pixel; matplotlib figures only for being valid PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from unetlab import viz


def _square(n: int = 7, lo: int = 1, hi: int = 6) -> np.ndarray:
    mask = np.zeros((n, n), dtype=bool)
    mask[lo:hi, lo:hi] = True
    return mask


def _grey(h: int = 101, w: int = 101, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _disc(h: int = 101, w: int = 101, cy: float = 50, cx: float = 50, r: float = 20) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 < r**2


def _check_png(path) -> tuple[int, int]:
    """A complete PNG at `path`, and no temp file left beside it."""
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes every byte: a truncated file fails here
        size = im.size
    assert size[0] > 0 and size[1] > 0
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp.png")]
    return size


# --------------------------------------------------------------------------- boundary


def test_boundary_of_filled_square_is_its_outline_ring():
    mask = _square()  # rows/cols 1..5 filled in a 7x7 image
    expected = mask.copy()
    expected[2:5, 2:5] = False  # the 3x3 inside touches only mask pixels
    got = viz.boundary(mask)
    assert got.dtype == bool and got.shape == mask.shape
    np.testing.assert_array_equal(got, expected)


def test_boundary_empty_and_full_masks_have_none():
    assert not viz.boundary(np.zeros((5, 6), bool)).any()
    # outside the image counts as mask, so a full mask has no edge to outline
    assert not viz.boundary(np.ones((5, 6), bool)).any()


def test_boundary_at_image_edge_only_where_it_touches_background():
    mask = np.zeros((5, 5), bool)
    mask[:, :2] = True  # left two columns: salt cut by the image edge
    got = viz.boundary(mask)
    expected = np.zeros_like(mask)
    expected[:, 1] = True  # column 0 touches only mask pixels and the image edge
    np.testing.assert_array_equal(got, expected)


def test_boundary_single_pixel_and_non_bool_masks():
    mask = np.zeros((3, 3), np.uint8)
    mask[1, 1] = 255  # 0/255 masks as read from PNG
    np.testing.assert_array_equal(viz.boundary(mask), mask == 255)
    with pytest.raises(ValueError):
        viz.boundary(np.zeros((3, 3, 3), bool))


# --------------------------------------------------------------------------- overlay


def test_overlay_boundary_grey_image():
    img = _grey()
    mask = _disc()
    out = viz.overlay_boundary(img, mask, color=(255, 40, 40), fill_alpha=0.25)
    assert out.shape == (101, 101, 3) and out.dtype == np.uint8
    edge = viz.boundary(mask)
    assert (out[edge] == [255, 40, 40]).all()
    # far from the mask: the grey value repeated in all three channels
    far = ~_disc(r=30)
    np.testing.assert_array_equal(out[far], np.repeat(img[far][:, None], 3, axis=1))
    inner = mask & ~edge
    expected = np.rint(0.75 * img[inner][:, None].astype(float) + 0.25 * np.array([255, 40, 40]))
    np.testing.assert_array_equal(out[inner], expected.astype(np.uint8))
    np.testing.assert_array_equal(img, _grey())  # input untouched


def test_overlay_boundary_rgb_image_no_fill_and_thickness():
    rgb = np.stack([_grey(seed=1), _grey(seed=2), _grey(seed=3)], axis=-1)
    mask = _disc()
    out = viz.overlay_boundary(rgb, mask, color=(0, 0, 255), fill_alpha=0.0)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    edge = viz.boundary(mask)
    assert (out[edge] == [0, 0, 255]).all()
    np.testing.assert_array_equal(out[~edge], rgb[~edge])  # no tint anywhere else
    thick = viz.overlay_boundary(rgb, mask, color=(0, 0, 255), fill_alpha=0.0, thickness=3)
    painted = (thick == [0, 0, 255]).all(axis=-1)
    assert painted.sum() > edge.sum() and not (painted & ~mask).any()  # thicker, inwards only


def test_overlay_boundary_rejects_bad_input():
    with pytest.raises(ValueError, match="does not match"):
        viz.overlay_boundary(_grey(), np.zeros((50, 50), bool))
    with pytest.raises(ValueError):
        viz.overlay_boundary(_grey(), _disc(), fill_alpha=1.5)
    with pytest.raises(ValueError):
        viz.overlay_boundary(_grey(), _disc(), color=(300, 0, 0))


def test_save_overlay_exact_pixel_size_and_parents(tmp_path):
    img, mask = _grey(), _disc()
    out = tmp_path / "a" / "b" / "overlay.png"
    assert viz.save_overlay(out, img, mask, fill_alpha=0.4) == out
    assert _check_png(out) == (101, 101)
    with Image.open(out) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), viz.overlay_boundary(img, mask, fill_alpha=0.4))
    wide = tmp_path / "wide.png"
    viz.save_overlay(wide, np.zeros((30, 70, 3), np.uint8), np.zeros((30, 70), bool))
    assert _check_png(wide) == (70, 30)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "overlay.png"
    viz.save_overlay(out, _grey(), _disc())
    before = out.read_bytes()

    def boom(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:  # half a file, then the failure
            f.write(b"\x89PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        viz.save_overlay(out, _grey(seed=5), _disc(r=10))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


# --------------------------------------------------------------------------- figures


def _rows(n: int, probability: bool, truth_none_at: int | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        truth = _disc(cy=30 + 5 * i, r=15) if i % 3 else np.zeros((101, 101), bool)
        pred = np.roll(truth, 4, axis=1)
        row = {
            "image": _grey(seed=i),
            "truth": None if i == truth_none_at else truth,
            "prediction": pred,
            "label": f"train {i:06x}  cov {truth.mean():.0%}  IoU 0.{i}1",
        }
        if probability:
            row["probability"] = np.clip(pred * 0.8 + 0.1, 0, 1).astype(np.float32)
        rows.append(row)
    return rows


def test_prediction_grid_with_and_without_probability(tmp_path):
    plain = viz.save_prediction_grid(tmp_path / "plain.png", _rows(3, probability=False), title="seeds")
    with_prob = viz.save_prediction_grid(tmp_path / "sub" / "prob.png", _rows(3, probability=True))
    w_plain, h_plain = _check_png(plain)
    w_prob, _ = _check_png(with_prob)
    assert w_prob > w_plain + 100  # the probability column was added
    assert h_plain > 3 * 150  # images are shown big, not thumbnails


def test_prediction_grid_truth_none_empty_masks_and_many_rows(tmp_path):
    rows = _rows(10, probability=True, truth_none_at=1)
    rows[2]["prediction"] = np.ones((101, 101), bool)  # constant masks have no contour
    del rows[3]["probability"]  # a row without a map beside rows with one
    del rows[4]["label"]
    out = viz.save_prediction_grid(tmp_path / "grid.png", rows)
    _, h10 = _check_png(out)
    _, h3 = _check_png(viz.save_prediction_grid(tmp_path / "g3.png", rows[:3]))
    assert h10 > 3 * h3 - 300  # rows keep their size as the count grows


def test_prediction_grid_rgb_and_bad_input(tmp_path):
    rgb = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    out = viz.save_prediction_grid(tmp_path / "rgb.png", [{"image": rgb, "truth": None, "prediction": mask}])
    _check_png(out)
    with pytest.raises(ValueError):
        viz.save_prediction_grid(tmp_path / "x.png", [])
    with pytest.raises(ValueError, match="unknown columns"):
        viz.save_prediction_grid(tmp_path / "x.png", _rows(1, False), columns=("image", "nope"))
    assert not (tmp_path / "x.png").exists()


def test_learning_curves_with_nans_strings_and_gaps(tmp_path):
    history = []
    for e in range(1, 9):
        history.append({
            "epoch": e,
            "train/loss": 1.0 / e,
            "val/loss": float("nan") if e % 3 == 0 else 1.2 / e,
            "val/tgs_map": "" if e == 1 else str(0.1 * e),  # csv.DictReader gives strings
            "val/iou": math.nan,  # never logged: no panel
            "lr": 1e-3 * 0.9**e,
        })
    _check_png(viz.save_learning_curves(tmp_path / "curves" / "all.png", history))
    _check_png(viz.save_learning_curves(tmp_path / "one.png", history[:1]))
    _check_png(viz.save_learning_curves(tmp_path / "keys.png", history, keys=["val/tgs_map", "missing"]))
    _check_png(viz.save_learning_curves(tmp_path / "empty.png", []))  # placeholder, not a crash


def test_threshold_curve(tmp_path):
    t = np.linspace(0.05, 0.95, 19)
    precision = 0.6 + 0.4 * t
    precision[-1] = np.nan  # no predicted salt at the top threshold
    out = viz.save_threshold_curve(tmp_path / "thr.png", t, precision, 1 - t**2, tgs_map=0.7 - (t - 0.5) ** 2, chosen=0.45)
    _check_png(out)
    _check_png(viz.save_threshold_curve(tmp_path / "plain.png", [0.3, 0.5], [0.5, 0.6], [0.9, 0.7]))
    with pytest.raises(ValueError, match="thresholds"):
        viz.save_threshold_curve(tmp_path / "bad.png", t, precision[:5], 1 - t)


def test_sample_grid(tmp_path):
    images = [_grey(seed=i) for i in range(8)]
    masks = [_disc(r=5 + 3 * i) for i in range(8)]
    masks[3] = None  # image without a mask
    w6, _ = _check_png(viz.save_sample_grid(tmp_path / "s" / "grid.png", images, masks, labels=[f"s{i}" for i in range(8)]))
    w2, _ = _check_png(viz.save_sample_grid(tmp_path / "narrow.png", images[:3], masks[:3], ncols=2))
    assert w6 > w2
    with pytest.raises(ValueError):
        viz.save_sample_grid(tmp_path / "bad.png", images, masks[:2])
    with pytest.raises(ValueError):
        viz.save_sample_grid(tmp_path / "bad.png", images, masks, labels=["a"])


# --------------------------------------------------------------------------- label maps (multiclass)


CAMVID_SEGNET_COLOURS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                         (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]


@pytest.mark.parametrize("num_classes", [1, 2, 11, 21, 150, 300])
def test_label_palette_distinct_deterministic_never_black(num_classes):
    pal = viz.label_palette(num_classes)
    assert pal.dtype == np.uint8 and pal.shape == (num_classes, 3)
    assert len({tuple(c) for c in pal.tolist()}) == num_classes  # distinct
    assert not (pal == 0).all(axis=1).any()  # black is kept for ignored pixels
    np.testing.assert_array_equal(pal, viz.label_palette(num_classes))  # deterministic
    # a prefix of the same sequence: class k keeps its colour as C grows; 11 classes are not CamVid's by count
    np.testing.assert_array_equal(pal, viz.label_palette(400)[:num_classes])


def test_label_palette_takes_the_formats_own_colours():
    from unetlab.data.formats.camvid import CAMVID_CLASSES, CAMVID_COLOURS

    assert CAMVID_CLASSES[0] == "Sky" and CAMVID_CLASSES[-1] == "Bicyclist"
    assert CAMVID_COLOURS == CAMVID_SEGNET_COLOURS  # the reader owns SegNet's colours, in its class order
    pal = viz.label_palette(11, CAMVID_COLOURS)
    assert pal.dtype == np.uint8 and pal.tolist() == [list(c) for c in CAMVID_SEGNET_COLOURS]
    assert viz.label_palette(11).tolist() != pal.tolist()  # without it: the generic colours
    with pytest.raises(ValueError, match="one"):
        viz.label_palette(3, CAMVID_COLOURS)  # not one colour per class
    with pytest.raises(ValueError, match="0..255"):
        viz.label_palette(1, [(0, 0, 256)])
    with pytest.raises(ValueError):
        viz.label_palette(0)
    with pytest.raises(TypeError):
        viz.label_palette(2.0)


def test_colorize_labels_exact_colours_and_ignored_black():
    pal = viz.label_palette(11, CAMVID_SEGNET_COLOURS)
    mask = np.array([[0, 1, 2], [10, 11, 3]], dtype=np.uint8)  # 11 = CamVid Unlabelled
    rgb = viz.colorize_labels(mask, pal, ignore_index=11)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    expected = np.array([[CAMVID_SEGNET_COLOURS[0], CAMVID_SEGNET_COLOURS[1], CAMVID_SEGNET_COLOURS[2]],
                         [CAMVID_SEGNET_COLOURS[10], (0, 0, 0), CAMVID_SEGNET_COLOURS[3]]], dtype=np.uint8)
    np.testing.assert_array_equal(rgb, expected)
    # VOC-style 255 ignore, float (augmented) and (H, W, 1) masks, bool masks as classes 0/1
    pal3 = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    voc = np.array([[0, 255], [2, 1]])
    want = np.array([[[10, 20, 30], [0, 0, 0]], [[70, 80, 90], [40, 50, 60]]], dtype=np.uint8)
    np.testing.assert_array_equal(viz.colorize_labels(voc, pal3, ignore_index=255), want)
    np.testing.assert_array_equal(viz.colorize_labels((voc + 1e-6).astype(np.float32)[:, :, None], pal3, 255), want)
    np.testing.assert_array_equal(viz.colorize_labels(np.array([[True, False]]), pal3), pal3[[[1, 0]]])
    # a value that is neither a class nor the ignore label is refused, naming it
    with pytest.raises(ValueError, match="255"):
        viz.colorize_labels(voc, pal3)
    with pytest.raises(ValueError, match="-1"):
        viz.colorize_labels(np.array([[0, -1]]), pal3, ignore_index=255)
    with pytest.raises(ValueError):
        viz.colorize_labels(np.zeros((2, 2, 3), int), pal3)


def test_save_multiclass_samples_writes_a_png_with_legend(tmp_path):
    from unetlab.data.formats.camvid import CAMVID_CLASSES, VOC_CLASSES

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:60, :80]
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(3)]
    truths = [(x // 8 + i) % 12 for i in range(3)]  # includes 11 = ignored
    preds = [(x // 8 + y // 20) % 11 for _ in range(3)]
    out = viz.save_multiclass_samples(tmp_path / "fig" / "camvid.png", images, truths, preds, CAMVID_CLASSES,
                                      palette=CAMVID_SEGNET_COLOURS,
                                      ignore_index=11, titles=["0001TP_006690  mIoU 0.41", "b", "c"])
    w3, h3 = _check_png(out)
    assert 400 <= w3 <= 1200 and 400 <= h3 <= 1600
    # fewer rows -> shorter figure; grey images, missing truth/prediction, VOC's 21 classes + 255
    voc_truth = np.where((x + y) % 17 == 0, 255, (x // 4) % 21)
    w1, h1 = _check_png(viz.save_multiclass_samples(tmp_path / "voc.png", [_grey(60, 80)], [voc_truth], [None],
                                                    VOC_CLASSES, ignore_index=255))
    assert h1 < h3
    _check_png(viz.save_multiclass_samples(tmp_path / "none.png", [_grey(60, 80)], [None], [preds[0]], CAMVID_CLASSES))
    with pytest.raises(ValueError, match="does not match"):
        viz.save_multiclass_samples(tmp_path / "bad.png", images[:1], [truths[0][:30]], [preds[0]], CAMVID_CLASSES, 11)
    with pytest.raises(ValueError, match="one each"):
        viz.save_multiclass_samples(tmp_path / "bad.png", images, truths[:2], preds, CAMVID_CLASSES, 11)
    with pytest.raises(ValueError, match="11"):  # ignore label not declared
        viz.save_multiclass_samples(tmp_path / "bad.png", images[2:], truths[2:], preds[2:], CAMVID_CLASSES)
    assert not (tmp_path / "bad.png").exists()


def test_prediction_grid_shows_ignored_pixels_grey_not_background(tmp_path):
    """A pet trimap's border is neither pet nor background: the truth panel paints it grey, the prediction
    panel veils it in grey, and the figure is still drawn whole."""
    from matplotlib.figure import Figure

    image, truth, prediction = _grey(8, 8), _square(8, 2, 6), _square(8, 3, 7)
    valid = np.ones((8, 8), bool)
    valid[0, :] = False  # a border row: background in the mask, ignored in truth
    row = viz._GridRow.of({"image": image, "truth": truth, "prediction": prediction, "valid": valid})
    ax = Figure().add_subplot()
    viz._grid_truth(ax, row, 100.0)
    shown = np.asarray(ax.images[-1].get_array())
    assert (shown[0] == viz.IGNORED_GREY).all()
    assert (shown[2:6, 2:6] == 255).all() and (shown[7, 7] == 0).all()
    ax = Figure().add_subplot()
    viz._grid_prediction(ax, row, 100.0)
    veil = np.asarray(ax.images[-1].get_array())  # the last layer: RGBA, opaque-ish only where ignored
    assert veil.shape == (8, 8, 4) and (veil[0, :, 3] > 0.5).all() and (veil[1:, :, 3] == 0).all()
    all_valid = viz._GridRow.of({"image": image, "truth": truth, "prediction": prediction,
                                 "valid": np.ones((8, 8), bool)})
    assert all_valid.ignored is None  # nothing ignored: no veil layer at all
    _check_png(viz.save_prediction_grid(tmp_path / "g.png", [{"image": image, "truth": truth,
                                                              "prediction": prediction, "valid": valid}]))
