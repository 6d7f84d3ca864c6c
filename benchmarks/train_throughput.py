"""Training images/s and peak memory of the U-Net-16 at 128x128, batch 32, three paths in one run:
the default path (bf16 autocast + channels_last) on synthetic tensors already in memory, the default
path with the trainer's full data pipeline (the data set on the device, batch augmentation, normalize),
and the naive fp32 NCHW eager loop (per-sample numpy Dataset + DataLoader, loss.item() every step).

    python benchmarks/train_throughput.py [--data DIR] [--steps 10 --rounds 3 --out bench.json]

Same as `unetlab bench train` (every option of it works here); the paths alternate in rounds.
"""

from unetlab.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "train", *sys.argv[1:]])
