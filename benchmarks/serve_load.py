"""Load test of `unetlab serve` on loopback: N requests, C at a time; latency percentiles as markdown.

    python benchmarks/serve_load.py RUN [--requests 200 --concurrency 8 --size 101 --probabilities]

The server runs in its own process (`python -m unetlab serve RUN --port P`, as a user starts it); the
client posts synthetic seismic images (`generate_seismic`, PNG) from C threads, each timing its own
requests end to end (upload, decode, forward pass, answer). Every answer must be 200.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from unetlab.data.synthetic import generate_seismic


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "unetlab", "serve", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read().strip()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/model", timeout=1).raise_for_status()
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not answer within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder to serve")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=101, help="side of the square test images")
    parser.add_argument("--probabilities", action="store_true", help="ask for the JSON answer with probabilities")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    images, _ = generate_seismic(16, args.size, seed=0)
    uploads = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        uploads.append(buffer.getvalue())
    port = free_port()
    server = start_server(args.run, port)
    url = f"http://127.0.0.1:{port}/predict" + ("?probabilities=true" if args.probabilities else "")
    try:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=args.concurrency)) as client:
            def one(index: int) -> tuple[float, int]:
                start = time.perf_counter()
                response = client.post(url, files={"file": (f"{index}.png", uploads[index % len(uploads)])})
                return time.perf_counter() - start, response.status_code

            one(0)  # warm-up: the first forward pass folds batch norm
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies = np.array([seconds for seconds, _ in results]) * 1000
    failed = sum(status != 200 for _, status in results)
    figures = {"requests": args.requests, "concurrency": args.concurrency, "size": args.size,
               "probabilities": args.probabilities, "failed": failed, "seconds": round(wall, 2),
               "requests_per_second": round(args.requests / wall, 1), "cpus": os.cpu_count(),
               **{f"p{q}_ms": round(float(np.percentile(latencies, q)), 1) for q in (50, 90, 99)},
               "max_ms": round(float(latencies.max()), 1)}
    print("| requests | concurrent | image | answer | failed | req/s | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.requests} | {args.concurrency} | {args.size}x{args.size} PNG | "
          f"{'JSON + probabilities' if args.probabilities else 'mask PNG'} | {failed} | "
          f"{figures['requests_per_second']} | {figures['p50_ms']} | {figures['p90_ms']} | {figures['p99_ms']} | "
          f"{figures['max_ms']} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
