"""Every model of the zoo at 128x128 and 256x256: parameters, GFLOPs, receptive field, CPU inference
and training images/s (bf16 autocast + channels_last, batch 32).

    python benchmarks/models.py [--size 128 --size 256 --steps 3 --out models.json]

Same as `unetlab bench models`.
"""

from unetlab.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "models", *sys.argv[1:]])
