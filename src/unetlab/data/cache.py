"""Decode a data set once into memory-mapped flat files; later reads map them instead of decoding.

    samples = cached_read_dataset("camvid", root, split="train")   # unetlab.data.formats.registry

The registry names the format and its options and hands `cached_read` the read to do; this module
knows no format. The first call runs the read and writes a cache; every later call with the same
format, options and unchanged source files returns SegmentationSamples whose images and masks are
read-only numpy views into memory maps (zero-copy, nothing decoded).

Where the cache lives (`cache_dir`): given, else `$UNETLAB_CACHE/data/<hash of abs root>` or
`~/.cache/unetlab/data/<hash of abs root>`; never inside the user's data folder by default (an
existing `<root>/.unetlab-cache` is still skipped by the fingerprint and cleared by clear_cache).
Inside it, one subfolder per cached read, named `<format>-<slot>-<fingerprint>`:

* `slot` hashes the format name, the reader's options (the registry fills the defaults, so
  `split="train"` and no split are the same read), the cache format version and, when the cache
  is not inside root, the absolute root (so one shared cache_dir may serve several roots);
* `fingerprint` hashes (relative path, size, mtime_ns) of EVERY regular file under root (symlinks
  followed), except the cache folders themselves. This is wider than the files a reader opens (a
  README change invalidates too), but it needs no knowledge of each format and can never miss a
  file that a reader does use. Adding, removing, touching or changing any file makes a new key.

A subfolder holds `images.uint8` (all images, flattened, concatenated), `masks.<dtype>` (masks
grouped by dtype: `masks.uint8`, and `masks.int64` only for masks whose reader returned int64 for
values above 255), and `index.json` (version, key, per sample: id, shapes, dtypes, offsets; the
class names, ignore_index, palette and the JSON-serialisable part of meta, with paths under root
stored relative to it). It is written into a temporary folder (files fsynced, index.json last) and
renamed into place, so a crash never leaves a folder under the final name. When two processes race,
the loser of the rename discards its copy and uses the winner's. After a successful write, older
subfolders of the same slot (stale fingerprints) are removed. On a hit the files' sizes are checked
against the index; a truncated file or unreadable index gives a one-line warning and a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unetlab.data.formats.samples import SegmentationSamples
from unetlab.data.io import check_pixels
from unetlab.errors import DataError

CACHE_VERSION = 2  # 2: the index holds the format's palette
CACHE_ENV = "UNETLAB_CACHE"
IN_ROOT_NAME = ".unetlab-cache"
TAG_NAME = "CACHEDIR.TAG"
TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
            "# This folder is a cache of decoded images made by unetlab (unetlab.data.cache).\n")
INDEX_NAME = "index.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
STALE_TMP_S = 3600.0  # a temporary folder older than this belongs to a crashed writer
_ENTRY = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*-[0-9a-f]{10}-[0-9a-f]{16}")  # <format>-<slot>-<fingerprint>
_ROOT_MARK = "\x00root\x00"  # prefix of a meta string that was a path under root (NUL never occurs in paths)


class CacheCorrupt(Exception):
    """A cache folder that must not be trusted (truncated file, bad index)."""


# --- where and under which name -------------------------------------------------------------------

def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _abs(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def external_cache_dir(root: str | Path) -> Path:
    """The default cache folder of `root`, outside it: `$UNETLAB_CACHE/data/<hash of root>` or
    `~/.cache/unetlab/data/<hash>`.

    A user's data folder is theirs: it may be read-only, shared or under version control, so the
    cache lives beside other caches unless `cache_dir` says otherwise.
    """
    env = os.environ.get(CACHE_ENV)
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "unetlab"
    return base / "data" / _hash(str(_abs(root)), 16)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def fingerprint(root: str | Path, exclude: list[Path] = ()) -> str:  # type: ignore[assignment]
    """Hash of (relative path, size, mtime_ns) of every regular file under root, `exclude` folders skipped."""
    root = _abs(root)
    skip = {os.path.realpath(p) for p in exclude}
    skip.add(os.path.realpath(root / IN_ROOT_NAME))
    entries: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: str, rel: str) -> None:
        try:
            st = os.stat(folder)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{folder}: cannot list folder ({exc.__class__.__name__}); check its permissions") from None
        for entry in children:
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir():  # follows symlinks, as the readers do
                    if os.path.realpath(entry.path) not in skip:
                        walk(entry.path, name)
                elif entry.is_file():
                    st = entry.stat()
                    entries.append(f"{name}\t{st.st_size}\t{st.st_mtime_ns}")
            except OSError:
                continue  # vanished or dangling: a reader cannot use it either
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; check the path")
    walk(str(root), "")
    return _hash("\n".join(entries), 16)


def _is_inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


# --- public API -------------------------------------------------------------------------------------

def cached_read(read: Callable[[], SegmentationSamples], root: str | Path, format: str, options: dict[str, Any],
                cache_dir: str | Path | None = None) -> SegmentationSamples:
    """`read()` of `root` as `format` with `options` (defaults filled), decoded once and then served from
    a memory-mapped cache.

    The returned images and masks on a hit are read-only views into the cache files (writing raises
    ValueError; copy one to change it). `format` must be a registered name (lowercase words joined by '-').
    """
    root_path = Path(root)
    abs_root = _abs(root)
    cache = _abs(cache_dir) if cache_dir is not None else external_cache_dir(abs_root)
    scope = "" if _is_inside(cache, abs_root) else str(abs_root)
    slot = f"{format}-" + _hash(_canonical({"format": format, "options": options, "version": CACHE_VERSION,
                                            "scope": scope}), 10)
    exclude = [cache] if _is_inside(cache, abs_root) else []
    name = f"{slot}-{fingerprint(abs_root, exclude)}"
    folder = cache / name
    if folder.is_dir():
        try:
            hit = _load(folder, root_path)
        except CacheCorrupt as exc:
            warnings.warn(f"{folder}: corrupt data cache ({exc}); rebuilding it", UserWarning, stacklevel=2)
            _remove(folder)
        else:  # decoded under an earlier, maybe higher, pixel limit: the limit in force now still holds
            for sample_id, image in zip(hit.ids, hit.images):
                check_pixels(root_path / f"{sample_id} (cached in {folder})", image.shape)
            return hit
    samples = read()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _write_tag(cache)
        final = _write(samples, cache, name, root_path,
                       {"format": format, "options": json.loads(_canonical(options)), "root": str(abs_root)})
    except OSError as exc:  # unwritable / full disk: the data is read all the same, only not cached
        warnings.warn(f"{cache}: cannot write the data cache ({exc.__class__.__name__}: {exc}); reading "
                      "without it", UserWarning, stacklevel=2)
        return samples
    _remove_stale(cache, slot, keep=final.name)
    try:
        return _load(final, root_path)
    except CacheCorrupt:  # the folder vanished or broke under us: the decoded samples are still right
        return samples


def clear_cache(root_or_cache_dir: str | Path) -> int:
    """Remove unetlab data caches: of a data root (its `.unetlab-cache` and its external folder), or of
    a cache folder given directly. Only folders unetlab made are touched. Returns how many were removed."""
    path = _abs(root_or_cache_dir)
    targets = [path] if (path / TAG_NAME).is_file() else [path / IN_ROOT_NAME, external_cache_dir(path)]
    removed = 0
    for cache in targets:
        if not (cache / TAG_NAME).is_file():
            continue  # not a folder unetlab made: leave it alone
        for entry in list(cache.iterdir()):
            if not entry.is_dir():
                continue
            if _looks_like_entry(entry.name):
                _remove(entry)
                removed += 1
            elif entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                _remove(entry)
        if [e.name for e in cache.iterdir()] == [TAG_NAME]:
            (cache / TAG_NAME).unlink(missing_ok=True)
            try:
                cache.rmdir()
            except OSError:
                pass
    return removed


# --- writing ----------------------------------------------------------------------------------------

def _looks_like_entry(name: str) -> bool:
    return _ENTRY.fullmatch(name) is not None


def _write_tag(cache: Path) -> None:
    tag = cache / TAG_NAME
    if not tag.exists():
        from unetlab.files import atomic_write_text
        atomic_write_text(tag, TAG_TEXT)


def _json_meta(value: Any, root_prefix: str) -> Any:
    """The JSON-serialisable part of a meta value; strings that are paths under root become root-relative.
    Returns `_DROP` for what JSON cannot hold."""
    if isinstance(value, str):
        if root_prefix and (value == root_prefix[:-1] or value.startswith(root_prefix)):
            return _ROOT_MARK + value[len(root_prefix) - 1:]  # keeps the separator: "<mark>/images/a.png"
        return value
    if value is None or isinstance(value, (bool, int, float)):  # NaN/inf: json writes and reads them back
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (list, tuple)):
        items = [_json_meta(v, root_prefix) for v in value]
        return _DROP if any(i is _DROP for i in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        out = {k: _json_meta(v, root_prefix) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _DROP}
    return _DROP


_DROP = object()


def _restore_meta(value: Any, root_text: str) -> Any:
    if isinstance(value, str) and value.startswith(_ROOT_MARK):
        return root_text + value[len(_ROOT_MARK):]
    if isinstance(value, list):
        return [_restore_meta(v, root_text) for v in value]
    if isinstance(value, dict):
        return {k: _restore_meta(v, root_text) for k, v in value.items()}
    return value


class _Blob:
    """One flat file per (role, dtype): appends arrays, remembers where each went (in elements)."""

    def __init__(self, folder: Path, role: str, dtype: np.dtype):
        self.dtype = np.dtype(dtype).newbyteorder("<")  # one byte order on disk, whatever the machine
        self.path = folder / f"{role}.{np.dtype(dtype).name}"
        self.handle = self.path.open("wb")
        self.elements = 0

    def append(self, array: np.ndarray) -> int:
        offset = self.elements
        data = np.ascontiguousarray(array, dtype=self.dtype)
        self.handle.write(memoryview(data).cast("B"))
        self.elements += data.size
        return offset

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def _write(samples: SegmentationSamples, cache: Path, name: str, root: Path, key: dict) -> Path:
    """Write the cache into a temporary folder, then rename it to `cache/name`; the path that holds it."""
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f"{TMP_PREFIX}{name}-"))
    blobs: dict[tuple[str, str], _Blob] = {}
    try:
        root_text = str(root)
        root_prefix = root_text + os.sep if root_text not in ("", ".", os.sep) else ""
        # column-wise (one list per field): parses several times faster than one object per sample
        records: dict[str, list] = {"ids": [str(i) for i in samples.ids]}
        for role in ("image", "mask"):
            records.update({f"{role}_file": [], f"{role}_shape": [], f"{role}_offset": []})
        for image, mask in zip(samples.images, samples.masks):
            for role, array in (("image", np.asarray(image)), ("mask", np.asarray(mask))):
                dtype = np.dtype(array.dtype)
                blob = blobs.get((role, dtype.name))
                if blob is None:
                    blob = blobs[(role, dtype.name)] = _Blob(tmp, role + "s", dtype)
                records[f"{role}_file"].append(blob.path.name)
                records[f"{role}_shape"].append(list(array.shape))
                records[f"{role}_offset"].append(blob.append(array))
        for blob in blobs.values():
            blob.close()
        meta = {}
        for sample_id, value in samples.meta.items():
            kept = _json_meta(value, root_prefix)
            if kept is not _DROP:
                meta[str(sample_id)] = kept
        index = {"version": CACHE_VERSION, "key": key, "created": time.time(),
                 "files": {b.path.name: {"dtype": b.dtype.name, "elements": b.elements,
                                         "bytes": b.elements * b.dtype.itemsize} for b in blobs.values()},
                 "class_names": list(samples.class_names),
                 "ignore_index": None if samples.ignore_index is None else int(samples.ignore_index),
                 "palette": None if samples.palette is None else [[int(c) for c in rgb] for rgb in samples.palette],
                 "meta_ids": list(samples.meta.keys()) == list(samples.ids),
                 "meta": meta, "samples": records}
        with (tmp / INDEX_NAME).open("w", encoding="utf-8") as handle:
            json.dump(index, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        final = cache / name
        try:
            os.rename(tmp, final)  # atomic; fails if another writer's folder is already there
        except OSError:
            if not final.is_dir():
                raise
            try:
                _load(final, root)  # the winner's cache is good: use it
            except CacheCorrupt:  # a broken folder under the final name: replace it
                _remove(final)
                os.rename(tmp, final)
            else:
                _remove(tmp)
        _fsync_dir(cache)
        return final
    except BaseException:
        for blob in blobs.values():
            if not blob.handle.closed:
                blob.handle.close()
        _remove(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(folder: Path) -> None:
    """Rename aside (atomic: nothing half-deleted keeps a trusted name), then delete."""
    if not folder.exists():
        return
    trash = folder.parent / f"{TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale(cache: Path, slot: str, keep: str) -> None:
    """Remove the same slot's older folders (other fingerprints) and crashed writers' temporary folders."""
    now = time.time()
    try:
        entries = list(cache.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.is_dir() or entry.name == keep:
            continue
        if entry.name.startswith(f"{slot}-") and _looks_like_entry(entry.name):
            _remove(entry)
        elif entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            try:
                if now - entry.stat().st_mtime > STALE_TMP_S:
                    _remove(entry)
            except OSError:
                pass


# --- reading ----------------------------------------------------------------------------------------

def _load(folder: Path, root: Path) -> SegmentationSamples:
    """SegmentationSamples viewing the memory maps of `folder`; CacheCorrupt if anything is off."""
    try:
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheCorrupt("index.json missing") from None
    except (OSError, ValueError) as exc:
        raise CacheCorrupt(f"index.json unreadable: {exc.__class__.__name__}") from None
    try:
        if index.get("version") != CACHE_VERSION:
            raise CacheCorrupt(f"version {index.get('version')}, expected {CACHE_VERSION}")
        maps: dict[str, np.ndarray] = {}
        for file_name, info in index["files"].items():
            if "/" in file_name or file_name.startswith("."):
                raise CacheCorrupt(f"bad file name {file_name!r}")
            path = folder / file_name
            dtype = np.dtype(info["dtype"]).newbyteorder("<")
            expected = int(info["elements"]) * dtype.itemsize
            try:
                size = path.stat().st_size
            except OSError:
                raise CacheCorrupt(f"{file_name} missing") from None
            if size != expected or int(info["bytes"]) != expected:
                raise CacheCorrupt(f"{file_name} has {size} bytes, index says {expected}")
            if expected == 0:
                flat = np.empty(0, dtype=dtype)
                flat.flags.writeable = False
            else:
                flat = np.memmap(path, dtype=dtype, mode="r", shape=(int(info["elements"]),))
            maps[file_name] = flat
        records = index["samples"]
        ids = [str(i) for i in records["ids"]]
        arrays: dict[str, list[np.ndarray]] = {}
        bases = {name: np.asarray(flat) for name, flat in maps.items()}  # plain ndarray views of the maps
        for role in ("image", "mask"):
            files, shapes, offsets = records[f"{role}_file"], records[f"{role}_shape"], records[f"{role}_offset"]
            if not (len(files) == len(shapes) == len(offsets) == len(ids)):
                raise CacheCorrupt(f"{len(ids)} ids but {len(files)} {role} records")
            out = arrays[role] = []
            for k, (name, shape, start) in enumerate(zip(files, shapes, offsets)):
                flat = bases[name]
                count = math.prod(shape)
                if start < 0 or start + count > flat.size or any(d < 0 for d in shape):
                    raise CacheCorrupt(f"sample '{ids[k]}' {role} lies outside {name}")
                out.append(flat[start:start + count].reshape(shape))
        images, masks = arrays["image"], arrays["mask"]
        meta = {k: _restore_meta(v, str(root)) for k, v in index["meta"].items()}
        if index.get("meta_ids"):
            meta = {i: meta.get(i, {}) for i in ids}
        ignore, palette = index["ignore_index"], index["palette"]
        return SegmentationSamples(ids=ids, images=images, masks=masks, class_names=list(index["class_names"]),
                                   ignore_index=None if ignore is None else int(ignore), root=root, meta=meta,
                                   palette=None if palette is None else [tuple(rgb) for rgb in palette])
    except CacheCorrupt:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise CacheCorrupt(f"index.json inconsistent: {exc.__class__.__name__}: {exc}") from None
