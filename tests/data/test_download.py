"""Data set downloads against a loopback HTTP server: resume, verification, safe extraction, Kaggle."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import stat
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from unetlab.data import download
from unetlab.data.download import Archive, download_dataset
from unetlab.errors import UnetlabError

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` (path -> bytes); honours `Range: bytes=N-[M]` unless `server.honor_range` is off."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        if len(server.requests) > 50:  # type: ignore[attr-defined]  # bounded: a runaway client fails fast
            self.send_error(429)
            return
        body = server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        start, end, status = 0, len(body) - 1, 200
        match = RANGE.match(self.headers.get("Range") or "")
        if match and server.honor_range:  # type: ignore[attr-defined]
            start = int(match.group(1))
            end = min(int(match.group(2)), end) if match.group(2) else end
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        chunk = body[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.end_headers()
        if self.path in server.cut_once:  # type: ignore[attr-defined]  # drop the connection half way, once
            server.cut_once.discard(self.path)  # type: ignore[attr-defined]
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


class RangeServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
        self.httpd.daemon_threads = True
        self.httpd.files = {}  # type: ignore[attr-defined]
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.httpd.honor_range = True  # type: ignore[attr-defined]
        self.httpd.cut_once = set()  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    files = property(lambda self: self.httpd.files)
    requests = property(lambda self: self.httpd.requests)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


def _tar_gz(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Incompressible image bytes, so that half of the archive is a real prefix worth resuming.
IMAGES = {f"images/{breed}_{i}.jpg": os.urandom(40_000) for breed in ("Abyssinian", "beagle") for i in (1, 2)}
ANNOTATIONS = {
    "annotations/trainval.txt": b"Abyssinian_1 1 1 1\nbeagle_1 5 2 1\n",
    "annotations/test.txt": b"Abyssinian_2 1 1 1\nbeagle_2 5 2 1\n",
    **{f"annotations/trimaps/{Path(n).stem}.png": bytes([1, 2, 3]) * 50 for n in IMAGES},
}


@pytest.fixture
def pets(monkeypatch):
    """A loopback server with a small Oxford-Pet-like pair of archives, and DATASETS pointing at it."""
    server = RangeServer()
    archives = {"images.tar.gz": _tar_gz(IMAGES), "annotations.tar.gz": _tar_gz(ANNOTATIONS)}
    for name, data in archives.items():
        server.files[f"/pets/{name}"] = data
    table = [Archive(server.url(f"pets/{name}"), hashlib.sha256(data).hexdigest(), len(data))
             for name, data in archives.items()]
    monkeypatch.setattr(download, "DATASETS", {"oxford-pet": table})
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT_S", 5.0)
    yield server, archives
    server.stop()


def _assert_pet_layout(dest: Path) -> None:
    for name, data in {**IMAGES, **ANNOTATIONS}.items():
        assert (dest / name).read_bytes() == data, name


def test_full_download_extracts_verifies_and_writes_the_marker(pets, tmp_path, capsys):
    server, archives = pets
    dest = tmp_path / "pet"
    lines: list[str] = []
    assert download_dataset("oxford-pet", dest, log=lines.append) == dest
    _assert_pet_layout(dest)
    marker = json.loads((dest / download.MARKER_NAME).read_text())
    assert marker["dataset"] == "oxford-pet"
    assert [f["sha256"] for f in marker["files"]] == [hashlib.sha256(d).hexdigest() for d in archives.values()]
    # archives in DEST/.downloads are deleted once extracted; only the extraction records stay
    assert sorted(p.name for p in (dest / ".downloads").iterdir()) == [
        "annotations.tar.gz.extracted", "images.tar.gz.extracted"]
    assert [r for r in server.requests] == [("/pets/images.tar.gz", None), ("/pets/annotations.tar.gz", None)]
    assert any("SHA-256 verified" in line for line in lines)
    assert "downloading images.tar.gz" in capsys.readouterr().err  # the rich progress bar


def test_rerun_after_completion_only_reports(pets, tmp_path):
    server, _ = pets
    dest = tmp_path / "pet"
    download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    server.stop()  # no network needed any more
    lines: list[str] = []
    assert download_dataset("oxford-pet", dest, progress=False, log=lines.append) == dest
    assert len(lines) == 1 and "already complete" in lines[0]
    _assert_pet_layout(dest)


def test_a_partial_download_is_resumed_with_a_range_request(pets, tmp_path):
    server, archives = pets
    dest = tmp_path / "pet"
    data = archives["images.tar.gz"]
    half = len(data) // 2
    (dest / ".downloads").mkdir(parents=True)
    (dest / ".downloads" / "images.tar.gz.part").write_bytes(data[:half])
    lines: list[str] = []
    download_dataset("oxford-pet", dest, progress=False, log=lines.append)
    assert ("/pets/images.tar.gz", f"bytes={half}-") in server.requests
    assert ("/pets/annotations.tar.gz", None) in server.requests
    assert any(f"resuming images.tar.gz from {half} bytes" in line for line in lines)
    _assert_pet_layout(dest)


def test_a_server_ignoring_range_restarts_the_file(pets, tmp_path):
    server, archives = pets
    server.httpd.honor_range = False
    dest = tmp_path / "pet"
    (dest / ".downloads").mkdir(parents=True)
    (dest / ".downloads" / "images.tar.gz.part").write_bytes(archives["images.tar.gz"][:1000])
    download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    assert ("/pets/images.tar.gz", "bytes=1000-") in server.requests  # asked, got 200, started over
    _assert_pet_layout(dest)


def test_a_cut_connection_keeps_the_part_and_the_next_run_resumes(pets, tmp_path):
    server, archives = pets
    server.httpd.cut_once.add("/pets/images.tar.gz")
    dest = tmp_path / "pet"
    with pytest.raises(UnetlabError) as info:
        download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and "images.tar.gz" in message and "resumes" in message
    part = dest / ".downloads" / "images.tar.gz.part"
    kept = part.stat().st_size
    assert 0 < kept < len(archives["images.tar.gz"])
    download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    assert server.requests[-2] == ("/pets/images.tar.gz", f"bytes={kept}-")
    assert not part.exists()
    _assert_pet_layout(dest)


def test_hash_mismatch_is_refused_and_nothing_is_kept(pets, tmp_path, monkeypatch):
    _, archives = pets
    good = download.DATASETS["oxford-pet"]
    wrong = "0" * 64
    monkeypatch.setattr(download, "DATASETS", {"oxford-pet": [Archive(good[0].url, wrong, None), good[1]]})
    dest = tmp_path / "pet"
    with pytest.raises(UnetlabError, match="SHA-256") as info:
        download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and "not kept" in message and good[0].url in message
    assert list((dest / ".downloads").iterdir()) == []  # neither the archive nor a .part
    assert not (dest / "images").exists() and not (dest / download.MARKER_NAME).exists()


def test_without_a_published_hash_the_size_is_checked_and_said_so(pets, tmp_path, monkeypatch):
    _, archives = pets
    good = download.DATASETS["oxford-pet"]
    size = len(archives["images.tar.gz"])
    monkeypatch.setattr(download, "DATASETS", {"oxford-pet": [Archive(good[0].url, None, size), good[1]]})
    lines: list[str] = []
    download_dataset("oxford-pet", tmp_path / "ok", progress=False, log=lines.append)
    assert any("no published SHA-256 to check against; size checked instead" in line for line in lines)

    monkeypatch.setattr(download, "DATASETS", {"oxford-pet": [Archive(good[0].url, None, size + 1), good[1]]})
    with pytest.raises(UnetlabError, match=f"{size} bytes, expected {size + 1} bytes"):
        download_dataset("oxford-pet", tmp_path / "bad", progress=False, log=lambda _: None)
    assert list((tmp_path / "bad" / ".downloads").iterdir()) == []


def test_cache_dir_keeps_verified_archives_and_reuses_them(pets, tmp_path):
    server, _ = pets
    cache = tmp_path / "cache"
    download_dataset("oxford-pet", tmp_path / "a", cache_dir=cache, progress=False, log=lambda _: None)
    assert sorted(p.name for p in cache.iterdir()) == ["annotations.tar.gz", "images.tar.gz"]
    count = len(server.requests)
    server.stop()
    lines: list[str] = []
    download_dataset("oxford-pet", tmp_path / "b", cache_dir=cache, progress=False, log=lines.append)
    assert len(server.requests) == count and any("already downloaded" in line for line in lines)
    _assert_pet_layout(tmp_path / "b")


@pytest.mark.parametrize("member", ["../evil", "/tmp/unetlab-evil-abs", "images/../../evil"])
def test_unsafe_tar_members_are_refused(pets, tmp_path, monkeypatch, member):
    server, _ = pets
    data = _tar_gz({"images/ok.jpg": b"fine", member: b"gotcha"})
    server.files["/evil.tar.gz"] = data
    monkeypatch.setattr(download, "DATASETS", {
        "oxford-pet": [Archive(server.url("evil.tar.gz"), hashlib.sha256(data).hexdigest(), len(data))]})
    dest = tmp_path / "deep" / "pet"
    with pytest.raises(UnetlabError, match="refusing to extract") as info:
        download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    assert member in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/unetlab-evil-abs").exists()
    assert not (dest / "images" / "ok.jpg").exists()  # checked before anything is written


def test_a_symlink_pointing_outside_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:  # plain tar named .tar.gz, like the real Pet archives
        link = tarfile.TarInfo("images/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
    archive = tmp_path / "links.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(UnetlabError, match="outside"):
        download.extract_tar(archive, tmp_path / "dest")


def _unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_server_down_is_one_line_with_the_url_and_the_manual_way(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_unused_loopback_port()}/datasets/pets/images.tar.gz"
    monkeypatch.setattr(download, "DATASETS", {"oxford-pet": [Archive(url, "a" * 64, 10)]})
    dest = tmp_path / "pet"
    with pytest.raises(UnetlabError) as info:
        download_dataset("oxford-pet", dest, progress=False, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message
    assert f"downloading {url} failed" in message
    assert "images.tar.gz and annotations.tar.gz" in message and download.PAGES["oxford-pet"] in message
    assert f"extract them into {dest}" in message and str(dest / "annotations" / "trimaps") in message
    assert list((dest / ".downloads").iterdir()) == []  # no empty .part left behind


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(UnetlabError, match="oxford-pet, tgs-salt") as info:
        download_dataset("pascal-voc", tmp_path)
    assert "'pascal-voc'" in str(info.value)
    assert not any(tmp_path.iterdir())


def test_the_real_table_names_the_oxford_archives():
    archives = download.DATASETS["oxford-pet"]
    assert [a.url for a in archives] == ["https://thor.robots.ox.ac.uk/datasets/pets/images.tar.gz",
                                         "https://thor.robots.ox.ac.uk/datasets/pets/annotations.tar.gz"]
    for archive in archives:
        assert archive.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", archive.sha256)
        assert archive.size_bytes is None or archive.size_bytes > 0


# ---------------------------------------------------------------- TGS Salt through Kaggle

def test_tgs_without_kaggle_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(download.shutil, "which", lambda _name: None)
    with pytest.raises(UnetlabError) as info:
        download_dataset("tgs-salt", tmp_path / "tgs", progress=False, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and "not installed" in message
    assert not (tmp_path / "tgs").exists()  # nothing created on the way to the error
    for needle in ("pip install kaggle", "~/.kaggle/kaggle.json", "rules", "train.zip",
                   str(tmp_path / "tgs" / "train" / "images")):
        assert needle in message, needle


FAKE_KAGGLE = r'''#!{python}
"""A stand-in for the kaggle CLI: records its arguments, writes the competition zip (or fails)."""
import io, json, os, sys, zipfile
from pathlib import Path

args = sys.argv[1:]
Path(os.environ["FAKE_KAGGLE_LOG"]).write_text(json.dumps(args))
if os.environ.get("FAKE_KAGGLE_FAIL"):
    print("403 - Forbidden - You must accept this competition's rules before you'll be able to download files.")
    sys.exit(1)
dest = Path(args[args.index("-p") + 1])
train = io.BytesIO()
with zipfile.ZipFile(train, "w") as zf:
    for i in range(3):
        zf.writestr(f"images/{{i:04d}}.png", b"img%d" % i)
        zf.writestr(f"masks/{{i:04d}}.png", b"mask%d" % i)
files = {{"train.zip": train.getvalue(), "test.zip": b"test", "train.csv": b"id,rle_mask\n",
          "depths.csv": b"id,z\n", "sample_submission.csv": b"id,rle_mask\n"}}
if os.environ.get("FAKE_KAGGLE_FLAT"):
    for name, data in files.items():
        (dest / name).write_bytes(data)
else:
    with zipfile.ZipFile(dest / "tgs-salt-identification-challenge.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
print("Downloading tgs-salt-identification-challenge.zip to", dest)
'''


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """A fake `kaggle` first on PATH, a HOME with ~/.kaggle/kaggle.json; yields the argument log path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(FAKE_KAGGLE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "FAKE_KAGGLE_FAIL", "FAKE_KAGGLE_FLAT"):
        monkeypatch.delenv(name, raising=False)
    log = tmp_path / "kaggle-args.json"
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    return log, home


@pytest.mark.parametrize("flat", [False, True], ids=["competition-zip", "separate-files"])
def test_tgs_with_kaggle_unzips_into_the_tgs_layout(fake_kaggle, tmp_path, monkeypatch, flat):
    log, _ = fake_kaggle
    if flat:
        monkeypatch.setenv("FAKE_KAGGLE_FLAT", "1")
    dest = tmp_path / "tgs"
    assert download_dataset("tgs-salt", dest, progress=False, log=lambda _: None) == dest
    args = json.loads(log.read_text())
    assert args == ["competitions", "download", "-c", "tgs-salt-identification-challenge", "-p", str(dest)]
    assert sorted(p.name for p in (dest / "train" / "images").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert (dest / "train" / "masks" / "0001.png").read_bytes() == b"mask1"
    assert (dest / "train.csv").is_file() and (dest / "depths.csv").is_file()
    assert not (dest / "train.zip").exists() and not (dest / "tgs-salt-identification-challenge.zip").exists()
    assert json.loads((dest / download.MARKER_NAME).read_text())["dataset"] == "tgs-salt"

    log.unlink()
    lines: list[str] = []
    download_dataset("tgs-salt", dest, progress=False, log=lines.append)
    assert not log.exists() and "already complete" in lines[0]  # kaggle not run again


def test_tgs_with_kaggle_but_no_token_says_how(fake_kaggle):
    _, home = fake_kaggle
    (home / ".kaggle" / "kaggle.json").unlink()
    with pytest.raises(UnetlabError, match="no API token") as info:
        download_dataset("tgs-salt", home.parent / "tgs", progress=False, log=lambda _: None)
    assert "kaggle.json" in str(info.value) and "\n" not in str(info.value)


def test_tgs_kaggle_failure_points_at_the_rules(fake_kaggle, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    with pytest.raises(UnetlabError, match="exited with code 1") as info:
        download_dataset("tgs-salt", tmp_path / "tgs", progress=False, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and "403" in message
    assert "https://www.kaggle.com/c/tgs-salt-identification-challenge/rules" in message
