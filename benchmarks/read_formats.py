"""Read each real data set with its reader; print counts, sizes, mask values and seconds as markdown.

    python benchmarks/read_formats.py --data ../shared/data [--only camvid --only isbi]

Folders that are missing are listed as skipped. Every reader checks its samples (`check()`), so
the seconds include decoding and validation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from unetlab.data.formats.registry import read_dataset
from unetlab.errors import UnetlabError

# (name in the table, folder under --data, format, options)
DATASETS = [
    ("tgs", "tgs-salt", "tgs", {}),
    ("oxford-pet", "oxford-pets-sample", "oxford-pet", {"split": "trainval"}),
    ("camvid", "camvid", "camvid", {"split": "train"}),
    ("camvid", "camvid", "camvid", {"split": "val"}),
    ("isbi", "isbi2012-membrane", "isbi", {}),
]


def describe_sizes(samples) -> str:
    shapes = Counter("x".join(map(str, (im.shape[1], im.shape[0], *im.shape[2:]))) for im in samples.images)
    common = ", ".join(f"{shape} ({n})" if len(shapes) > 1 else shape for shape, n in shapes.most_common(2))
    return common + (f", … {len(shapes)} sizes" if len(shapes) > 2 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding the data sets")
    parser.add_argument("--only", action="append", default=[], help="format(s) to run (default: all)")
    args = parser.parse_args(argv)
    rows = []
    for name, folder, fmt, options in DATASETS:
        if args.only and fmt not in args.only:
            continue
        root = args.data / folder
        label = f"{folder}" + "".join(f" {k}={v}" for k, v in options.items())
        if not root.is_dir():
            rows.append(f"| {label} | {fmt} | skipped: {root} not found | | | | |")
            continue
        start = time.perf_counter()
        try:
            samples = read_dataset(fmt, root, **options)
        except UnetlabError as exc:
            rows.append(f"| {label} | {fmt} | error: {exc} | | | | |")
            continue
        seconds = time.perf_counter() - start
        values = samples.mask_values()
        value_text = ", ".join(map(str, values[:14])) + (" …" if len(values) > 14 else "")
        rows.append(f"| {label} | {fmt} | {len(samples)} | {describe_sizes(samples)} | {samples.num_classes} "
                    f"({'ignore ' + str(samples.ignore_index) if samples.ignore_index is not None else 'no ignore'}) "
                    f"| {value_text} | {seconds:.2f} ({len(samples) / max(seconds, 1e-9):.0f}/s) |")
    print("| data set | reader | samples | image sizes WxH[xC] (count) | classes | mask values | seconds (samples/s) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
