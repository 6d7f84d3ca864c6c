"""Time the first (cache-building) read of each real data set against later (cached) reads; print markdown.

    python benchmarks/cache_first_epoch.py --data ../shared/data [--only camvid] [--repeats 3]

Per data set: `read_dataset` as it is (decode everything), the first `cached_read_dataset` (decode +
write the cache), then later `cached_read_dataset` calls: "open" is the call alone (memory maps,
nothing touched yet), "open + touch" also reads every image and mask pixel once (what a first epoch
does with the arrays). The cache goes to a temporary folder that is removed at the end; nothing is
written under --data. Later reads come from the OS page cache (the files were just written): that
is the usual case for a second run on the same machine; a cold disk adds its read time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from unetlab.data.formats.registry import cached_read_dataset, read_dataset
from unetlab.errors import UnetlabError

# (folder under --data, format, options)
DATASETS = [
    ("tgs-salt", "tgs", {}),
    ("oxford-pets-sample", "oxford-pet", {"split": "trainval"}),
    ("camvid", "camvid", {"split": "train"}),
    ("isbi2012-membrane", "isbi", {}),
]


def touch(samples) -> int:
    """Read every pixel once (a checksum, so nothing is optimised away)."""
    total = 0
    for array in samples.images + samples.masks:
        total += int(np.asarray(array).sum(dtype=np.int64))
    return total


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the data sets")
    parser.add_argument("--only", action="append", default=[], help="format(s) to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="cached reads to time (median reported)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="unetlab-cache-bench-") as tmp:
        for folder, fmt, options in DATASETS:
            if args.only and fmt not in args.only:
                continue
            root = args.data / folder
            label = folder + "".join(f" {k}={v}" for k, v in options.items())
            if not root.is_dir():
                rows.append(f"| {label} | skipped: {root} not found | | | | | | |")
                continue
            cache_dir = Path(tmp) / folder / fmt
            try:
                plain_s, plain = timed(lambda: read_dataset(fmt, root, **options))
                first_s, first = timed(lambda: cached_read_dataset(fmt, root, cache_dir=cache_dir, **options))
            except UnetlabError as exc:
                rows.append(f"| {label} | error: {exc} | | | | | | |")
                continue
            reference = touch(plain)
            del plain, first
            opens, touches = [], []
            for _ in range(max(args.repeats, 1)):
                open_s, samples = timed(lambda: cached_read_dataset(fmt, root, cache_dir=cache_dir, **options))
                touch_s, checksum = timed(lambda: touch(samples))
                if checksum != reference:
                    raise SystemExit(f"{label}: cached pixels differ from the reader's")
                opens.append(open_s)
                touches.append(open_s + touch_s)
            size = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
            hit = statistics.median(touches)
            rows.append(f"| {label} | {len(samples)} | {size / 2**20:.1f} | {plain_s:.2f} | {first_s:.2f} | "
                        f"{statistics.median(opens) * 1000:.1f} | {hit * 1000:.1f} | {plain_s / hit:.0f}x |")
    print("| data set | samples | cache MiB | read_dataset s | first cached read s (decode + write) "
          "| later read ms (open) | later read ms (open + touch every pixel) | speed-up vs read_dataset |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
