"""Shared fixtures of the unetlab test suite.

* Every test runs with `torch.set_num_threads(1)`: the suite must stay fast and polite on a small
  CPU machine that may be training at the same time.
* `tgs_dir` is a small synthetic TGS Salt folder (16 images, 101x101, with the real data's file
  quirks: RGB images, 8-bit empty masks, 16-bit non-empty masks, train.csv, depths.csv). It is
  SESSION-scoped and shared by every test that asks for it: treat it as READ-ONLY. A test that
  needs to change files must copy it first (`tgs_copy` does that for you) or write its own data set
  with `unetlab.data.synthetic.write_tgs_dataset(tmp_path, ...)`.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from unetlab.data.synthetic import write_tgs_dataset

torch.set_num_threads(1)

TGS_N = 16
TGS_SEED = 0
TGS_SIZE = 101


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    """Keep torch on one thread for the whole session (set at import too, for collection-time work)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Weights and decode caches of the whole session go to a temporary folder, never to ~/.cache."""
    import os

    previous = os.environ.get("UNETLAB_CACHE")
    os.environ["UNETLAB_CACHE"] = str(tmp_path_factory.mktemp("unetlab-cache"))
    yield
    if previous is None:
        os.environ.pop("UNETLAB_CACHE", None)
    else:
        os.environ["UNETLAB_CACHE"] = previous


@pytest.fixture(scope="session")
def tgs_info() -> dict[str, int]:
    """How `tgs_dir` was made: {'n': 16, 'size': 101, 'seed': 0}."""
    return {"n": TGS_N, "size": TGS_SIZE, "seed": TGS_SEED}


@pytest.fixture(scope="session")
def tgs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic TGS Salt folder (root/train/images, root/train/masks, train.csv, depths.csv).

    Session-scoped and shared: do NOT modify it (use `tgs_copy` for a private, writable copy).
    16 images of 101x101, seed 0; with this seed both empty and non-empty masks occur.
    """
    root = tmp_path_factory.mktemp("tgs") / "tgs-salt"
    write_tgs_dataset(root, n=TGS_N, size=TGS_SIZE, seed=TGS_SEED)
    return root


@pytest.fixture
def tgs_copy(tgs_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `tgs_dir` for tests that break or change files."""
    return Path(shutil.copytree(tgs_dir, tmp_path / "tgs-copy"))


def read_train_csv(root: Path) -> dict[str, str]:
    """id -> rle_mask of a TGS train.csv (helper for tests)."""
    with (Path(root) / "train.csv").open(newline="") as handle:
        return {row["id"]: row["rle_mask"] for row in csv.DictReader(handle)}


@pytest.fixture(scope="session")
def tgs_rles(tgs_dir: Path) -> dict[str, str]:
    """id -> run-length string of `tgs_dir`'s train.csv."""
    return read_train_csv(tgs_dir)


@pytest.fixture(scope="session")
def tiny_run(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run of a 4-channel U-Net on `tgs_dir` (read-only, shared)."""
    from run_fixtures import tiny_config

    from unetlab.api import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), data_root=tgs_dir, run_dir=run_dir, progress=False, log=lambda _: None)
    return run_dir


@pytest.fixture(scope="session")
def multiclass_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 grey 32x32 images in 3 classes with an ignored top row (`run_fixtures.write_multiclass_folder`)."""
    from run_fixtures import write_multiclass_folder

    return write_multiclass_folder(tmp_path_factory.mktemp("multiclass") / "data")
