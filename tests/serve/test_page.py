"""The page of `unetlab serve` (src/unetlab/serve/static) in a real headless browser: Playwright driving
Debian's chromium against uvicorn on a loopback port. The mask the page draws must be the server's rule
applied to the probabilities it kept, at the operating point and after the slider moved.

The screenshot is saved in the test's tmp folder (its path is printed) as the test's artefact."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")

# The mask canvas's pixels (R channel: 255 = foreground), as the page would download them.
MASK_PIXELS = """() => {
  const canvas = document.getElementById("mask");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  return Array.from({length: data.length / 4}, (_, i) => data[4 * i]);
}"""


def _browser_or_skip():
    """Playwright's sync API; without chromium the test is skipped locally, but fails under CI."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is missing (pip install 'unetlab[dev]')"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    return sync_playwright


@contextlib.contextmanager
def serving(run: Path):
    """`run` served by uvicorn on a free loopback port, in a thread; yields the base URL."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")

    from unetlab.serve.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run, device="cpu"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server_url(tiny_run: Path):
    with serving(tiny_run) as url:
        yield url


def _probabilities(url: str, image_file: Path) -> tuple[dict, np.ndarray]:
    import httpx

    body = httpx.post(f"{url}/predict", params={"probabilities": "true"},
                      files={"file": (image_file.name, image_file.read_bytes())}).json()
    spec = body["probabilities"]
    return body, np.frombuffer(base64.b64decode(spec["data"]), "<f4").reshape(spec["shape"])


def _open_page(playwright, url: str, run_name: str):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    page.wait_for_function(f"document.getElementById('card').textContent.includes('{run_name}')")
    return browser, page, errors


def test_upload_overlay_and_slider(server_url, tiny_run, tgs_dir, tmp_path):
    sync_playwright = _browser_or_skip()
    image_file = sorted((tgs_dir / "train" / "images").glob("*.png"))[0]
    body, probs = _probabilities(server_url, image_file)
    with sync_playwright() as playwright:
        browser, page, errors = _open_page(playwright, server_url, tiny_run.name)
        try:
            page.set_input_files("#file", str(image_file))
            page.wait_for_selector("body[data-ready='true']", timeout=15_000)
            at_operating_point = np.array(page.evaluate(MASK_PIXELS))
            np.testing.assert_array_equal(at_operating_point.reshape(101, 101),
                                          (probs > body["decoding"]["threshold"]) * 255)

            slider = page.locator("#threshold")
            slider.focus()
            page.keyboard.press("Home")  # the lowest threshold, 0.01: a user's key press, not a script's
            threshold = float(slider.input_value())
            assert threshold == pytest.approx(0.01)
            moved = np.array(page.evaluate(MASK_PIXELS))
            np.testing.assert_array_equal(moved.reshape(101, 101), (probs > threshold) * 255)
            assert (moved > 0).sum() != (at_operating_point > 0).sum()
            assert page.locator("#overlay").get_attribute("data-foreground") == str((moved > 0).sum())
            # Halfway through this image's probabilities, for a screenshot with contours; then the download.
            for _ in range(int(np.median(probs) * 100) - 1):
                page.keyboard.press("ArrowRight")
            threshold = float(slider.input_value())
            with page.expect_download() as download:
                page.click("#download")
            download.value.save_as(tmp_path / "mask.png")
            saved = np.asarray(Image.open(tmp_path / "mask.png").convert("L"))
            np.testing.assert_array_equal(saved, (probs > threshold) * 255)
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 1000 and not errors, errors
        finally:
            browser.close()


def test_multiclass_colours_and_legend(multiclass_data, tmp_path):
    sync_playwright = _browser_or_skip()
    from run_fixtures import multiclass_config

    from unetlab.api import train

    run = tmp_path / "run"
    train(multiclass_config("data.input_size=32", "train.epochs=1"), data_root=multiclass_data, run_dir=run,
          progress=False, evaluate_after=False, log=lambda _: None)
    image_file = sorted((multiclass_data / "images").glob("*.png"))[0]
    with serving(run) as url, sync_playwright() as playwright:
        body, probs = _probabilities(url, image_file)
        browser, page, errors = _open_page(playwright, url, run.name)
        try:
            page.set_input_files("#file", str(image_file))
            page.wait_for_selector("body[data-ready='true']", timeout=15_000)
            assert page.locator("#legend li").all_inner_texts() == body["classes"]
            assert not page.locator("#threshold-control").is_visible()
            drawn = np.array(page.evaluate(MASK_PIXELS)).reshape(32, 32)
            np.testing.assert_array_equal(drawn, probs.argmax(axis=0))
            page.screenshot(path=str(tmp_path / "serve-page-multiclass.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'serve-page-multiclass.png'}")
            assert not errors, errors
        finally:
            browser.close()
