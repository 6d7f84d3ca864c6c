"""Does the data pipeline keep up with training? Images/s delivered (batch assembly + augmentation)
beside the training step's own images/s, for TGS 128x128, Oxford Pet 256x256 and CamVid 360x480.

    python benchmarks/pipeline_throughput.py --data ../shared/data [--batches 5]

For each data set: the first (cache-building) read and a later (memory-mapped) read; then batches
assembled from the cached arrays (random images, resized to the size: bilinear for images,
nearest for masks) and augmented with the task's kornia preset, on the CPU; then training steps of
the U-Net-16 (bf16 + channels_last, batch as listed, one logit per pixel) at the same size and
channel count. The network's cost does not depend on the number of classes' head, so the binary
head stands in for CamVid's 11 classes here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unetlab.config import Config
from unetlab.data.augment_kornia import PRESETS, build_augmentation
from unetlab.data.formats.registry import cached_read_dataset
from unetlab.engine.step import train_step
from unetlab.losses import build_loss
from unetlab.models import create_model

SETS = [  # name, folder, format, options, (H, W), channels, batch, preset
    ("tgs-salt", "tgs-salt", "tgs", {}, (128, 128), 1, 32, "seismic"),
    ("oxford-pet", "oxford-pets-sample", "oxford-pet", {"border": "ignore"}, (256, 256), 3, 16, "photographic"),
    ("camvid", "camvid", "camvid", {"split": "train"}, (360, 480), 3, 8, "photographic"),
]


def assemble(samples, indices, size, channels) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = [], []
    for i in indices:
        image = torch.from_numpy(np.ascontiguousarray(samples.images[i])).float().div_(255.0)
        image = image[None, None] if image.ndim == 2 else image.permute(2, 0, 1)[None]
        if image.shape[1] != channels:
            image = image.mean(dim=1, keepdim=True) if channels == 1 else image.expand(-1, channels, -1, -1)
        mask = torch.from_numpy(np.ascontiguousarray(samples.masks[i]).astype(np.int64))[None, None].float()
        images.append(F.interpolate(image, size=size, mode="bilinear", align_corners=False))
        masks.append(F.interpolate(mask, size=size, mode="nearest"))
    return torch.cat(images), torch.cat(masks).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding tgs-salt, oxford-pets-sample, camvid")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement")
    args = parser.parse_args()
    loss_fn = build_loss(Config().loss)
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, folder, fmt, options, size, channels, batch, preset in SETS:
            start = time.perf_counter()
            cached_read_dataset(fmt, args.data / folder, cache_dir=cache_dir, **options)
            first = time.perf_counter() - start
            start = time.perf_counter()
            samples = cached_read_dataset(fmt, args.data / folder, cache_dir=cache_dir, **options)
            later = time.perf_counter() - start
            augment = build_augmentation(PRESETS[preset], ignore_index=samples.ignore_index)
            rng = np.random.default_rng(0)
            generator = torch.Generator().manual_seed(0)
            times = []
            for _ in range(args.batches + 1):
                start = time.perf_counter()
                x, y = assemble(samples, rng.choice(len(samples), batch, replace=False), size, channels)
                augment(x, y, generator)
                times.append(time.perf_counter() - start)
            pipeline = batch / statistics.median(times[1:])
            torch.manual_seed(0)
            model = create_model("unet", in_channels=channels).to(memory_format=torch.channels_last).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            x = torch.randn(batch, channels, *size).contiguous(memory_format=torch.channels_last)
            target = (torch.rand(batch, 1, *size) > 0.6).float()
            steps = []
            for _ in range(min(args.batches, 3) + 1):
                start = time.perf_counter()
                float(train_step(model, optimizer, loss_fn, x, target, "bf16"))
                steps.append(time.perf_counter() - start)
            training = batch / statistics.median(steps[1:])
            rows.append((name, f"{size[0]}x{size[1]}x{channels}", batch, preset, first, later, pipeline, training))
            print(f"{name}: done", flush=True)
    print("| data set | size | batch | augmentation | first read s (decode + cache) | later read s | "
          "pipeline img/s | training img/s | pipeline / training |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, batch, preset, first, later, pipeline, training in rows:
        print(f"| {name} | {size} | {batch} | {preset} | {first:.2f} | {later:.3f} | {pipeline:.1f} | "
              f"{training:.1f} | {pipeline / training:.1f}x |")


if __name__ == "__main__":
    main()
