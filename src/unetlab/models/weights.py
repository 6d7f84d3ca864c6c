"""Pretrained encoder weights: a named download (`imagenet`) or a local file, as a state dict.

`model.encoder_weights` in the config is passed here:

* `None`: no weights (random initialisation).
* `"imagenet"`: torchvision's ImageNet ResNet-34 checkpoint, downloaded once into a cache folder
  (`cache_dir`, else `$UNETLAB_CACHE`, else `~/.cache/unetlab/weights`) and checked by SHA-256.
* anything else: the path of a local checkpoint (a state dict, or a dict with a `state_dict` key),
  for machines without internet: fetch the URL in `WEIGHTS` elsewhere and pass the file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import torch

from unetlab.errors import UnetlabError

# name -> (url, the leading hex digits of the file's SHA-256). torchvision publishes the first 8 hex
# digits of each checkpoint's SHA-256 in its file name (resnet34-<b627a593>.pth) and torch.hub checks
# downloads against that prefix; we check the same prefix. Tests point this table at a local server.
WEIGHTS: dict[str, tuple[str, str]] = {
    "imagenet": ("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
}
DOWNLOAD_TIMEOUT_S = 60.0
CACHE_ENV = "UNETLAB_CACHE"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """`$UNETLAB_CACHE` if set, else `~/.cache/unetlab/weights`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unetlab" / "weights"


def load_encoder_weights(spec: None | str | Path,
                         cache_dir: str | Path | None = None) -> dict[str, torch.Tensor] | None:
    """The state dict named by `spec` (see the module docstring), on the CPU; None for `None`.

    A named download is verified by SHA-256: the first hex digits of the file's digest must equal
    the prefix torchvision publishes in the file name (`b627a593` for ResNet-34), as
    `torch.hub.download_url_to_file(hash_prefix=...)` does. A cached file is verified again before
    every use (and downloaded anew if it no longer matches). Raises `UnetlabError` for a missing or
    unreadable file, a failed download (offline, timeout, HTTP error) or a hash mismatch.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec in WEIGHTS:
        path = fetch_weights(spec, cache_dir)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise UnetlabError(f"model.encoder_weights: {path} {what}; pass a checkpoint file "
                               f"or one of {', '.join(sorted(WEIGHTS))}")
    return _read_state_dict(path)


def fetch_weights(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The cached, verified file of the named weights, downloading it first if needed."""
    url, prefix = WEIGHTS[name]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file():
        if _sha256(target).startswith(prefix):
            return target
        print(f"unetlab: cached {target} does not match its SHA-256 prefix {prefix}; downloading it again",
              file=sys.stderr)
        target.unlink()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnetlabError(f"model.encoder_weights: cannot create the weights cache {folder} ({_one_line(exc)}); "
                           f"set ${CACHE_ENV} to a writable folder") from None
    _download(url, prefix, target, progress)
    return target


def _download(url: str, prefix: str, target: Path, progress: bool) -> None:
    """Download `url` to a temporary file next to `target`, check its SHA-256 prefix, rename it into place."""
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
    temp = Path(handle.name)
    try:
        with handle:
            try:
                digest = _copy_from_url(url, handle, target.name, progress)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # URLError, HTTPError, TimeoutError and connection resets are all OSErrors.
                raise UnetlabError(
                    f"model.encoder_weights: downloading {url} failed ({_one_line(exc)}); without internet, "
                    f"fetch {url} on a connected machine and pass the file: "
                    f"model.encoder_weights=/path/to/{target.name}") from None
        if not digest.startswith(prefix):
            raise UnetlabError(
                f"model.encoder_weights: {url} arrived with SHA-256 {digest[:len(prefix)]}..., expected prefix "
                f"{prefix}; the file was not kept; retry, or pass a verified local file: "
                f"model.encoder_weights=/path/to/{target.name}")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _copy_from_url(url: str, out: IO[bytes], label: str, progress: bool) -> str:
    """Stream `url` into `out`, showing progress on stderr; the hex SHA-256 of what was written."""
    sha = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "unetlab"})
    shown: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                percent = 100 * done // total if total else -1
                if progress and (percent != shown or not total):
                    shown = percent
                    size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB ({percent}%)" if total else f"{done / 1e6:.1f} MB"
                    print(f"\rdownloading {label}: {size}", end="", file=sys.stderr, flush=True)
            if total and done != total:
                raise http.client.IncompleteRead(b"", total - done)
    finally:
        if shown is not None:
            print(file=sys.stderr, flush=True)  # end the progress line, also before an error message
    return sha.hexdigest()


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors have no common base class
        raise UnetlabError(f"model.encoder_weights: cannot read {path} as a torch checkpoint "
                           f"({_one_line(exc)}); pass a state dict saved with torch.save") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()):
        raise UnetlabError(f"model.encoder_weights: {path} holds no state dict (name -> tensor), "
                           f"nor a dict with one under 'state_dict'")
    return dict(loaded)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
