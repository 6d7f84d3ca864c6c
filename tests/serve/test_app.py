"""The service of `unetlab serve` (src/unetlab/serve/app.py) through FastAPI's test client and schemathesis.

Predictions are compared with `Predictor.predict_proba` + `labels` on the same decoded image; every bad
input must be a 4xx `{"error": one line}`, never a 5xx."""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from unetlab.data.io import read_image  # noqa: E402
from unetlab.inference.predictor import Predictor  # noqa: E402
from unetlab.run_folder import RunFolder  # noqa: E402
from unetlab.serve.app import create_app  # noqa: E402

MAX_UPLOAD = 100_000
MAX_PIXELS = 300 * 300


@pytest.fixture(scope="module")
def app(tiny_run: Path):
    return create_app(tiny_run, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, device="cpu")


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    return Predictor.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def image_file(tgs_dir: Path) -> Path:
    return sorted((tgs_dir / "train" / "images").glob("*.png"))[0]


def _post(client: TestClient, data: bytes, name: str = "image.png", **params):
    return client.post("/predict", params=params, files={"file": (name, data, "application/octet-stream")})


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _probabilities(body: dict) -> np.ndarray:
    spec = body["probabilities"]
    assert spec["dtype"] == "float32" and spec["byte_order"] == "little"
    return np.frombuffer(base64.b64decode(spec["data"]), "<f4").reshape(spec["shape"])


def _assert_refused(response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    for needle in needles:
        assert needle in body["error"], (needle, body["error"])


def test_mask_is_the_predictors_at_the_operating_point(client, predictor, image_file):
    response = _post(client, image_file.read_bytes())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = read_image(image_file, channels=1)
    expected = predictor.labels(predictor.predict_proba([image])[0]) * 255
    mask = _png_array(response.content)
    assert mask.shape == image.shape == (101, 101)
    np.testing.assert_array_equal(mask, expected)


def test_probabilities_and_the_threshold(client, predictor, image_file):
    data = image_file.read_bytes()
    body = _post(client, data, probabilities="true").json()
    probs = _probabilities(body)
    np.testing.assert_allclose(probs, predictor.predict_proba([read_image(image_file, channels=1)])[0], atol=1e-6)
    np.testing.assert_array_equal(_png_array(base64.b64decode(body["image_png"])), read_image(image_file, 1))
    assert body["decoding"] == {"threshold": predictor.threshold, "min_area": 0, "min_component": 0}
    # Two thresholds inside the range of this image's probabilities: the masks must follow them.
    low, high = (float(t) for t in np.quantile(probs, [0.25, 0.75]))
    masks = [_png_array(_post(client, data, threshold=t).content) for t in (low, high)]
    for threshold, mask in zip((low, high), masks):
        np.testing.assert_array_equal(mask, (probs > threshold).astype(np.uint8) * 255)
    assert (masks[0] > 0).sum() > (masks[1] > 0).sum()


def test_min_area_empties_the_mask(client, image_file):
    data = image_file.read_bytes()
    full = _png_array(_post(client, data, threshold=0.01).content)
    assert full.any()
    emptied = _png_array(_post(client, data, threshold=0.01, min_area=int((full > 0).sum()) + 1).content)
    assert not emptied.any()


def test_model_card(client, tiny_run, predictor):
    card = client.get("/model").json()
    scores = json.loads(RunFolder(tiny_run).evaluation_path("best-val").read_text())
    assert card["run"] == tiny_run.name and card["task"] == "binary" and card["classes"] == ["background", "salt"]
    assert card["input_channels"] == 1 and card["epoch"] == predictor.epoch
    assert card["operating_point"]["threshold"] == predictor.threshold and card["operating_point"]["criterion"] is None
    assert card["training_data"]["format"] == "tgs"
    assert card["evaluation"]["split"] == "val" and card["evaluation"]["metrics"] == scores["metrics"]


def test_a_saved_operating_point_is_the_default(tiny_run, image_file, tmp_path):
    run = RunFolder(Path(shutil.copytree(tiny_run, tmp_path / "run")))
    checkpoint = run.checkpoint_path("best")
    run.write_operating_point({"threshold": 0.2, "min_area": 3, "min_component": 2, "criterion": "max-tgs",
                               "checkpoint": "best", "checkpoint_sha256": RunFolder.checkpoint_digest(checkpoint)})
    with TestClient(create_app(run.path, device="cpu")) as client:
        card = client.get("/model").json()
        body = _post(client, image_file.read_bytes(), probabilities="true").json()
    assert card["operating_point"] == {**card["operating_point"], "threshold": 0.2, "min_area": 3,
                                       "min_component": 2, "criterion": "max-tgs"}
    assert body["decoding"] == {"threshold": 0.2, "min_area": 3, "min_component": 2}


def test_multiclass_run_answers_class_indices(multiclass_data, tmp_path):
    from run_fixtures import multiclass_config

    from unetlab.api import train

    run = tmp_path / "run"
    train(multiclass_config("data.input_size=32", "train.epochs=1"), data_root=multiclass_data, run_dir=run,
          progress=False, evaluate_after=False, log=lambda _: None)
    predictor = Predictor.load(run, device="cpu")
    image_file = sorted((multiclass_data / "images").glob("*.png"))[0]
    with TestClient(create_app(run, device="cpu")) as client:
        card = client.get("/model").json()
        mask = _png_array(_post(client, image_file.read_bytes()).content)
        body = _post(client, image_file.read_bytes(), probabilities="true").json()
        refused = _post(client, image_file.read_bytes(), min_area=5)
    assert card["task"] == "multiclass" and len(card["classes"]) == 3 and len(card["palette"]) == 3
    assert card["evaluation"] is None
    probs = predictor.predict_proba([read_image(image_file, channels=1)])[0]
    np.testing.assert_array_equal(mask, predictor.labels(probs))
    assert body["probabilities"]["shape"] == [3, 32, 32]
    np.testing.assert_allclose(_probabilities(body), probs, atol=1e-6)
    _assert_refused(refused, 422, "min_area 5", "only binary runs")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a few bytes of data: a decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _streamed_upload():
    """A multipart upload of 3 x MAX_UPLOAD bytes sent in chunks, without a Content-Length."""
    yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG\r\n\x1a\n'
    for _ in range(30):
        yield bytes(MAX_UPLOAD // 10)
    yield b"\r\n--x--\r\n"


@pytest.mark.parametrize("case", ["text", "truncated", "too-large", "too-large-streamed", "bomb", "too-many-pixels",
                                  "threshold-0", "threshold-1.5", "threshold-abc", "min-area-negative", "no-file"])
def test_bad_input_is_a_4xx_json_error(client, image_file, case):
    png = image_file.read_bytes()
    big = Image.fromarray(np.zeros((400, 400), np.uint8))  # 160,000 pixels > MAX_PIXELS, a small file
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    requests = {
        "text": lambda: (_post(client, b"name,value\n1,2\n", "table.csv"), 415, "table.csv", "PNG, JPEG or TIFF"),
        "truncated": lambda: (_post(client, png[: len(png) // 2], "cut.png"), 422, "cut.png", "cannot decode"),
        "too-large": lambda: (_post(client, b"\x89PNG\r\n\x1a\n" + bytes(2 * MAX_UPLOAD)), 413, "larger than"),
        "too-large-streamed": lambda: (client.post("/predict", headers={"content-type": "multipart/form-data; "
                                                                        "boundary=x"}, content=_streamed_upload()),
                                       413, "larger than"),
        "bomb": lambda: (_post(client, _png_claiming(100_000, 100_000), "bomb.png"), 413, "bomb.png",
                         "10,000,000,000 pixels", "--max-pixels"),
        "too-many-pixels": lambda: (_post(client, buffer.getvalue(), "big.png"), 413, "160,000 pixels"),
        "threshold-0": lambda: (_post(client, png, threshold=0), 422, "threshold"),
        "threshold-1.5": lambda: (_post(client, png, threshold=1.5), 422, "threshold"),
        "threshold-abc": lambda: (_post(client, png, threshold="abc"), 422, "threshold"),
        "min-area-negative": lambda: (_post(client, png, min_area=-1), 422, "min_area"),
        "no-file": lambda: (client.post("/predict"), 422, "file"),
    }
    response, status, *needles = requests[case]()
    _assert_refused(response, status, *needles)


def test_concurrent_requests_get_their_own_masks(client, predictor, tgs_dir):
    files = sorted((tgs_dir / "train" / "images").glob("*.png"))[:6]
    expected = [predictor.labels(predictor.predict_proba([read_image(f, channels=1)])[0]) * 255 for f in files]
    with ThreadPoolExecutor(max_workers=6) as pool:
        masks = list(pool.map(lambda f: _png_array(_post(client, f.read_bytes(), f.name).content), files * 2))
    for mask, want in zip(masks, expected * 2):
        np.testing.assert_array_equal(mask, want)


def test_no_generated_input_makes_a_server_error(app, image_file):
    """schemathesis cases from the OpenAPI schema, valid and invalid ones, half of the uploads swapped for a
    real PNG so that the generated parameters reach the model (hypothesis is driven directly: schemathesis's
    pytest fixture loader does not run under this pytest)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings, strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} == {"GET /model", "POST /predict"}
    png, statuses = image_file.read_bytes(), set()
    for operation in operations:
        # GET /model takes nothing, so it has no invalid cases to generate.
        for mode in GenerationMode if operation.label == "POST /predict" else [GenerationMode.POSITIVE]:
            @given(case=operation.as_strategy(mode), real_image=st.booleans())
            @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case, real_image):
                if real_image and isinstance(case.body, dict) and "file" in case.body:
                    case.body = {**case.body, "file": png}
                response = case.call()
                case.validate_response(response, checks=[not_a_server_error])
                statuses.add(response.status_code)
                if response.status_code >= 400:
                    assert list(response.json()) == ["error"], response.text

            check()
    assert {200, 415, 422} <= statuses, statuses


def test_cli_serves_on_loopback_by_default(tiny_run, monkeypatch, capsys):
    import uvicorn
    from run_fixtures import assert_one_line_error, run_cli

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    code, out, err = run_cli(["serve", str(tiny_run), "--max-upload-mb", "1"], capsys)
    assert code == 0, err
    (app, options), = calls
    assert options["host"] == "127.0.0.1" and options["port"] == 8000 and "http://127.0.0.1:8000/" in out
    assert app.state.segmenter.max_upload_bytes == 1024 * 1024
    code, _, err = run_cli(["serve", str(tiny_run / "nowhere")], capsys)
    assert_one_line_error(code, err, "nowhere", "not found")
