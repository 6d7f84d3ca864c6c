"""`unetlab.export.export_run`: ONNX and TorchScript files that run at other sizes than traced, match
PyTorch, carry their pre-processing, and are never left behind unchecked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unetlab import export as export_module
from unetlab.errors import UnetlabError
from unetlab.export import check_sizes, example_size, export_run
from unetlab.inference.predictor import Predictor

# Sizes the export itself does not check (it traces at 129x131 and checks 104, 128x192, 117x141).
SHAPES = [(1, 1, 101, 101), (3, 1, 101, 101), (1, 1, 64, 80), (3, 1, 64, 80)]
ATOL = 1e-4


def _eager(run: Path) -> torch.nn.Module:
    return Predictor.load(run, "best", device="cpu").model.float().to(memory_format=torch.contiguous_format)


def _max_diff(model: torch.nn.Module, run_exported, shape: tuple[int, ...]) -> float:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_exported(x)
    assert got.shape == expected.shape == (shape[0], 1, shape[2], shape[3])
    return float(np.abs(got - expected).max())


@pytest.fixture(scope="module")
def onnx_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:  # noqa: F811
    pytest.importorskip("onnxruntime")
    lines: list[str] = []
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    return export_run(tiny_run, "onnx", out=out, log=lines.append), lines


def test_sizes_avoid_the_pad_multiple_trap():
    # Traced at a multiple of 2**depth, the pad branch would be left out of the graph.
    for input_size in (8, 101, 104, 128, 256):
        height, width = example_size(input_size)
        assert height % 2 and width % 2 and height >= 129 and height != width
        assert (height, width) not in check_sizes(input_size)
        assert (input_size, input_size) in check_sizes(input_size)
        assert any(h % 64 == 0 for h, _ in check_sizes(input_size))


def test_onnx_export_is_dynamic_matches_pytorch_and_carries_metadata(onnx_export, tiny_run):  # noqa: F811
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    result, lines = onnx_export
    path = Path(result["path"])
    assert path.is_file() and result["format"] == "onnx" and result["opset"] >= 18
    assert 0 <= result["max_abs_diff"] <= ATOL
    assert {tuple(s[:1]) for s in result["sizes_checked"]} == {(1,), (3,)} and len(result["sizes_checked"]) >= 4
    assert len(lines) == 1 and "max |logits diff|" in lines[0] and f"{result['max_abs_diff']:.2e}" in lines[0]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    free = ["batch", 1, "height", "width"]  # named free axes, one channel
    assert [i.name for i in proto.graph.input] == ["image"] and dims(proto.graph.input[0]) == free
    assert [o.name for o in proto.graph.output] == ["logits"] and dims(proto.graph.output[0]) == free

    meta = {p.key: p.value for p in proto.metadata_props}
    predictor = Predictor.load(tiny_run, "best", device="cpu")
    assert float(meta["threshold"]) == pytest.approx(predictor.threshold)
    assert json.loads(meta["mean"]) == pytest.approx(predictor.mean)
    assert json.loads(meta["std"]) == pytest.approx(predictor.std)
    assert meta["sizing"] == predictor.sizing.mode and int(meta["input_size"]) == predictor.sizing.size == 104
    assert meta["unetlab_version"] and yaml.safe_load(meta["config"])["model"]["name"] == "unet"

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = _eager(tiny_run)
    diffs = [_max_diff(model, lambda x: session.run(None, {"image": x.numpy()})[0], s) for s in SHAPES]
    assert max(diffs) <= ATOL, diffs


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_default_path_and_parity(tiny_run, tmp_path):  # noqa: F811
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))  # tiny_run is shared: export into a copy
    lines: list[str] = []
    result = export_run(run, "torchscript", log=lines.append)
    path = Path(result["path"])
    assert path == run / "export" / "model.ts.pt" and path.is_file() and result["opset"] is None
    assert result["max_abs_diff"] <= ATOL and len(lines) == 1 and "torchscript" in lines[0]

    extra = {"unetlab.json": ""}
    loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["unetlab.json"])
    assert meta["sizing"] == "pad" and int(meta["input_size"]) == 104 and "threshold" in meta

    model = _eager(run)

    def run_loaded(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    diffs = [_max_diff(model, run_loaded, s) for s in SHAPES]
    assert max(diffs) <= ATOL, diffs


def test_legacy_opset_goes_through_the_torchscript_based_exporter(tiny_run, tmp_path):  # noqa: F811
    ort = pytest.importorskip("onnxruntime")
    result = export_run(tiny_run, "onnx", out=tmp_path / "op17.onnx", opset=17, log=lambda _: None)
    assert result["opset"] == 17 and "dynamo=False" in result["exporter"] and result["max_abs_diff"] <= ATOL
    session = ort.InferenceSession(str(result["path"]), providers=["CPUExecutionProvider"])
    model = _eager(tiny_run)
    assert _max_diff(model, lambda x: session.run(None, {"image": x.numpy()})[0], (3, 1, 64, 80)) <= ATOL


@pytest.mark.parametrize("format, opset", [("torchscript", None), ("onnx", 17)])
def test_parity_failure_leaves_no_file(tiny_run, tmp_path, monkeypatch, format, opset):  # noqa: F811
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    real = export_module._parity

    def perturbed(reference, candidate, shapes, seed=0):
        worst, rows = real(reference, lambda x: candidate(x) + 1e-3, shapes, seed)  # a slightly wrong model
        return worst, rows

    monkeypatch.setattr(export_module, "_parity", perturbed)
    out = tmp_path / "out" / f"model.{format}"
    message = r"logits differ from PyTorch by up to 0\.001 \(> atol 0\.0001\).*no file written"
    with pytest.raises(UnetlabError, match=message):
        export_run(tiny_run, format, out=out, opset=opset, log=lambda _: None)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # the temporary file is gone too


def test_unknown_format_and_missing_run_are_refused(tiny_run, tmp_path):  # noqa: F811
    with pytest.raises(UnetlabError, match=r"--format.*'tflite'.*onnx, torchscript"):
        export_run(tiny_run, "tflite", out=tmp_path / "m")
    with pytest.raises(UnetlabError, match="not found"):
        export_run(tmp_path / "no-such-run", "onnx")
    with pytest.raises(UnetlabError, match="--opset"):
        export_run(tiny_run, "torchscript", opset=17)
    assert list(tmp_path.iterdir()) == []


def test_metadata_records_the_saved_operating_point(tiny_run, tmp_path):  # noqa: F811
    from unetlab.run_folder import RunFolder

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    checkpoint = RunFolder(run).checkpoint_path("best")
    plain = export_module._metadata(Predictor.load(run, device="cpu"), checkpoint, "best", (129, 131))
    decoding = ("threshold", "min_area", "min_component", "criterion")
    assert tuple(plain[k] for k in decoding) == ("0.5", "0", "0", "none")
    RunFolder(run).write_operating_point({
        "threshold": 0.437, "min_area": 20, "min_component": 5, "criterion": "max-tgs", "checkpoint": "best",
        "checkpoint_sha256": RunFolder.checkpoint_digest(checkpoint), "data": "/data", "split": "val", "images": 4})
    meta = export_module._metadata(Predictor.load(run, device="cpu"), checkpoint, "best", (129, 131))
    assert tuple(meta[k] for k in decoding) == ("0.437", "20", "5", "max-tgs")
    assert "chosen on val of /data (4 images)" in meta["operating_point"]
