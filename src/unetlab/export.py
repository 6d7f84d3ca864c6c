"""Exporting a trained model for deployment: ONNX or TorchScript, checked against PyTorch on the spot.

What is exported is the network itself: normalised images (N, C, H, W, float32) in, logits
(N, classes, H, W) out, with batch, height and width free. What a deployment must do around it is
stored with the model (ONNX `metadata_props`, or a `unetlab.json` extra file in TorchScript):
scale uint8 by 1/255, bring the image to `input_size` (`sizing`: reflect-pad or bilinear resize),
normalise with `mean` / `std`, run, take sigmoid(logits) > `threshold`, restore the original size.

Choices, measured with torch 2.13, onnx 1.23, onnxruntime 1.31 (see `export_run`):

* ONNX: the torch.export-based exporter (`dynamo=True`). Both it and the legacy TorchScript-based
  exporter give a correct size-generic graph of the U-Net, whose forward pads to a multiple of
  2**depth and crops back, but the legacy one warns that it will be removed, and the new one names
  the free axes. Both bake in the branch of `if pad_h or pad_w` taken by the example input: traced
  at 128x128 (a multiple) the graph has no padding at all and fails on 101x101. So the example
  is odd-sized (odd sides are not multiples of any power of two) and at least 129, where reflect
  padding applies for every depth; the graph then pads by (-H) mod 2**depth, which is 0 (a no-op)
  for sizes that are already multiples. The runtime guards torch.export records (e.g. "-H % 16 != 0")
  are not carried into ONNX, so the graph also runs at multiples; the parity check proves it.
  Opsets below 18 cannot be written by the new exporter (no Pad adapter below 18), so they go
  through the legacy exporter, checked the same way.
* TorchScript: `torch.jit.trace` (deprecated in torch 2.13, with a DeprecationWarning, but working
  and size-generic for the same reason as above). `torch.jit.script` fails on the U-Net
  (`2**self.depth` is typed float), and a `torch.export` program saved as .pt2 keeps the shape
  guards as runtime assertions: exported at 101x101 it refuses 128x128 and 64x80, so it is not
  offered.

Every file is written to a temporary name beside `out`, checked (onnx.checker, then the parity of
logits against eager PyTorch at several sizes and batch sizes), and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetlab._version import __version__
from unetlab.errors import UnetlabError
from unetlab.files import atomic_path
from unetlab.run_folder import RunFolder

FORMATS = {"onnx": ".onnx", "torchscript": ".ts.pt"}
MIN_DYNAMO_OPSET = 18
EXAMPLE_MIN_SIDE = 129  # odd and > 128 = 2**7, the largest pad multiple (U-Net depth 7)
BATCHES = (1, 3)


# --------------------------------------------------------------------------------------------- paths

def default_out_path(run_or_checkpoint: str | Path, format: str, which: str = "best") -> Path:
    """<run>/export/model.onnx (model.ts.pt); `model-<which>` for another checkpoint than best."""
    path = Path(run_or_checkpoint)
    stem = which if path.is_dir() else path.stem
    name = "model" if stem == "best" else f"model-{stem}"
    return RunFolder.of(path).export_path(f"{name}{FORMATS[format]}")


# ---------------------------------------------------------------------------------------------- sizes

def _odd_at_least(n: int) -> int:
    return n if n % 2 else n + 1


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def example_size(input_size: int) -> tuple[int, int]:
    """The (H, W) traced: odd (no power of two divides it, so the pad-to-multiple branch is
    recorded), non-square (H and W stay separate symbols) and large enough for reflect padding."""
    height = _odd_at_least(max(input_size, EXAMPLE_MIN_SIDE))
    return height, height + 2


def check_sizes(input_size: int) -> list[tuple[int, int]]:
    """(H, W) checked after export, all different from the example: the deployment size, a size
    that is a multiple of 64 (no padding inside the model) and an odd non-square one."""
    square = (input_size, input_size)
    multiple = _round_up(input_size, 64)
    odd = (_odd_at_least(input_size + 12), _odd_at_least(input_size + 36))
    sizes = []
    for size in (square, (multiple, multiple + 64), odd):
        if size not in sizes and size != example_size(input_size):
            sizes.append(size)
    return sizes


# ---------------------------------------------------------------------------------------------- parity

def _parity(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[np.ndarray], np.ndarray],
            shapes: Sequence[tuple[int, int, int, int]], seed: int = 0) -> tuple[float, list[dict[str, Any]]]:
    """Max |reference - candidate| of the logits over random normalised inputs of each shape.

    A shape mismatch or a runtime failure of the candidate counts as an infinite difference."""
    generator = torch.Generator().manual_seed(seed)
    worst, rows = 0.0, []
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = reference(x).float().numpy()
        note = ""
        try:
            got = np.asarray(candidate(x.numpy()))
            if got.shape != expected.shape:
                note = f"output shape {tuple(got.shape)} != {tuple(expected.shape)}"
            elif not (np.isfinite(got).all() and np.isfinite(expected).all()):
                note = "non-finite logits"
            else:
                diff = float(np.abs(got.astype(np.float64) - expected).max())
        except Exception as exc:  # onnxruntime / TorchScript raise many types for unsupported sizes
            text = str(exc).strip().splitlines()
            last = text[-1] if text else "no detail"
            note = f"{exc.__class__.__name__}: {last if len(last) <= 160 else '...' + last[-157:]}"
        if note:
            diff = float("inf")
        rows.append({"shape": list(shape), "max_abs_diff": diff, **({"error": note} if note else {})})
        worst = max(worst, diff)
    return worst, rows


def _describe_failure(rows: list[dict[str, Any]], atol: float) -> str:
    bad = [r for r in rows if not r["max_abs_diff"] <= atol]
    parts = []
    for row in bad[:3]:
        n, c, h, w = row["shape"]
        parts.append(f"{n}x{c}x{h}x{w}: " + (row.get("error") or f"{row['max_abs_diff']:.3g}"))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- metadata

def _metadata(predictor: Any, checkpoint: Path, which: str, example: tuple[int, int]) -> dict[str, str]:
    config = predictor.config
    point = predictor.operating_point  # the run's saved operating point, when it is for this checkpoint
    return {
        "unetlab_version": __version__,
        "model": str(config.model.name),
        "checkpoint": which if Path(checkpoint).name == f"{which}.pt" else Path(checkpoint).name,
        "threshold": repr(float(predictor.threshold)),
        "min_area": str(int(predictor.min_area)),
        "min_component": str(int(predictor.min_component)),
        "criterion": "none" if point is None else str(point["criterion"]),
        "operating_point": ("none: the checkpoint's threshold and the config's eval rules" if point is None else
                            f"{point['criterion']}, chosen on {point.get('split')} of {point.get('data')} "
                            f"({point.get('images')} images)"),
        "mean": json.dumps([float(v) for v in predictor.mean]),
        "std": json.dumps([float(v) for v in predictor.std]),
        "sizing": predictor.sizing.mode,
        "input_size": str(predictor.sizing.size),
        "input": "image: float32 N x C x H x W (batch, height and width free), normalised",
        "output": "logits: float32 N x classes x H x W; probability = sigmoid(logits)",
        "preprocess": ("x = uint8 / 255; reflect-pad (sizing=pad: centred, to input_size, images larger "
                       "than input_size unchanged) or bilinear-resize (sizing=resize) to input_size; "
                       "x = (x - mean) / std per channel"),
        "postprocess": ("p = sigmoid(logits); undo the padding (crop) or resize bilinearly back to the "
                        "original size; mask = p > threshold; remove the mask's 8-connected components of fewer "
                        "than min_component pixels; a mask left with fewer than min_area pixels becomes empty"),
        "traced_at": f"{example[0]}x{example[1]}",
        "config": config.to_yaml(),
    }


# ---------------------------------------------------------------------------------------------- ONNX

@contextlib.contextmanager
def _quiet_export() -> Iterator[io.StringIO]:
    """Silence the exporters' chatter (progress lines, torchvision notices, deprecation warnings);
    the captured text is given back for error messages."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo",
                                                     "torch.fx.experimental.symbolic_shapes", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _onnx_proto(model: nn.Module, example: torch.Tensor, opset: int | None) -> tuple[Any, str]:
    """The ONNX ModelProto of `model` with free batch, height and width; and the exporter used."""
    import onnx

    names = {"input_names": ["image"], "output_names": ["logits"]}
    if opset is None or opset >= MIN_DYNAMO_OPSET:
        # The torch.export-based exporter: see the module docstring for why.
        kwargs = {} if opset is None else {"opset_version": opset}
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: "batch", 2: "height",
                                    3: "width"},), optimize=True, verify=False, report=False, **names, **kwargs)
        return program.model_proto, "torch.export (dynamo=True)"
    # Below opset 18 only the legacy TorchScript-based exporter can write the graph.
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                      dynamic_axes={"image": axes, "logits": axes}, **names)
    return onnx.load_from_string(buffer.getvalue()), "TorchScript-based (dynamo=False)"


def _name_output_axes(proto: Any, same_spatial: bool) -> None:
    """The new exporter names the output's axes by formulas (e.g. 'Min(height, 16*((height + ...)))');
    when the output has the input's size, name them batch / height / width like the input."""
    output = proto.graph.output[0].type.tensor_type.shape.dim
    if len(output) != 4:
        return
    output[0].dim_param = "batch"
    if same_spatial:
        output[2].dim_param, output[3].dim_param = "height", "width"


def _export_onnx(model: nn.Module, example: torch.Tensor, tmp: Path, opset: int | None,
                 metadata: dict[str, str], shapes: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    with _quiet_export() as chatter:
        try:
            proto, exporter = _onnx_proto(model, example, opset)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else chatter.getvalue()[-200:]
            raise UnetlabError(f"ONNX export failed at opset {opset or 'default'} "
                               f"({exc.__class__.__name__}: {detail})") from None
    with torch.no_grad():
        example_out = model(example)
    _name_output_axes(proto, tuple(example_out.shape[-2:]) == tuple(example.shape[-2:]))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = "unetlab segmentation model: normalised image in, logits out (see metadata_props)"
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    try:
        onnx.save_model(proto, str(tmp))  # one file: weights embedded (a U-Net is far below 2 GB)
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:
        raise UnetlabError(f"ONNX export: the written model does not pass onnx.checker "
                           f"({exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:200]})") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 4  # failures at a size are reported by the parity check, not on stderr
    session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    worst, rows = _parity(model, lambda x: session.run(None, {input_name: x})[0], shapes)
    return {"max_abs_diff": worst, "rows": rows, "opset": opset_used, "exporter": exporter,
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider"}


# ----------------------------------------------------------------------------------------- TorchScript

def _export_torchscript(model: nn.Module, example: torch.Tensor, tmp: Path, metadata: dict[str, str],
                        shapes: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    with _quiet_export():
        try:
            # torch.jit.trace: deprecated in torch 2.13 but working; `script` fails on the U-Net.
            traced = torch.jit.trace(model, (example,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"unetlab.json": json.dumps(metadata)})
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        except Exception as exc:
            raise UnetlabError(f"TorchScript export failed ({exc.__class__.__name__}: "
                               f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
        loaded.eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return loaded(torch.from_numpy(x)).float().numpy()

        worst, rows = _parity(model, run, shapes)
    return {"max_abs_diff": worst, "rows": rows, "opset": None, "exporter": "torch.jit.trace",
            "runtime": "torch.jit.load"}


# ------------------------------------------------------------------------------------------------ API

def export_run(run_or_checkpoint: str | Path, format: str = "onnx", out: str | Path | None = None,
               which: str = "best", opset: int | None = None, atol: float = 1e-4,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export a run's checkpoint (`which`: best / last, or a checkpoint file) as ONNX or TorchScript.

    The graph takes normalised float32 images N x C x H x W of any batch size and size (sides of at
    least the model's pad multiple, 2**depth for the U-Net) and returns logits. The file is written
    beside `out` under a temporary name, checked against eager PyTorch at several sizes and batch
    sizes 1 and 3, and renamed into place only when the largest absolute difference of the logits
    is at most `atol`; otherwise UnetlabError, and nothing is left at `out`.

    Returns {path, format, max_abs_diff, sizes_checked, opset, exporter, parity}.
    """
    if format not in FORMATS:
        raise UnetlabError(f"--format: unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if opset is not None and format != "onnx":
        raise UnetlabError(f"--opset: applies to --format onnx only, not {format!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise UnetlabError(f"--opset: must be an integer >= 7 (18 or newer uses the current exporter), got {opset!r}")
    if not atol >= 0:
        raise UnetlabError(f"atol must be >= 0, got {atol!r}")
    if format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise UnetlabError(f"--format onnx needs the packages onnx, onnxruntime and onnxscript "
                               f"({exc}); pip install onnx onnxruntime onnxscript") from None

    from unetlab.inference.predictor import Predictor

    checkpoint = RunFolder.resolve_checkpoint(run_or_checkpoint, which)  # a missing run or file -> UnetlabError
    predictor = Predictor.load(run_or_checkpoint, which, device="cpu")
    # fp32, NCHW: undo the channels_last of training; a deployment runtime wants plain layout.
    model = predictor.model.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    out = Path(out) if out is not None else default_out_path(run_or_checkpoint, format, which)
    channels = int(predictor.config.model.in_channels)
    input_size = int(predictor.sizing.size)
    example_hw = example_size(input_size)
    example = torch.randn(2, channels, *example_hw, generator=torch.Generator().manual_seed(1))
    sizes = check_sizes(input_size)
    shapes = [(batch, channels, h, w) for (h, w) in sizes for batch in BATCHES]
    metadata = _metadata(predictor, checkpoint, which, example_hw)

    with atomic_path(out) as tmp:  # renamed onto `out` only when the parity check passed
        if format == "onnx":
            result = _export_onnx(model, example, tmp, opset, metadata, shapes)
        else:
            result = _export_torchscript(model, example, tmp, metadata, shapes)
        worst = result["max_abs_diff"]
        if not worst <= atol:
            how = ("does not run like PyTorch at every size" if worst == float("inf") else
                   f"logits differ from PyTorch by up to {worst:.3g} (> atol {atol:g})")
            raise UnetlabError(f"{out}: export refused: the {format} model {how}; "
                               f"{_describe_failure(result['rows'], atol)}; no file written")

    checked = ", ".join(f"{h}x{w}" for h, w in sizes)
    opset_text = f", opset {result['opset']}" if result["opset"] is not None else ""
    log(f"exported {checkpoint} -> {out} ({format}{opset_text}, {result['exporter']}): max |logits diff| vs "
        f"PyTorch {worst:.2e} (atol {atol:g}) at {checked}, batch {' and '.join(map(str, BATCHES))}, "
        f"traced at {example_hw[0]}x{example_hw[1]}")
    return {"path": out, "format": format, "max_abs_diff": worst, "sizes_checked": [list(s) for s in shapes],
            "opset": result["opset"], "exporter": result["exporter"], "parity": result["rows"]}
