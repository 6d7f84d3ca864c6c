"""Augmentation images/s on this machine: the kornia presets the trainer uses.

    python benchmarks/augment_throughput.py [--rounds 5 --steps 10 --device cpu --threads N --out bench.json]

Two cases, each the median over rounds of `steps` calls (after one warm-up call):
- seismic preset (kornia) on a TGS-like batch 32x1x128x128, binary float masks;
- photographic preset (kornia) on 16x3x256x256 with int64 class masks and ignore_index 255.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from unetlab.data.augment_kornia import PRESETS, build_augmentation


def tgs_like_batch(n: int, channels: int, side: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 1, side)[:, None]
    layers = 0.5 + 0.3 * torch.sin(40 * rows + torch.rand(n, channels, 1, 1, generator=g) * 6)
    images = (layers.expand(n, channels, side, side) + 0.05 * torch.randn(n, channels, side, side, generator=g))
    images = images.clamp(0, 1)
    masks = torch.zeros(n, 1, side, side, dtype=torch.int64)
    for k in range(n):
        depth = int(torch.randint(side // 4, side, (1,), generator=g))
        masks[k, 0, depth:] = 1 + k % classes
    return images, masks


def measure(fn, images, masks, steps: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    fn(images, masks, g)  # warm-up
    rates = []
    for _ in range(rounds):
        if images.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(images, masks, g)
        if images.is_cuda:
            torch.cuda.synchronize()
        rates.append(steps * images.shape[0] / (time.perf_counter() - t0))
    return {"images_per_s": statistics.median(rates), "rounds": [round(r, 1) for r in rates]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    seis_i, seis_m = tgs_like_batch(32, 1, 128, 1)
    seis_i, seis_m = seis_i.to(device), seis_m.float().to(device)
    photo_i, photo_m = tgs_like_batch(16, 3, 256, 5, seed=1)
    photo_i, photo_m = photo_i.to(device), photo_m.to(device)

    cases = {
        "seismic (kornia) 32x1x128x128": (build_augmentation(PRESETS["seismic"], None), seis_i, seis_m),
        "photographic (kornia) 16x3x256x256": (build_augmentation(PRESETS["photographic"], 255), photo_i, photo_m),
    }
    results = {}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}; median of {args.rounds} rounds x {args.steps} calls")
    for name, (fn, images, masks) in cases.items():
        r = measure(fn, images, masks, args.steps, args.rounds)
        results[name] = r
        print(f"  {name:40s} {r['images_per_s']:9.1f} images/s   rounds {r['rounds']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "results": results}, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
