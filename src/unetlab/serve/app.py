"""The web service of `unetlab serve RUN`: a FastAPI app around one run's `Predictor`, and its page.

    POST /predict   an image (multipart field `file`: PNG, JPEG or TIFF) -> the mask as PNG (0/255 for
                    binary runs, class indices for multiclass ones), or with `probabilities=true` JSON
                    holding the mask, the decoded image and the float32 probabilities (docs/serve.md)
    GET  /model     the model card: run, task, classes, input channels, operating point, training
                    data and the run's evaluation
    GET  /          the page (static/index.html): upload, overlay, threshold slider, download
    /openapi.json   the schema, /docs its interactive page

Bad input never reaches the model: uploads are capped in bytes while they arrive (413), sniffed by
content (PNG, JPEG, TIFF, else 415), decoded by `unetlab.data.io` under a pixel limit that refuses
decompression bombs before decoding (413), and every refusal is `{"error": "one line"}` with a 4xx
status. The model is shared by the server's worker threads; one lock serialises its forward passes.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from unetlab.data.io import pixel_limit, read_image
from unetlab.errors import DataError, UnetlabError
from unetlab.inference.predictor import Predictor, decoding_options
from unetlab.run_folder import RunFolder
from unetlab.viz import label_palette

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
# 4096 x 4096: a large section still fits, while one request's float32 probabilities stay at 64 MiB a class.
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PIXELS_OPTION = "unetlab serve --max-pixels"
_MULTIPART_SLACK = 64 * 1024  # form boundaries and part headers around the file's bytes
_SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",),
               "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")}


class Refused(Exception):
    """A request the service turns down: answered `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ErrorBody(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "upload larger than the byte or pixel limit (a decompression bomb too)"},
    415: {"model": ErrorBody, "description": "not a PNG, JPEG or TIFF file"},
    422: {"model": ErrorBody, "description": "a bad parameter, or an image that cannot be decoded"},
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _viewable(image: np.ndarray) -> np.ndarray:
    """The decoded model input as a grey or RGB picture for the page (other band counts: the first band)."""
    if image.ndim == 3 and image.shape[-1] != 3:
        return image[..., 0]
    return image


class Segmenter:
    """One run's predictor behind the service's limits: decoding an upload and predicting it, thread-safe."""

    def __init__(self, predictor: Predictor, max_upload_bytes: int, max_pixels: int):
        self.predictor, self.max_upload_bytes, self.max_pixels = predictor, max_upload_bytes, max_pixels
        self._decode_lock = threading.Lock()  # the readers' pixel limit is process-wide
        self._model_lock = threading.Lock()  # one forward pass at a time on the shared model

    def read(self, data: bytes, name: str) -> np.ndarray:
        """An upload's bytes -> uint8 (H, W[, C]) with the run's input channels, or `Refused`."""
        if len(data) > self.max_upload_bytes:
            raise Refused(413, f"{name}: {len(data):,} bytes, more than the {self.max_upload_bytes:,} allowed "
                               "(unetlab serve --max-upload-mb)")
        if not any(data.startswith(magic) for magics in _SIGNATURES.values() for magic in magics):
            raise Refused(415, f"{name}: not a PNG, JPEG or TIFF image; send one of those")
        with tempfile.TemporaryDirectory(prefix="unetlab-serve-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                with self._decode_lock, pixel_limit(self.max_pixels, MAX_PIXELS_OPTION):
                    return read_image(path, channels=self.predictor.config.model.in_channels)
            except DataError as exc:
                message = str(exc).replace(str(path), name)
                raise Refused(413 if MAX_PIXELS_OPTION in message else 422, message) from None

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        with self._model_lock:
            return self.predictor.predict_proba([image], batch_size=1)[0]


def model_card(predictor: Predictor, checkpoint: Path, which: str) -> dict[str, Any]:
    """What the run is and how well it did: read from the checkpoint's config and the run's evaluations."""
    config, task, point = predictor.config, predictor.task, predictor.operating_point
    run = RunFolder.of(checkpoint)
    evaluations = [path for path in run.evaluation_paths() if path.stem.startswith(f"{which}-")]
    evaluations.sort(key=lambda path: path.stem != f"{which}-val")  # the validation split first
    evaluation = None
    if evaluations:
        scores = json.loads(evaluations[0].read_text(encoding="utf-8"))
        evaluation = {"file": f"{RunFolder.EVALUATION}/{evaluations[0].name}", "split": scores.get("split"),
                      "images": scores.get("images"), "data": scores.get("data"), "metrics": scores.get("metrics")}
    return {
        "run": run.path.name, "name": config.name, "checkpoint": which, "epoch": predictor.epoch,
        "task": task.name, "classes": list(task.class_names),
        "palette": label_palette(len(task.class_names), task.palette).tolist(),
        "input_channels": config.model.in_channels, "model": config.model.name,
        "input_size": config.data.input_size, "sizing": config.data.sizing, "tile": config.eval.tile,
        "tta": config.eval.tta,
        "operating_point": {
            "threshold": predictor.threshold, "min_area": predictor.min_area,
            "min_component": predictor.min_component,
            "criterion": None if point is None else point.get("criterion"),
            "source": (RunFolder.OPERATING_POINT if point is not None
                       else "the checkpoint's threshold and the config's eval.min_area / eval.min_component")},
        "training_data": {"format": config.data.format,
                          "root": None if config.data.root is None else str(config.data.root)},
        "evaluation": evaluation,
    }


class _BodyLimit:
    """ASGI middleware: a request body larger than `limit` bytes is answered 413 as it arrives, before
    the multipart parser spools it (declared Content-Length first, then counting what is received)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than {self.limit:,} bytes; send a smaller image (unetlab serve --max-upload-mb)"
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _error(413, message)(scope, receive, send)
            return
        state = {"received": 0, "over": False, "answered": False}

        async def counted() -> dict:
            event = await receive()
            if event["type"] == "http.request":
                state["received"] += len(event.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    raise Refused(413, message)
            return event

        async def replaced(event: dict) -> None:
            # Whatever the app answers to a body it could not finish reading (FastAPI: 400), the client gets 413.
            if state["over"]:
                if not state["answered"]:
                    state["answered"] = True
                    await _error(413, message)(scope, receive, send)
                return
            await send(event)

        try:
            await self.app(scope, counted, replaced)
        except Refused:
            if not state["answered"]:
                await _error(413, message)(scope, receive, send)


def create_app(run: str | Path, which: str = "best", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "auto") -> FastAPI:
    """The app serving `run`'s `which` checkpoint at its operating point (see the module docstring)."""
    if max_upload_bytes < 1 or max_pixels < 1:
        raise UnetlabError(f"max_upload_bytes {max_upload_bytes}, max_pixels {max_pixels}: both must be positive")
    checkpoint = RunFolder.resolve_checkpoint(run, which)
    predictor = Predictor.load(checkpoint, device=device)
    segmenter = Segmenter(predictor, max_upload_bytes, max_pixels)
    card = model_card(predictor, checkpoint, which)
    app = FastAPI(title="unetlab serve", version="1",
                  description=f"Segment images with the run {card['run']} ({card['task']}, "
                              f"classes {', '.join(card['classes'])}).")
    app.state.segmenter, app.state.card = segmenter, card
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _MULTIPART_SLACK)

    @app.exception_handler(Refused)
    async def refused(_request: Any, exc: Refused) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(part) for part in error['loc'][1:]) or error['loc'][0]}: {error['msg']}"
                    for error in exc.errors()]
        return _error(422, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/model", summary="The model card")
    def model() -> dict[str, Any]:
        return card

    @app.post("/predict", summary="Segment one image", responses={
        200: {"content": {"image/png": {}, "application/json": {}},
              "description": "the mask as PNG, or with probabilities=true a JSON object (docs/serve.md)"},
        **_ERRORS})
    def predict(
        file: UploadFile = File(..., description="the image: PNG, JPEG or TIFF"),
        threshold: Optional[float] = Query(None, gt=0.0, lt=1.0, description="binary: probability threshold "
                                           "(default: the run's operating point)"),
        min_area: Optional[int] = Query(None, ge=0, le=max_pixels, description="binary: predict the image empty "
                                        "when fewer pixels pass (default: the run's operating point)"),
        min_component: Optional[int] = Query(None, ge=0, le=max_pixels, description="binary: remove components "
                                             "of fewer pixels (default: the run's operating point)"),
        probabilities: bool = Query(False, description="answer JSON with the probabilities (float32, "
                                    "little-endian, base64), the mask and the decoded image"),
    ) -> Response:
        try:
            decoding = decoding_options(predictor, threshold, min_area, min_component)
        except UnetlabError as exc:
            raise Refused(422, str(exc).replace("--min-", "min_").replace("--", "")) from None
        name = "".join(c for c in Path(file.filename or "upload").name[:120] if c.isprintable()) or "upload"
        image = segmenter.read(file.file.read(max_upload_bytes + 1), name)
        prob = segmenter.probabilities(image)
        labels = predictor.labels(prob, *decoding)
        mask = labels * np.uint8(255) if predictor.task.name == "binary" else labels
        if not probabilities:
            return Response(_png(mask), media_type="image/png")
        return JSONResponse({
            "width": int(image.shape[1]), "height": int(image.shape[0]), "task": predictor.task.name,
            "classes": card["classes"], "palette": card["palette"],
            "decoding": {"threshold": decoding[0], "min_area": decoding[1], "min_component": decoding[2]},
            "mask_png": _b64(_png(mask)), "image_png": _b64(_png(_viewable(image))),
            "probabilities": {"dtype": "float32", "byte_order": "little", "shape": list(prob.shape),
                              "data": _b64(np.ascontiguousarray(prob, "<f4").tobytes())},
        })

    return app


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, which: str = "best",
          max_upload_bytes: int | None = None, max_pixels: int | None = None, log: Any = print) -> None:
    """Serve `run` with uvicorn until interrupted (limits default to DEFAULT_MAX_UPLOAD_BYTES and
    DEFAULT_MAX_PIXELS); torch uses the run's train.num_threads when it sets it."""
    import torch
    import uvicorn

    app = create_app(run, which, DEFAULT_MAX_UPLOAD_BYTES if max_upload_bytes is None else max_upload_bytes,
                     DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    threads = app.state.segmenter.predictor.config.train.num_threads
    if threads:
        torch.set_num_threads(threads)
    log(f"serving {app.state.card['run']} ({which}) at http://{host}:{port}/  (API: /docs, /openapi.json)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
