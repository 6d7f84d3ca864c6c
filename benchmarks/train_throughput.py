"""Training images/s of the U-Net-16 at 128x128, batch 32: default fast path vs fp32 NCHW eager.

    python benchmarks/train_throughput.py [--steps 10 --rounds 3 --out bench.json]

Same as `unetlab bench`; both paths run the trainer's own train_step, alternating in rounds.
"""

from unetlab.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "train", *sys.argv[1:]])
