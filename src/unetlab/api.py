"""The Python API that the CLI itself uses: `from unetlab import train, evaluate, predict, demo`."""

from __future__ import annotations

from unetlab.engine.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
