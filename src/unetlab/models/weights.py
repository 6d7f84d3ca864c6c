"""Pretrained encoder weights: a named download (`imagenet`) or a local file, as a state dict.

`model.encoder_weights` in the config is passed here:

* `None`: no weights (random initialisation).
* `"imagenet"`: torchvision's ImageNet ResNet-34 checkpoint, downloaded once into a cache folder
  (`cache_dir`, else `$UNETLAB_CACHE`, else `~/.cache/unetlab/weights`) and checked by SHA-256.
* anything else: the path of a local checkpoint (a state dict, or a dict with a `state_dict` key),
  for machines without internet: fetch the URL in `WEIGHTS` elsewhere and pass the file. A local
  file named like a known download (`resnet34-b627a593.pth`) must have that download's SHA-256 prefix.

Every file is read by `load_weights_only` (checkpoints too): `torch.load(weights_only=True)`, tensors
and plain data only, so reading a file never runs code; pickled objects are refused in one line.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from unetlab.data.download import ChecksumMismatch, DownloadFailed, download_file, one_line, sha256_of
from unetlab.errors import UnetlabError

# name -> (url, the leading hex digits of the file's SHA-256). torchvision publishes the first 8 hex
# digits of each checkpoint's SHA-256 in its file name (resnet34-<b627a593>.pth) and torch.hub checks
# downloads against that prefix; we check the same prefix. Tests point this table at a local server.
WEIGHTS: dict[str, tuple[str, str]] = {
    "imagenet": ("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
}
DOWNLOAD_TIMEOUT_S = 60.0
CACHE_ENV = "UNETLAB_CACHE"
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_PICKLE_PROTOCOL = b"\x80"  # the first byte of a pickle of protocol 2 or later


def load_weights_only(path: Path, fix: str, prefix: str = "") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU. A file holding pickled Python objects, or one
    torch cannot read, is a one-line `UnetlabError`: `prefix`, the file, what is wrong, then `fix`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of files it did not write
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors have no common base class
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused or (isinstance(exc, pickle.UnpicklingError) and _starts_like_pickle(path)):
            held = f" ({refused.group(1)})" if refused else ""
            raise UnetlabError(f"{prefix}{path}: holds pickled Python objects{held}, which unetlab never unpickles "
                               "(unpickling can run any code): it reads tensors and plain data only, with "
                               f"torch.load(weights_only=True); {fix}") from None
        raise UnetlabError(f"{prefix}{path}: cannot be read as a torch file ({_why_unreadable(exc)}); the file is "
                           f"truncated, corrupt or of another kind; {fix}") from None


def _starts_like_pickle(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(1) == _PICKLE_PROTOCOL


def _why_unreadable(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return "empty or cut short"
    if isinstance(exc, pickle.UnpicklingError):
        return "neither a torch zip archive nor a pickle"
    return " ".join(str(exc).split()).split(". ")[0][:160] or type(exc).__name__


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
        _check_official_name(path)
    return _read_state_dict(path)


def _check_official_name(path: Path) -> None:
    """A local file named like a known download must be that download: same SHA-256 prefix."""
    for url, prefix in WEIGHTS.values():
        if path.name == url.rsplit("/", 1)[-1]:
            digest = sha256_of(path)
            if not digest.startswith(prefix):
                raise UnetlabError(
                    f"model.encoder_weights: {path} is named like {url} but its SHA-256 starts {digest[:len(prefix)]}, "
                    f"not {prefix}: it is corrupt or not that file; download it again, or rename it if it is "
                    "deliberately other weights")


def fetch_weights(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The cached, verified file of the named weights, downloading it first if needed."""
    url, prefix = WEIGHTS[name]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file():
        if sha256_of(target).startswith(prefix):
            return target
        print(f"unetlab: cached {target} does not match its SHA-256 prefix {prefix}; downloading it again",
              file=sys.stderr)
        target.unlink()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnetlabError(f"model.encoder_weights: cannot create the weights cache {folder} ({one_line(exc)}); "
                           f"set ${CACHE_ENV} to a writable folder") from None
    _download(url, prefix, target, progress)
    return target


def _download(url: str, prefix: str, target: Path, progress: bool) -> None:
    """Download `url` next to `target` (`.<name>.<pid>.part`), check its SHA-256 prefix, rename it into place.

    The transfer is `unetlab.data.download.download_file` without resuming: any failure deletes the
    partial file, so the cache only ever holds verified checkpoints.
    """
    try:
        download_file(url, target, sha256=prefix, part=target.with_name(f".{target.name}.{os.getpid()}.part"),
                      resume=False, timeout=DOWNLOAD_TIMEOUT_S, progress=progress, label=target.name)
    except DownloadFailed as exc:
        raise UnetlabError(
            f"model.encoder_weights: downloading {url} failed ({exc.reason}); without internet, "
            f"fetch {url} on a connected machine and pass the file: "
            f"model.encoder_weights=/path/to/{target.name}") from None
    except ChecksumMismatch as exc:
        raise UnetlabError(
            f"model.encoder_weights: {url} arrived with SHA-256 {exc.actual[:len(prefix)]}..., expected prefix "
            f"{prefix}; the file was not kept; retry, or pass a verified local file: "
            f"model.encoder_weights=/path/to/{target.name}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    loaded: Any = load_weights_only(path, "pass a torchvision-compatible state dict of tensors, saved with "
                                    "torch.save(model.state_dict(), path)", prefix="model.encoder_weights: ")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()):
        raise UnetlabError(f"model.encoder_weights: {path} holds no state dict (name -> tensor), "
                           f"nor a dict with one under 'state_dict'")
    return dict(loaded)
