"""Download public segmentation data sets into a folder: `download_dataset(name, dest)`.

* `oxford-pet`: the Oxford-IIIT Pet archives (`images.tar.gz`, `annotations.tar.gz`) from the
  Oxford VGG group's server, giving `DEST/images/*.jpg` and `DEST/annotations/trimaps/*.png`.
* `tgs-salt`: the TGS Salt Identification Challenge through Kaggle's command-line tool (Kaggle
  requires an account, an API token and accepting the competition rules), giving
  `DEST/train/images`, `DEST/train/masks`, `DEST/train.csv` and `DEST/depths.csv`.

An archive is streamed into `<downloads>/<file>.part` (`<downloads>` is `cache_dir`, else
`DEST/.downloads`); an interrupted download resumes with an HTTP Range request on the next run. The
finished file is checked (SHA-256, size), renamed to its final name, extracted into DEST with unsafe
members refused, and a marker file is written last (`DEST/.unetlab-dataset.json`), so that running
the same command again only reports that the data set is complete.

`download_file` is the generic part (also used for the pretrained weights in
`unetlab.models.weights`): stream a URL into a `.part` file, resume it, show a rich progress bar,
check the SHA-256, rename atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from unetlab.errors import UnetlabError
from unetlab.files import atomic_write_text

DOWNLOAD_TIMEOUT_S = 60.0
MARKER_NAME = ".unetlab-dataset.json"
DOWNLOADS_DIRNAME = ".downloads"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One file of a data set: where it is, and what it must hash to (None: nothing published)."""

    url: str
    sha256: str | None
    size_bytes: int | None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


# The Oxford VGG page (https://www.robots.ox.ac.uk/~vgg/data/pets/) links these two archives; it
# publishes no checksums itself. The SHA-256 values and sizes are the ones published by TensorFlow
# Datasets (tensorflow_datasets/datasets/oxford_iiit_pet/checksums.tsv) and by torchvision's
# prototype datasets (torchvision/prototype/datasets/_builtin/oxford_iiit_pet.py) for the same files;
# torchvision's released OxfordIIITPet pins the matching MD5s. Note: despite the name, the files are
# plain (uncompressed) tar archives; extraction detects the compression itself.
DATASETS: dict[str, list[Archive]] = {
    "oxford-pet": [
        Archive("https://thor.robots.ox.ac.uk/datasets/pets/images.tar.gz",
                "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d", 791_918_971),
        Archive("https://thor.robots.ox.ac.uk/datasets/pets/annotations.tar.gz",
                "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91", 19_173_078),
    ],
}
PAGES = {"oxford-pet": "https://www.robots.ox.ac.uk/~vgg/data/pets/"}
# Folders (relative to DEST) that must exist once a data set is in place.
LAYOUTS = {"oxford-pet": ("images", "annotations/trimaps"), "tgs-salt": ("train/images",)}

TGS_COMPETITION = "tgs-salt-identification-challenge"
TGS_PAGE = f"https://www.kaggle.com/c/{TGS_COMPETITION}"
TGS_KEEP = ("train.csv", "depths.csv")


def dataset_names() -> list[str]:
    return sorted([*DATASETS, "tgs-salt"])


# ---------------------------------------------------------------------------- generic download

class DownloadFailed(UnetlabError):
    """The transfer itself failed (offline, refused, timeout, HTTP error, cut short)."""

    def __init__(self, url: str, reason: str, part: Path | None = None):
        self.url, self.reason, self.part = url, reason, part
        kept = f"; the partial file {part} is kept and resumes on the next try" if part else ""
        super().__init__(f"downloading {url} failed ({reason}){kept}")


class ChecksumMismatch(UnetlabError):
    """The file arrived complete but its SHA-256 (or size) is not the expected one; it was deleted."""

    def __init__(self, url: str, what: str, actual: str, expected: str):
        self.url, self.what, self.actual, self.expected = url, what, actual, expected
        super().__init__(f"{url} arrived with {what} {actual}, expected {expected}; the file was not kept")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def one_line(exc: BaseException) -> str:
    """An exception as one short line of text."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def download_file(url: str, target: Path, *, sha256: str | None = None, size: int | None = None,
                  part: Path | None = None, resume: bool = True, timeout: float | None = None,
                  progress: bool = True, label: str | None = None) -> str:
    """Download `url` to `target` through `part` (default `<target>.part`); the file's hex SHA-256.

    `sha256` is the expected digest, in full or a leading prefix of it (torchvision publishes 8 hex
    digits); `size` the expected number of bytes; either may be None (not checked). With `resume`, an
    existing `part` is continued with a `Range: bytes=N-` request (a 206 answer is appended, a 200
    answer restarts from scratch) and a failed transfer leaves the part in place for the next try;
    without it, any failure deletes the part. A file that fails its checks is deleted. Raises
    `DownloadFailed` (transfer) or `ChecksumMismatch` (content); `target` appears only when complete
    and verified (an atomic rename).
    """
    target = Path(target)
    part = Path(part) if part is not None else target.with_name(target.name + ".part")
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    label = label or target.name
    if not resume:
        part.unlink(missing_ok=True)
    try:
        if size is not None and part.is_file() and part.stat().st_size > size:
            part.unlink()  # longer than the real file: not a prefix of it
        if not (size is not None and part.is_file() and part.stat().st_size == size):
            _stream(url, part, timeout, progress, label, size)
        digest = sha256_of(part)
        got = part.stat().st_size
        if size is not None and got != size:
            part.unlink()
            raise ChecksumMismatch(url, "size", f"{got} bytes", f"{size} bytes")
        if sha256 is not None and not digest.startswith(sha256.lower()):
            part.unlink()
            raise ChecksumMismatch(url, "SHA-256", digest[:max(len(sha256), 16)] + "...",
                                   sha256 if len(sha256) <= 16 else sha256[:16] + "...")
        os.replace(part, target)
        return digest
    except DownloadFailed as exc:
        if not resume or not part.is_file() or part.stat().st_size == 0:
            part.unlink(missing_ok=True)
            raise DownloadFailed(url, exc.reason) from None
        raise DownloadFailed(url, exc.reason, part) from None
    except BaseException:
        if not resume:
            part.unlink(missing_ok=True)
        raise


def _stream(url: str, part: Path, timeout: float, progress: bool, label: str, size: int | None) -> None:
    """Fetch `url` into `part`, continuing an existing part with a Range request where possible."""
    for _attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "unetlab", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                append = False
                if offset and response.status == 206:
                    content_range = response.headers.get("Content-Range", "")
                    if not content_range.replace(" ", "").startswith(f"bytes{offset}-"):
                        part.unlink()  # a range we did not ask for: start again without Range
                        continue
                    append = True
                length = response.headers.get("Content-Length")
                remaining = int(length) if length and length.isdigit() else None
                start = offset if append else 0
                total = start + remaining if remaining is not None else size
                _copy(response, part, append, start, total, remaining, progress, label)
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the part is not a prefix the server can continue
                part.unlink()
                continue
            raise DownloadFailed(url, one_line(exc)) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError, TimeoutError and connection resets are all OSErrors.
            raise DownloadFailed(url, one_line(exc)) from None
    raise DownloadFailed(url, "the server did not answer the resume request consistently")


def _copy(response, part: Path, append: bool, start: int, total: int | None, remaining: int | None,
          progress: bool, label: str) -> None:
    bar = _progress_bar() if progress else None
    done = 0
    with (bar if bar is not None else contextlib.nullcontext()), part.open("ab" if append else "wb") as out:
        task = bar.add_task(label, total=total, completed=start) if bar is not None else None
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(task, advance=len(chunk))
    if remaining is not None and done != remaining:
        raise http.client.IncompleteRead(b"", remaining - done)


def _progress_bar():
    """A rich progress bar on stderr: bytes, speed, ETA (one final line where stderr is no terminal)."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    return Progress(TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True))


# ---------------------------------------------------------------------------- safe extraction

def _unsafe_reason(name: str, member: tarfile.TarInfo | None = None) -> str | None:
    """Why an archive member must not be extracted, or None when it is safe."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") \
            or ".." in name.replace("\\", "/").split("/"):
        return "an absolute path or one with '..'"
    if member is not None:
        if member.isdev() or member.isfifo():
            return "a device or FIFO"
        if member.issym() or member.islnk():
            link = member.linkname
            base = posixpath.dirname(name) if member.issym() else ""
            resolved = posixpath.normpath(posixpath.join(base, link))
            if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                return f"a link pointing outside the folder ({link})"
    return None


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract a tar archive (any compression) into `dest`, refusing absolute paths, '..' and outward links.

    Every member is checked before anything is written; `tarfile`'s `filter="data"` is applied on
    top where this Python has it.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_reason(member.name, member)
                if reason:
                    raise UnetlabError(f"refusing to extract {archive.name}: member {member.name!r} is {reason}; "
                                       f"the archive is not what was expected, delete {archive} and download it again")
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Pythons before 3.10.12 / 3.11.4
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnetlabError(f"cannot extract {archive} into {dest} ({one_line(exc)}); "
                           f"delete {archive} to download it again") from None


def extract_zip(archive: Path, dest: Path, names: list[str] | None = None) -> None:
    """Extract a zip archive (or only `names` of it) into `dest`, refusing absolute paths and '..'."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [info for info in zf.infolist() if names is None or info.filename in names]
            for info in infos:
                if _unsafe_reason(info.filename) is not None:
                    raise UnetlabError(f"refusing to extract {archive.name}: member {info.filename!r} is an "
                                       f"absolute path or one with '..'; delete {archive} and download it again")
            dest.mkdir(parents=True, exist_ok=True)
            for info in infos:
                zf.extract(info, dest)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UnetlabError(f"cannot extract {archive} into {dest} ({one_line(exc)}); "
                           f"delete {archive} and download it again") from None


# ---------------------------------------------------------------------------- data sets

def download_dataset(name: str, dest: str | Path, cache_dir: str | Path | None = None, progress: bool = True,
                     log: Callable[[str], object] = print) -> Path:
    """Download and extract the named data set into `dest`; the folder to pass as `--data`.

    `name` is one of `dataset_names()`. Archives are downloaded into `cache_dir` (kept there, and
    reused by later calls) or else into `dest/.downloads` (deleted once extracted). `progress` shows a
    progress bar on stderr; `log` receives one line per step. A completed data set (its marker file is
    present and its folders exist) is not downloaded again. Raises `UnetlabError` with a one-line
    message (which URL failed and how to get the files by hand; a SHA-256 mismatch; an unsafe archive;
    Kaggle missing or not configured).
    """
    if name not in dataset_names():
        raise UnetlabError(f"unknown data set {name!r}; choose one of {', '.join(dataset_names())}")
    dest = Path(dest).expanduser()
    if _is_complete(name, dest):
        log(f"{name}: already complete in {dest} (marker {dest / MARKER_NAME}); nothing to do")
        return dest
    if name == "tgs-salt":
        record = _download_tgs(dest, progress, log)
    else:
        record = _download_archives(name, dest, cache_dir, progress, log)
    missing = [sub for sub in LAYOUTS[name] if not (dest / sub).is_dir()]
    if missing:
        raise UnetlabError(f"{name}: the downloaded files did not give {dest / missing[0]}; "
                           f"{_manual(name, dest)}")
    _write_json(dest / MARKER_NAME, {"dataset": name, "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "files": record})
    log(f"{name}: complete in {dest}")
    return dest


def _make_dir(name: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnetlabError(f"{name}: cannot create {folder} ({one_line(exc)}); choose a writable folder") from None


def _is_complete(name: str, dest: Path) -> bool:
    try:
        marker = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("dataset") == name and all(
        (dest / sub).is_dir() for sub in LAYOUTS[name])


def _manual(name: str, dest: Path) -> str:
    if name == "oxford-pet":
        return (f"without internet, download images.tar.gz and annotations.tar.gz from {PAGES[name]} and extract them into {dest} "
                f"so that {dest / 'images'} and {dest / 'annotations' / 'trimaps'} exist")
    if name == "tgs-salt":
        return (f"download the data from {TGS_PAGE}/data by hand and unzip train.zip into {dest / 'train'} "
                f"so that {dest / 'train' / 'images'} exists (keep train.csv and depths.csv in {dest})")
    files = ", ".join(a.filename for a in DATASETS[name])
    return f"without internet, download {files} elsewhere and extract them into {dest}"


def _download_archives(name: str, dest: Path, cache_dir: str | Path | None, progress: bool,
                       log: Callable[[str], object]) -> list[dict]:
    own_downloads = dest / DOWNLOADS_DIRNAME
    downloads = Path(cache_dir).expanduser() if cache_dir is not None else own_downloads
    for folder in (dest, own_downloads, downloads):
        _make_dir(name, folder)
    record = []
    for archive in DATASETS[name]:
        target = downloads / archive.filename
        done_marker = own_downloads / f"{archive.filename}.extracted"
        done = _read_json(done_marker)
        if done is not None and done.get("url") == archive.url and (
                archive.sha256 is None or done.get("sha256") == archive.sha256):
            log(f"{name}: {archive.filename} already extracted into {dest}")
            record.append(done)
            continue
        digest = _fetch_archive(name, archive, target, dest, progress, log)
        log(f"{name}: extracting {archive.filename} into {dest}")
        extract_tar(target, dest)
        entry = {"file": archive.filename, "url": archive.url, "sha256": digest,
                 "size_bytes": target.stat().st_size}
        _write_json(done_marker, entry)
        record.append(entry)
        if downloads == own_downloads:
            target.unlink(missing_ok=True)  # extracted and recorded; cache_dir keeps its copies
    return record


def _fetch_archive(name: str, archive: Archive, target: Path, dest: Path, progress: bool,
                   log: Callable[[str], object]) -> str:
    """The verified archive at `target` (downloaded, resumed, or found there); its SHA-256."""
    if target.is_file():
        digest = sha256_of(target)
        if _matches(archive, target, digest):
            log(f"{name}: using {target} (already downloaded, {_check_note(archive)})")
            return digest
        log(f"{name}: {target} does not match the expected {'SHA-256' if archive.sha256 else 'size'}; "
            f"downloading it again")
        target.unlink()
    part = target.with_name(target.name + ".part")
    if part.is_file():
        log(f"{name}: resuming {archive.filename} from {part.stat().st_size} bytes")
    else:
        log(f"{name}: downloading {archive.url}")
    try:
        digest = download_file(archive.url, target, sha256=archive.sha256, size=archive.size_bytes, part=part,
                               resume=True, timeout=DOWNLOAD_TIMEOUT_S, progress=progress, label=archive.filename)
    except DownloadFailed as exc:
        kept = f"; the partial file {exc.part} resumes when you run this again" if exc.part else ""
        raise UnetlabError(f"{name}: downloading {archive.url} failed ({exc.reason}){kept}; "
                           f"{_manual(name, dest)}") from None
    except ChecksumMismatch as exc:
        raise UnetlabError(f"{name}: {archive.url} arrived with {exc.what} {exc.actual}, expected {exc.expected}; "
                           f"the file was not kept; run again, or {_manual(name, dest)}") from None
    log(f"{name}: {archive.filename} {_check_note(archive)}")
    return digest


def _matches(archive: Archive, path: Path, digest: str) -> bool:
    if archive.size_bytes is not None and path.stat().st_size != archive.size_bytes:
        return False
    return archive.sha256 is None or digest == archive.sha256.lower()


def _check_note(archive: Archive) -> str:
    if archive.sha256 is not None:
        return "SHA-256 verified"
    if archive.size_bytes is not None:
        return "no published SHA-256 to check against; size checked instead"
    return "no published SHA-256 or size to check against; not verified"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: object) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------------- TGS Salt (Kaggle)

def _kaggle_configured() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    folder = os.environ.get("KAGGLE_CONFIG_DIR")
    return (Path(folder).expanduser() if folder else Path.home() / ".kaggle").joinpath("kaggle.json").is_file()


def _download_tgs(dest: Path, progress: bool, log: Callable[[str], object]) -> list[dict]:
    exe = shutil.which("kaggle")
    how = (f"install it (pip install kaggle), put your API token (kaggle.com > Settings > API > Create New Token) "
           f"in ~/.kaggle/kaggle.json, accept the competition rules at {TGS_PAGE}/rules, and run this again; "
           f"or {_manual('tgs-salt', dest)}")
    if exe is None:
        raise UnetlabError(f"tgs-salt: the Kaggle command-line tool is not installed; {how}")
    if not _kaggle_configured():
        raise UnetlabError(f"tgs-salt: the Kaggle command-line tool has no API token "
                           f"(~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY); {how}")
    _make_dir("tgs-salt", dest)
    command = [exe, "competitions", "download", "-c", TGS_COMPETITION, "-p", str(dest)]
    log(f"tgs-salt: running {' '.join(command)}")
    code, tail = _run_teed(command, progress)
    if code != 0:
        hint = (f"accept the competition rules at {TGS_PAGE}/rules"
                if "403" in tail or "forbidden" in tail.lower() else "check the Kaggle token and network")
        raise UnetlabError(f"tgs-salt: kaggle exited with code {code} ({_last_line(tail)}); {hint}, "
                           f"or {_manual('tgs-salt', dest)}")
    bundle = dest / f"{TGS_COMPETITION}.zip"
    if bundle.is_file():  # the whole competition in one zip: take train.zip and the csv files out of it
        with zipfile.ZipFile(bundle) as zf:
            wanted = [n for n in zf.namelist() if n in ("train.zip", *TGS_KEEP)]
        log(f"tgs-salt: extracting {', '.join(wanted) or 'nothing'} from {bundle.name}")
        extract_zip(bundle, dest, wanted)
    train_zip = dest / "train.zip"
    if not train_zip.is_file():
        raise UnetlabError(f"tgs-salt: kaggle finished but {train_zip} is missing; {_manual('tgs-salt', dest)}")
    with zipfile.ZipFile(train_zip) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    nested = bool(names) and all(n.startswith("train/") for n in names)
    log(f"tgs-salt: extracting train.zip into {dest / 'train'}")
    extract_zip(train_zip, dest if nested else dest / "train")
    record = [{"file": "train.zip", "sha256": sha256_of(train_zip), "size_bytes": train_zip.stat().st_size}]
    for keep in TGS_KEEP:
        if (dest / keep).is_file():
            record.append({"file": keep, "sha256": sha256_of(dest / keep), "size_bytes": (dest / keep).stat().st_size})
    train_zip.unlink()
    if bundle.is_file():
        bundle.unlink()
    return record


def _run_teed(command: list[str], show: bool) -> tuple[int, str]:
    """Run `command`, passing its output to stderr when `show`; its exit code and the last 4 kB of output."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise UnetlabError(f"tgs-salt: cannot run {command[0]} ({one_line(exc)}); "
                           f"reinstall it with pip install kaggle") from None
    tail = b""
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(1 << 14):  # type: ignore[attr-defined]  # whatever has arrived
        tail = (tail + chunk)[-4096:]
        if show:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
    return proc.wait(), tail.decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return one_line(Exception(lines[-1])) if lines else "no output"
