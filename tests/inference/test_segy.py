"""SEG-Y volumes: geometry from headers, amplitude mapping, slice-by-slice prediction and its outputs.

The volumes are written here with segyio from the synthetic generator. Most tests use a model-free
per-pixel predictor (probability = grey / 255), whose cube cannot depend on how the volume is sliced:
a strong check of reading, orientation and writing. One test runs the tiny trained model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import segyio
from PIL import Image

from unetlab.data.synthetic import generate_seismic
from unetlab.errors import DataError, UnetlabError
from unetlab.inference import segy
from unetlab.inference.predictor import Predictor
from unetlab.inference.segy import AmplitudeMapping, is_segy, predict_segy, preview_segy

N_IL, N_XL, NS = 6, 10, 64
INLINES = np.arange(100, 100 + N_IL)
CROSSLINES = np.arange(20, 20 + 2 * N_XL, 2)
CLIP = 0.9


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """Amplitudes (inline, crossline, sample): each inline one synthetic section, zero at grey 128."""
    images, _ = generate_seismic(N_IL, size=(NS, N_XL), seed=3)
    return ((images.astype(np.float32) - 128.0) * 0.01).transpose(0, 2, 1).copy()


def write_segy(path: Path, traces: np.ndarray, positions: list[tuple[int, int]], fmt: int = 5,
               endian: str = "big") -> Path:
    """A SEG-Y file of `traces` (n, samples) at (inline, crossline) `positions`, with distinct headers."""
    spec = segyio.spec()
    spec.samples = list(np.arange(traces.shape[1]) * 4.0)
    spec.format, spec.tracecount, spec.endian = fmt, len(traces), endian
    with segyio.create(str(path), spec) as f:
        f.text[0] = segyio.tools.create_text_header({1: "unetlab test volume", 2: f"{len(traces)} traces"})
        for t, (il, xl) in enumerate(positions):
            f.header[t] = {segyio.su.iline: int(il), segyio.su.xline: int(xl), segyio.su.cdpx: 1000 + 7 * t,
                           segyio.su.cdpy: 5000 - 3 * t, segyio.su.tracf: t + 1, segyio.su.offset: 0}
            f.trace[t] = traces[t]
        f.bin.update(jobid=42, lino=7)
    return path


def cube_file(path: Path, cube: np.ndarray, order: np.ndarray | None = None, **kw) -> Path:
    """`cube` as SEG-Y, traces in inline-major order or in `order` (indices into that order)."""
    positions = [(il, xl) for il in INLINES for xl in CROSSLINES]
    traces = cube.reshape(-1, NS)
    order = np.arange(len(positions)) if order is None else order
    return write_segy(path, traces[order], [positions[k] for k in order], **kw)


def grey(amplitudes: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """Reference mapping: linear [-clip, clip] -> [0, 255], rounded."""
    return np.rint(127.5 + 127.5 * np.clip(amplitudes.astype(np.float64) / clip, -1, 1)).astype(np.uint8)


class PixelModel:
    """A predictor stand-in: probability = grey / 255 per pixel; records every image it is given."""

    threshold, min_area, min_component, operating_point = 0.5, 0, 0, None
    task = SimpleNamespace(name="binary")
    config = SimpleNamespace(model=SimpleNamespace(in_channels=1), eval=SimpleNamespace(tta="none"))

    def __init__(self, fail_at: int | None = None):
        self.seen: list[np.ndarray] = []
        self.fail_at = fail_at

    def predict_proba(self, images, tta=None, tile=None, overlap=None):  # Predictor.predict_proba's keywords
        if len(self.seen) == self.fail_at:
            raise RuntimeError("model failed")
        self.seen.append(images[0].copy())
        return [images[0].astype(np.float32) / 255.0]

    def labels(self, prob, threshold=None, min_area=None, min_component=None):
        return (prob > threshold).astype(np.uint8)


def read_traces(path: Path, endian: str = "big") -> np.ndarray:
    with segyio.open(str(path), ignore_geometry=True, endian=endian) as f:
        return f.trace.raw[:]


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_is_segy_by_name():
    assert is_segy("a/b.sgy") and is_segy("B.SEGY") and not is_segy("b.png") and not is_segy("sgy")


def test_mapping_hand_computed():
    amplitudes = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert AmplitudeMapping(1.0, "given").to_uint8(amplitudes).tolist() == [0, 0, 128, 191, 255, 255]
    assert AmplitudeMapping(1.0, "given", True).to_uint8(amplitudes).tolist() == [255, 255, 128, 64, 0, 0]


def test_regular_cube_round_trip_keeps_headers_and_geometry(cube, tmp_path):
    source = cube_file(tmp_path / "vol.sgy", cube)
    out = tmp_path / "out"
    result = predict_segy(PixelModel(), source, out, clip=CLIP, formats=("segy", "npy"), log=quiet)
    expected = grey(cube) / np.float32(255.0)  # (inline, crossline, sample)
    np.testing.assert_array_equal(np.load(out / "vol-salt-probability.npy"), expected)

    written = (out / "vol-salt-probability.sgy").read_bytes()
    original = source.read_bytes()
    assert written[:3200] == original[:3200]  # textual header
    assert written[3200:3224] + written[3226:3600] == original[3200:3224] + original[3226:3600]
    assert int.from_bytes(written[3224:3226], "big") == 5  # binary header: IEEE float samples
    with segyio.open(str(source), ignore_geometry=True) as a, \
            segyio.open(str(out / "vol-salt-probability.sgy"), ignore_geometry=True) as b:
        assert b.tracecount == a.tracecount and np.array_equal(b.samples, a.samples)
        assert all(dict(a.header[t]) == dict(b.header[t]) for t in range(a.tracecount))
        np.testing.assert_array_equal(b.trace.raw[:], expected.reshape(-1, NS))
    trace_bytes = 240 + 4 * NS  # every trace header byte for byte
    for t in range(N_IL * N_XL):
        start = 3600 + t * trace_bytes
        assert written[start:start + 240] == original[start:start + 240]

    sidecar = json.loads((out / "vol-salt.json").read_text())
    assert sidecar["amplitude_mapping"]["clip"] == CLIP and sidecar["geometry"]["kind"] == "cube"
    assert sidecar["geometry"]["shape"] == [N_IL, N_XL, NS] and result["sidecar"] == str(out / "vol-salt.json")


def test_every_axis_gives_the_same_cube(cube, tmp_path):
    source = cube_file(tmp_path / "vol.sgy", cube)
    cubes, shapes = {}, {}
    for axis in ("inline", "crossline", "time"):
        model = PixelModel()
        out = tmp_path / axis
        # time slices in blocks of 5 samples: several blocks and a short last one
        predict_segy(model, source, out, axis=axis, clip=CLIP, write="mask", formats=("segy", "npy"),
                     block_bytes=5 * 4 * N_IL * N_XL, log=quiet)
        cubes[axis] = (np.load(out / "vol-salt-mask.npy"), read_traces(out / "vol-salt-mask.sgy"))
        shapes[axis] = {image.shape for image in model.seen}, len(model.seen)
    assert shapes == {"inline": ({(NS, N_XL)}, N_IL), "crossline": ({(NS, N_IL)}, N_XL),
                      "time": ({(N_IL, N_XL)}, NS)}
    expected = (grey(cube) > 127.5).astype(np.uint8)
    for axis, (npy, traces) in cubes.items():
        assert npy.dtype == np.uint8
        np.testing.assert_array_equal(npy, expected, err_msg=axis)
        np.testing.assert_array_equal(traces, expected.reshape(-1, NS).astype(np.float32), err_msg=axis)


def test_inline_slices_are_sections_with_depth_down(cube, tmp_path):
    model = PixelModel()
    predict_segy(model, cube_file(tmp_path / "vol.sgy", cube), tmp_path / "out", clip=CLIP, log=quiet)
    np.testing.assert_array_equal(model.seen[2], grey(cube[2].T))  # rows = samples, columns = crosslines


def test_unsorted_traces_with_gaps_are_placed_by_their_headers(cube, tmp_path):
    rng = np.random.default_rng(0)
    order = rng.permutation(N_IL * N_XL)
    dropped, order = order[:3], order[3:]  # three missing traces, the rest shuffled
    source = cube_file(tmp_path / "irr.sgy", cube, order)
    model = PixelModel()
    result = predict_segy(model, source, tmp_path / "out", axis="crossline", clip=CLIP,
                          formats=("segy", "npy"), log=quiet)
    assert result["geometry"]["kind"] == "cube" and result["geometry"]["missing_traces"] == 3
    expected = (grey(cube) / np.float32(255.0)).reshape(-1, NS)
    npy = np.load(tmp_path / "out" / "irr-salt-probability.npy").reshape(-1, NS)
    assert np.isnan(npy[dropped]).all()
    kept = np.setdiff1d(np.arange(N_IL * N_XL), dropped)
    np.testing.assert_array_equal(npy[kept], expected[kept])
    np.testing.assert_array_equal(read_traces(tmp_path / "out" / "irr-salt-probability.sgy"), expected[order])
    gap = dropped[0]  # the model saw mid-grey (zero amplitude) where the trace is missing
    assert (model.seen[gap % N_XL][:, gap // N_XL] == 128).all()


def test_a_2d_line_is_one_section(cube, tmp_path):
    section = cube[1]  # (traces, samples)
    source = write_segy(tmp_path / "line.sgy", section, [(7, 0)] * N_XL)  # no crossline numbers at all
    out = tmp_path / "out"
    result = predict_segy(PixelModel(), source, out, clip=CLIP, formats=("npy",), previews=[7], log=quiet)
    assert result["geometry"]["kind"] == "line"
    np.testing.assert_array_equal(np.load(out / "line-salt-probability.npy"), grey(section) / np.float32(255.0))
    assert (out / "previews" / "line-inline-7.png").is_file()
    with pytest.raises(UnetlabError, match="2-D line.*axis inline"):
        predict_segy(PixelModel(), source, tmp_path / "o2", axis="time", clip=CLIP, log=quiet)
    diagonal = write_segy(tmp_path / "crooked.sgy", section, [(k, k) for k in range(N_XL)])  # 10% of its grid
    crooked = predict_segy(PixelModel(), diagonal, tmp_path / "o3", clip=CLIP, formats=("npy",), log=quiet)
    assert crooked["geometry"]["kind"] == "line" and "too sparse" in crooked["geometry"]["note"]
    assert np.load(tmp_path / "o3" / "crooked-salt-probability.npy").shape == (N_XL, NS)


def test_two_traces_at_one_position_is_an_error(cube, tmp_path):
    positions = [(il, xl) for il in INLINES[:2] for xl in CROSSLINES[:3]]
    positions[4] = positions[1]
    source = write_segy(tmp_path / "dup.sgy", cube[:2, :3].reshape(-1, NS), positions)
    with pytest.raises(DataError, match=r"traces 1 and 4 are both at inline 100, crossline 22 \(bytes 189/193") as err:
        predict_segy(PixelModel(), source, tmp_path / "out", clip=CLIP, log=quiet)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_clip_percentile_over_live_traces(cube, tmp_path, monkeypatch):
    with_dead = cube.copy()
    with_dead[0, :4] = 0.0  # dead traces stay out of the estimate
    source = cube_file(tmp_path / "vol.sgy", with_dead)
    result = predict_segy(PixelModel(), source, tmp_path / "out", clip_percentile=95, formats=("npy",), log=quiet)
    live = np.abs(with_dead.reshape(-1, NS)[4:])
    assert result["amplitude_mapping"]["clip"] == pytest.approx(np.percentile(live, 95), rel=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "vol-salt-probability.npy"),
                                  grey(with_dead, np.percentile(live, 95)) / np.float32(255.0))

    monkeypatch.setattr(segy, "_SAMPLE_VALUES", 8 * NS)  # a bound of 8 traces
    bounded = predict_segy(PixelModel(), source, tmp_path / "o2", formats=("npy",), log=quiet)
    assert re.search(r"over [1-8] sampled live traces of 60$", bounded["amplitude_mapping"]["source"])
    assert np.percentile(live, 90) < bounded["amplitude_mapping"]["clip"] <= live.max()


@pytest.mark.parametrize("fmt, endian", [(1, "big"), (3, "big"), (5, "little")])
def test_other_sample_formats_and_byte_order(cube, tmp_path, fmt, endian):
    # IBM float and int16 inputs become IEEE float outputs; a little-endian file stays little-endian
    scaled = np.rint(cube * 100).astype(np.int16) if fmt == 3 else cube
    source = cube_file(tmp_path / "vol.sgy", scaled, fmt=fmt, endian=endian)
    clip = CLIP * 100 if fmt == 3 else CLIP
    predict_segy(PixelModel(), source, tmp_path / "out", clip=clip, log=quiet)
    expected = grey(read_traces(source, endian), clip) / np.float32(255.0)
    np.testing.assert_array_equal(read_traces(tmp_path / "out" / "vol-salt-probability.sgy", endian), expected)


def _bad_files(tmp_path: Path, cube: np.ndarray) -> dict[str, tuple[Path, str]]:
    tmp_path.mkdir()
    good = cube_file(tmp_path / "good.sgy", cube).read_bytes()
    text = tmp_path / "notes.sgy"
    text.write_text("inline 100 crossline 20 amplitude 0.5\n" * 400)
    truncated = tmp_path / "cut.sgy"
    truncated.write_bytes(good[:-100])
    short = tmp_path / "short.sgy"
    short.write_bytes(good[:1000])
    bad_format = bytearray(good)
    bad_format[3224:3226] = (77).to_bytes(2, "big")
    (tmp_path / "fmt.sgy").write_bytes(bytes(bad_format))
    return {"text": (text, "not a readable SEG-Y file"), "truncated": (truncated, "truncated"),
            "short": (short, "only 1000 bytes"), "format": (tmp_path / "fmt.sgy", "sample format code 77"),
            "missing": (tmp_path / "none.sgy", "no such file")}


@pytest.mark.parametrize("case", ["text", "truncated", "short", "format", "missing"])
def test_a_wrong_file_is_a_one_line_error_and_writes_nothing(cube, tmp_path, case):
    path, needle = _bad_files(tmp_path / "in", cube)[case]
    with pytest.raises(DataError) as err:
        predict_segy(PixelModel(), path, tmp_path / "out", clip=CLIP, log=quiet)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and needle in message
    assert files_in(tmp_path / "out") == []


def test_a_failure_midway_leaves_no_partial_output(cube, tmp_path):
    source = cube_file(tmp_path / "vol.sgy", cube)
    out = tmp_path / "out"
    out.mkdir()
    (out / "vol-salt-probability.npy").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="model failed"):
        predict_segy(PixelModel(fail_at=3), source, out, clip=CLIP, formats=("segy", "npy"), previews=[100],
                     log=quiet)
    assert files_in(out) == [out / "vol-salt-probability.npy"]  # no temporaries, no preview, no sidecar
    assert (out / "vol-salt-probability.npy").read_bytes() == b"previous"


def test_previews_show_the_slice_probability_and_mask(cube, tmp_path):
    source = cube_file(tmp_path / "vol.sgy", cube)
    out = tmp_path / "out"
    result = predict_segy(PixelModel(), source, out, axis="time", clip=CLIP, previews=[8.0, 12], log=quiet)
    assert [Path(p).name for p in result["files"]][1:] == ["vol-time-8.png", "vol-time-12.png"]
    preview = np.asarray(Image.open(out / "previews" / "vol-time-8.png"))
    assert preview.shape == (N_IL, 3 * N_XL + 4, 3)
    np.testing.assert_array_equal(preview[:, :N_XL, 0], grey(cube[:, :, 2]))  # 8 ms is sample 2
    with pytest.raises(UnetlabError, match="previews: inline 99 is not in .*inline numbers 100..105"):
        predict_segy(PixelModel(), source, tmp_path / "o2", previews=[99], clip=CLIP, log=quiet)
    assert not (tmp_path / "o2").exists()


def test_preview_segy_writes_the_grey_slice(cube, tmp_path):
    source = cube_file(tmp_path / "vol.sgy", cube)
    info = preview_segy(source, tmp_path / "p.png", axis="crossline", clip=CLIP)
    assert info["line"] == CROSSLINES[N_XL // 2]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), grey(cube[:, N_XL // 2].T))


def test_tiny_model_cube_equals_its_per_slice_predictions(tiny_run, cube, tmp_path):
    predictor = Predictor.load(tiny_run)
    source = cube_file(tmp_path / "vol.sgy", cube)
    threshold = 0.5
    predict_segy(predictor, source, tmp_path / "p", clip=CLIP, formats=("segy", "npy"), log=quiet)
    predict_segy(predictor, source, tmp_path / "m", clip=CLIP, write="mask", threshold=threshold,
                 formats=("npy",), log=quiet)
    probs = np.load(tmp_path / "p" / "vol-salt-probability.npy")
    masks = np.load(tmp_path / "m" / "vol-salt-mask.npy")
    np.testing.assert_array_equal(read_traces(tmp_path / "p" / "vol-salt-probability.sgy"), probs.reshape(-1, NS))
    for i in range(N_IL):
        prob = predictor.predict_proba([grey(cube[i].T)])[0]
        np.testing.assert_allclose(probs[i], prob.T, atol=1e-6)
        np.testing.assert_array_equal(masks[i], predictor.labels(prob, threshold).T)


def test_cli_choices_are_the_modules():
    from unetlab.cli import SegyAxis, SegyFormat, SegyWrite

    assert tuple(c.value for c in SegyAxis) == segy.AXES
    assert tuple(c.value for c in SegyWrite) == segy.WRITES
    assert tuple(c.value for c in SegyFormat) == segy.FORMATS


def test_cli_predict_takes_volumes_and_images_together(tiny_run, cube, tmp_path, capsys):
    from run_fixtures import run_cli

    source = cube_file(tmp_path / "vol.sgy", cube)
    Image.fromarray(grey(cube[0].T)).save(tmp_path / "section.png")
    out = tmp_path / "out"
    code, _, err = run_cli(["predict", str(tiny_run), str(source), str(tmp_path / "section.png"), "--out", str(out),
                            "--segy-axis", "crossline", "--segy-clip", str(CLIP), "--segy-format", "npy",
                            "--segy-write", "mask", "--threshold", "0.5", "--segy-preview", str(CROSSLINES[1])],
                           capsys)
    assert code == 0, err
    sidecar = json.loads((out / "vol-salt.json").read_text())
    assert sidecar["axis"] == "crossline" and sidecar["write"] == "mask" and sidecar["threshold"] == 0.5
    assert (out / "vol-salt-mask.npy").is_file() and not (out / "vol-salt-mask.sgy").exists()
    assert (out / "previews" / f"vol-crossline-{CROSSLINES[1]}.png").is_file()
    assert (out / "masks" / "section.png").is_file()  # the image went the image way
    code, _, err = run_cli(["predict", str(tiny_run), str(tmp_path / "section.png"), "--out", str(out),
                            "--segy-axis", "diagonal"], capsys)
    assert code == 2 and "diagonal" in err
