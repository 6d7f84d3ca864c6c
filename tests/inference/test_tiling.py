"""Tiled prediction (inference/tiling.py) and its routing through `Predictor.predict_proba`.

Stated tolerances: tiled and whole-image probabilities of the same model agree within 2e-3 at every
pixel (measured 1e-4 with a random U-Net, about 1e-3 with the trained tiny run); seams: the largest
step between neighbouring pixels across a seam is at most 1.5x the largest step inside the tiles on
a constant and on a ramp (a hard stitch of the same tiles fails this); dihedral TTA commutes with
rotations within 1e-5 (float summation order only).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn

from unetlab.config import load_config
from unetlab.data.synthetic import generate_seismic
from unetlab.errors import ConfigError, UnetlabError
from unetlab.inference.predictor import Predictor, fold_batch_norm
from unetlab.inference.tiling import (check_tiling, coverage, predict_tiled, tile_side, tile_starts, tiles_per_batch,
                                      window)
from unetlab.models import create_model

SMALL = ["model.base_width=4", "model.depth=2", "train.precision=fp32", "train.channels_last=false",
         "data.input_size=64"]


def small_predictor(*overrides: str, seed: int = 0) -> Predictor:
    """A random fp32 U-Net (base width 4, depth 2) with non-trivial batch-norm statistics and a head scaled
    up, so that its probabilities spread over much of (0, 1) as a trained model's do."""
    config = load_config(None, [*SMALL, *overrides])
    torch.manual_seed(seed)
    model = create_model(config.model.name, **config.model.options())
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    return Predictor(model, config, [0.5], [0.25], 0.5, torch.device("cpu"))


def seismic(size: int | tuple[int, int], seed: int = 3) -> np.ndarray:
    return generate_seismic(1, size=size, seed=seed)[0][0]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


# ----------------------------------------------------------------------------- the grid and the window


@pytest.mark.parametrize("length,tile,overlap", [(4096, 1024, 64), (8192, 1024, 64), (2048, 512, 64), (600, 512, 64),
                                                 (1000, 97, 40), (300, 256, 0), (100, 128, 32)])
def test_tiles_cover_the_axis_with_the_overlap_evenly_and_symmetrically(length, tile, overlap):
    side = tile_side(length, tile, overlap)
    starts = tile_starts(length, side, overlap)
    assert side <= tile and starts[0] == 0 and starts[-1] + side == length
    steps = np.diff(starts)
    assert np.all(side - steps >= overlap) and (np.ptp(steps) if len(steps) else 0) <= 1
    if len(starts) % 2 == 0 or (length - side) % 2 == 0:
        assert starts == [length - side - s for s in reversed(starts)]
    if length > tile:  # as few tiles as a side of at most `tile` allows
        assert len(starts) == -(-(length - overlap) // (tile - overlap))


def test_tile_side_by_hand():
    # 4096 px, tile 1024, overlap 64: 5 tiles needed; 5 x 896 - 4 x 64 = 4224 >= 4096 (864 would do, 896 = 28 x 32)
    assert tile_side(4096, 1024, 64) == 896 and tile_starts(4096, 896, 64) == [0, 800, 1600, 2400, 3200]
    assert tile_side(300, 1024, 64) == 300  # fits: the whole axis
    assert tiles_per_batch(32, 128, 512) == 2 and tiles_per_batch(32, 128, 2048) == 1


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_window_is_positive_symmetric_and_peaks_in_the_centre(kind):
    weights = window(64, kind)
    assert np.all(weights > 0) and np.allclose(weights, weights[::-1]) and weights.argmax() in (31, 32)
    assert weights[0] < 0.01 * weights.max()
    with pytest.raises(UnetlabError, match="box"):
        window(8, "box")


def test_coverage_is_the_sum_of_the_windows():
    weights = window(4)
    np.testing.assert_allclose(coverage(6, [0, 2], weights), np.r_[weights, 0, 0] + np.r_[0, 0, weights])


# ----------------------------------------------------------------------------- blending


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_tiles_land_where_they_were_cut(kind):
    """A model that returns its input: any blend of correctly placed tiles gives back the image exactly."""
    image = np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    out = predict_tiled(image, identity, tile=64, overlap=16, kind=kind, batch=3)
    assert out.shape == (3, 150, 230) and out.dtype == np.float32
    np.testing.assert_allclose(out, image.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_one_tile_is_the_whole_image_prediction():
    predictor = small_predictor()
    image = seismic((90, 120))
    tiled = predict_tiled(image, lambda x: predictor._probs_of(x, "none"), tile=128, overlap=16)
    np.testing.assert_allclose(tiled[0], predictor.predict_proba([image], tile=0)[0], atol=1e-6, rtol=0)


def test_tiled_and_whole_image_predictions_agree():
    predictor = small_predictor()
    image = seismic(200)
    whole = predictor.predict_proba([image], tile=0)[0]
    tiled = predictor.predict_proba([image], tile=96, overlap=32)[0]
    assert predictor.uses_tiles(image, 96) and whole.std() > 0.01
    assert np.abs(tiled - whole).max() <= 2e-3


def test_tiled_and_whole_agree_for_the_trained_tiny_run(tiny_run):
    predictor = Predictor.load(tiny_run)
    image = seismic(240)
    whole = predictor.predict_proba([image], tile=0)[0]
    tiled = predictor.predict_proba([image], tile=128, overlap=48)[0]
    assert np.abs(tiled - whole).max() <= 2e-3


def _seam_steps(out: np.ndarray, seams: list[int], margin: int) -> tuple[float, float]:
    """Largest step between horizontal neighbours across the seam columns, and elsewhere (image borders,
    where zero padding acts, left out)."""
    steps = np.abs(np.diff(out, axis=-1))[..., margin:-margin, :]
    at_seam = np.zeros(steps.shape[-1], bool)
    for column in seams:
        at_seam[max(column - 2, 0) : column + 2] = True
    at_seam[:margin] = at_seam[-margin:] = False
    inside = ~at_seam
    inside[:margin] = inside[-margin:] = False
    return float(steps[..., at_seam].max()), float(steps[..., inside].max())


@pytest.mark.parametrize("pattern", ["constant", "ramp"])
def test_seams_are_invisible(pattern):
    predictor = small_predictor(seed=1)
    height, width, tile, overlap = 64, 200, 64, 24
    ramp = np.linspace(40, 210, width)[None, :].repeat(height, 0)
    image = (np.full((height, width), 128.0) if pattern == "constant" else ramp).round().astype(np.uint8)
    probs_of = lambda x: predictor._probs_of(x, "none")  # noqa: E731
    side = tile_side(width, tile, overlap)
    starts = tile_starts(width, side, overlap)
    seams = sorted({s for s in starts[1:]} | {s + side for s in starts[:-1]})
    blended = predict_tiled(image, probs_of, tile, overlap)[0]
    at_seam, inside = _seam_steps(blended, seams, margin=12)
    assert at_seam <= 1.5 * inside + 1e-6, (at_seam, inside)
    # The same tiles stitched hard (each pixel from the last tile that covers it) show their seams.
    stitched = np.zeros_like(blended)
    for start in starts:
        piece = torch.from_numpy(image[None, None, :, start : start + side] / 255.0).float()
        stitched[:, start : start + side] = probs_of(piece)[0, 0].numpy()
    hard_seam, hard_inside = _seam_steps(stitched, seams, margin=12)
    assert hard_seam > 1.5 * hard_inside + 1e-6, (hard_seam, hard_inside)


# ----------------------------------------------------------------------------- memory


def test_memory_is_a_tile_batch_beyond_the_output():
    """Structural: `probs_of` never sees more than `batch` tiles, and numpy's allocations (tracemalloc
    traces them) beyond the output array stay the same when the image grows 4x."""
    calls: list[tuple[int, ...]] = []

    def probs_of(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x[:, :1].clone()

    extra = []
    for side in (256, 512):
        image = np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)
        calls.clear()
        tracemalloc.start()
        out = predict_tiled(image, probs_of, tile=64, overlap=16, batch=2)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert all(shape[0] <= 2 and shape[-2:] == (64, 64) for shape in calls)
        extra.append(peak - out.nbytes)
    tile_batch = 2 * 64 * 64 * 4
    assert max(extra) < 4 * tile_batch and extra[1] < extra[0] + tile_batch, extra


# ----------------------------------------------------------------------------- routing, TTA, tasks


def test_routing_by_tile_and_sizing():
    predictor = small_predictor()
    assert predictor.uses_tiles(np.zeros((100, 513)), 512) and not predictor.uses_tiles(np.zeros((512, 512)), 512)
    assert not predictor.uses_tiles(np.zeros((4000, 4000)), 0)
    assert predictor.config.eval.tile == 1024 and predictor.uses_tiles(np.zeros((1025, 8)))
    assert not small_predictor("data.sizing=resize").uses_tiles(np.zeros((4000, 4000)), 512)
    image = seismic((70, 150))
    direct = predict_tiled(image, lambda x: predictor._probs_of(x, "none"), 96, 32, batch=1)[0]
    np.testing.assert_allclose(predictor.predict_proba([image], tile=96, overlap=32)[0], direct, atol=1e-6)
    with pytest.raises(UnetlabError, match="overlap 96"):
        predictor.predict_proba([image], tile=96, overlap=96)


@pytest.mark.parametrize("tile", [0, 96])
def test_dihedral_tta_commutes_with_rotations_and_flips(tile):
    predictor = small_predictor()
    image = seismic(160)
    base = predictor.predict_proba([image], tta="dihedral", tile=tile, overlap=32)[0]
    turned = predictor.predict_proba([np.rot90(image).copy()], tta="dihedral", tile=tile, overlap=32)[0]
    mirrored = predictor.predict_proba([image[:, ::-1].copy()], tta="dihedral", tile=tile, overlap=32)[0]
    np.testing.assert_allclose(turned, np.rot90(base), atol=1e-5)
    np.testing.assert_allclose(mirrored, base[:, ::-1], atol=1e-5)
    plain = predictor.predict_proba([image], tta="none", tile=tile, overlap=32)[0]
    assert np.abs(np.rot90(plain) - predictor.predict_proba([np.rot90(image).copy()], tta="none", tile=tile,
                                                             overlap=32)[0]).max() > 1e-3  # the model alone is not


def test_dihedral_on_a_non_square_image_keeps_its_shape():
    predictor = small_predictor()
    image = seismic((60, 90))
    probs = predictor.predict_proba([image], tta="dihedral")[0]
    assert probs.shape == (60, 90)
    np.testing.assert_allclose(predictor.predict_proba([np.rot90(image, 2).copy()], tta="dihedral")[0],
                               np.rot90(probs, 2), atol=1e-5)


def test_multiclass_tiles_give_class_probabilities():
    predictor = small_predictor("task=multiclass", "model.classes=3", "model.in_channels=3", "loss.name=ce")
    image = np.random.default_rng(0).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    probs = predictor.predict_proba([image], tile=64, overlap=16)[0]
    assert probs.shape == (3, 100, 140) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert predictor.labels(probs).shape == (100, 140)


def test_folded_batch_norm_is_the_same_function():
    predictor = small_predictor()
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        expected = predictor.model(x)
        folded = fold_batch_norm(predictor.model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in predictor.model.modules())  # the original is kept


# ----------------------------------------------------------------------------- options


def test_tiling_options_are_checked():
    check_tiling(0, 0)
    check_tiling(512, 64)
    with pytest.raises(UnetlabError, match="--tile 8"):
        check_tiling(8, 0)
    with pytest.raises(UnetlabError, match="--tile-overlap 64"):
        check_tiling(64, 64)
    with pytest.raises(ConfigError, match="eval.tile_overlap"):
        load_config(None, ["eval.tile=64", "eval.tile_overlap=64"])
    with pytest.raises(ConfigError, match="eval.tile"):
        load_config(None, ["eval.tile=8"])
    with pytest.raises(ConfigError, match="eval.tile_window"):
        load_config(None, ["eval.tile_window=box"])
    assert load_config(None, ["eval.tta=dihedral", "eval.tile=0"]).eval.tta == "dihedral"


# ----------------------------------------------------------------------------- `unetlab predict` (inference/predict.py)


@pytest.fixture
def mixed_sizes(tmp_path):
    """A small PNG, a large .npy section (300x260, larger than a 128 tile) and a small TIFF, in file order."""
    import tifffile
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(seismic(101, seed=1)).save(folder / "a.png")
    np.save(folder / "b.npy", seismic((300, 260), seed=2))
    tifffile.imwrite(folder / "c.tif", seismic((80, 90), seed=4))
    return folder


def test_a_large_image_is_predicted_alone_in_file_order(tiny_run, mixed_sizes):
    from unetlab.inference.predict import _predicted, collect_images

    predictor = Predictor.load(tiny_run)
    files = collect_images([mixed_sizes])
    chunks = [[path.name for path in paths] for paths, _, _ in _predicted(predictor, files, 32, "none", 128, 32)]
    assert chunks == [["a.png"], ["b.npy"], ["c.tif"]]
    chunks = [[path.name for path in paths] for paths, _, _ in _predicted(predictor, files, 32, "none", 0, 0)]
    assert chunks == [["a.png", "b.npy", "c.tif"]]  # nothing tiles: one chunk


@pytest.mark.parametrize("fmt", ["npy", "png16"])
def test_predict_writes_probabilities_of_tiled_images(tiny_run, mixed_sizes, tmp_path, capsys, fmt):
    from PIL import Image
    from run_fixtures import run_cli

    from unetlab.data.io import read_binary_mask, read_image

    out = tmp_path / "out"
    code, _, err = run_cli(["predict", str(tiny_run), str(mixed_sizes), "--out", str(out), "--tile", "128",
                            "--tile-overlap", "32", "--probabilities", fmt], capsys)
    assert code == 0, err
    predictor = Predictor.load(tiny_run)
    for name in ("a.png", "b.npy", "c.tif"):
        stem = name.split(".")[0]
        expected = predictor.predict_proba([read_image(mixed_sizes / name, channels=1)], tile=128, overlap=32)[0]
        if fmt == "npy":
            stored = np.load(out / "probabilities" / f"{stem}.npy")
            assert stored.dtype == np.float32
            np.testing.assert_allclose(stored, expected, atol=1e-6)
        else:
            stored = np.asarray(Image.open(out / "probabilities" / f"{stem}.png"))
            assert stored.dtype == np.uint16
            np.testing.assert_array_equal(stored, np.round(expected * 65535.0).astype(np.uint16))
        np.testing.assert_array_equal(read_binary_mask(out / "masks" / f"{stem}.png"), predictor.labels(expected) > 0)


def test_multiclass_probabilities_are_saved_per_class(tmp_path):
    from PIL import Image

    from unetlab.inference.predict import save_probabilities

    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 4)).transpose(2, 0, 1).astype(np.float32)
    save_probabilities(tmp_path, "x", probs, "npy", ["sky", "road", "car"])
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), probs)
    save_probabilities(tmp_path, "x", probs, "png16", ["sky", "road", "car"])
    for name, plane in zip(["sky", "road", "car"], probs):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / name / "x.png")),
                                      np.round(plane * 65535.0).astype(np.uint16))


def test_predict_refuses_bad_tiling_on_one_line(tiny_run, mixed_sizes, tmp_path, capsys):
    from run_fixtures import assert_one_line_error, run_cli

    code, _, err = run_cli(["predict", str(tiny_run), str(mixed_sizes), "--out", str(tmp_path / "o"), "--tile", "128",
                            "--tile-overlap", "128"], capsys)
    assert_one_line_error(code, err, "--tile-overlap 128")
    code, _, err = run_cli(["predict", str(tiny_run), str(mixed_sizes), "--out", str(tmp_path / "o"), "--tile", "4"],
                           capsys)
    assert_one_line_error(code, err, "--tile 4")


def test_probability_formats_of_the_cli_and_of_predict_agree():
    from unetlab.cli import ProbabilityFormat
    from unetlab.inference.predict import PROBABILITY_FORMATS

    assert tuple(choice.value for choice in ProbabilityFormat) == PROBABILITY_FORMATS
