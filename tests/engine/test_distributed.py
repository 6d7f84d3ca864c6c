"""Data-parallel training with torchrun: two CPU processes on gloo agree with one process.

With no batch norm (the statistics would be per rank), no augmentation and fp32, two ranks of
batch b average the same gradients as one process of batch 2b, so the runs must agree closely.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from run_fixtures import TINY, tiny_config
from unetlab.engine.checkpoint import load_checkpoint
from unetlab.engine.trainer import train

COMMON = [*TINY, "model.norm=none", "augment.preset=none", "train.epochs=2", "data.val_fraction=0.25",
          "optim.name=sgd", "optim.lr=0.05", "train.num_threads=1"]  # SGD: Adam's first step turns float noise into sign flips


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_gloo_processes_agree_with_one(tgs_dir, tmp_path):
    single = tmp_path / "single"
    train(tiny_config(*COMMON, "train.batch_size=4"), data_root=tgs_dir, run_dir=single, progress=False,
          log=lambda _: None)
    double = tmp_path / "double"
    sets = [arg for item in [*COMMON, "train.batch_size=2"] for arg in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "unetlab", "train", "--data", str(tgs_dir), "--out", str(double), "--no-eval",
                           "--no-progress", *sets], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch   1") == 1, "only rank 0 may log"
    one, two = _rows(single), _rows(double)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["step"] == b["step"]  # the same number of global steps: 2 ranks x 2 images = 4 images
        for key in ("train/loss", "val/loss", "val/pixel_accuracy", "val/iou"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3, abs=1e-4), key
    w1 = load_checkpoint(single / "checkpoints" / "last.pt")["train_model_state"]
    w2 = load_checkpoint(double / "checkpoints" / "last.pt")["train_model_state"]
    for key in w1:
        assert torch.allclose(w1[key], w2[key], rtol=1e-3, atol=1e-5), key
    # Only rank 0 wrote: one event file, one split.
    assert len(list(double.glob("events.out.tfevents.*"))) == 1
