"""Atomic file writes: the one place where unetlab writes a file a user or another process may read.

Everything is written to a temporary name in the target's folder and renamed into place, so a
reader (a resumed run, TensorBoard, a browser) never sees a half-written file and a killed process
leaves the previous version intact. `atomic_path` serves writers that need a file name (torch.save,
matplotlib, ONNX export); `atomic_write_bytes` / `atomic_write_text` serve in-memory content.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

#: Temporary files are hidden and end in this suffix; `remove_stale_temporaries` finds them by it.
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on any error remove it.

    `suffix` is appended to the temporary name for writers that choose a format by extension
    (matplotlib's savefig, say: ``suffix=".png"``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX + suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions any new file gets (umask), so a
        # run or study folder shared with other users or machines stays readable to them.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


#: Read once at import: os.umask is process-wide, so reading it later could race with other threads' writes.
_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `atomic_path`'s temporaries (hidden, with TEMP_SUFFIX after the dot)."""
    return name.startswith(".") and TEMP_SUFFIX in name[1:]


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries that a killed writer left in `folder` (not recursive); return what was removed."""
    removed = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if is_temporary(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def csv_text(rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> str:
    """CSV text of dict rows: the `first` columns, then every other key in order of first appearance
    (a row without a key leaves its cell blank)."""
    columns = list(first)
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
