"""Generators of the bad-input corpus: broken data folders, configs and run folders, made fresh by the tests.

Nothing here is committed data: every case is a function that breaks a private copy of a good input
(the `tgs_dir` fixture, a `folders` set, the `tiny_run` run folder) and returns the text the one-line
error must contain (the file or key it names). `EXPECT` says what the CLI must do with the case:
`error` (exit 2, one line naming it) or `accepted` (exit 0: the input is odd but valid).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Case:
    """One broken input: `make(root)` breaks the folder at `root` in place and returns the needle of the error."""

    name: str
    make: Callable[[Path], str]
    expect: str = "error"  # or "accepted"
    touches_images: bool = True  # predict reads only the images: mask/CSV cases do not apply to it
    accepted_by: tuple[str, ...] = ()  # commands for which this input is valid although others refuse it
    says: str = ""  # what the error must also say: the kind of problem, not just the file

    def expected(self, command: str) -> str:
        return "accepted" if command in self.accepted_by else self.expect


def file_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (to prove the user's files were not changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def unchanged(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files of `before` that are gone or different in `after` (new files are allowed: caches, reports)."""
    return [name for name, digest in before.items() if after.get(name) != digest]


def _first(root: Path, sub: str) -> Path:
    return sorted((root / sub).glob("*.png"))[0]


def bomb_png(path: Path, side: int = 60_000) -> None:
    """A valid PNG header claiming side x side grey pixels, with a tiny IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


# ---- data folders (TGS layout: train/images, train/masks, train.csv, depths.csv) -------------------------

def truncated_image(root: Path) -> str:
    path = _first(root, "train/images")
    path.write_bytes(path.read_bytes()[:200])
    return path.name


def text_named_png(root: Path) -> str:
    path = _first(root, "train/images")
    path.write_text("this is not an image\n")
    return path.name


def zero_byte_image(root: Path) -> str:
    path = _first(root, "train/images")
    path.write_bytes(b"")
    return path.name


def decompression_bomb(root: Path) -> str:
    path = _first(root, "train/images")
    bomb_png(path)
    return path.name


def odd_mask_values(root: Path) -> str:
    path = _first(root, "train/masks")
    values = np.zeros((101, 101), np.uint8)
    values[10:20], values[30:40], values[50:60] = 1, 2, 7
    Image.fromarray(values).save(path)
    return path.name


def jpeg_mask(root: Path) -> str:
    """A mask file with JPEG content (a lossy format) under its .png name."""
    path = _first(root, "train/masks")
    values = np.zeros((101, 101), np.uint8)
    values[20:60, 20:60] = 255
    Image.fromarray(values).save(path, format="JPEG", quality=75)
    return path.name


def rgba_image(root: Path) -> str:
    path = _first(root, "train/images")
    grey = np.asarray(Image.open(path).convert("L"))
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), mode="RGBA").save(path)
    return path.name


def unicode_names(root: Path) -> str:
    """Rename one pair (and its train.csv / depths.csv rows) to a non-ASCII id: must simply work."""
    old = _first(root, "train/images").stem
    new = "sälz_überflüß_盐"
    for sub in ("train/images", "train/masks"):
        (root / sub / f"{old}.png").rename(root / sub / f"{new}.png")
    for table in ("train.csv", "depths.csv"):
        path = root / table
        if path.exists():
            path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return new


def missing_mask(root: Path) -> str:
    path = _first(root, "train/masks")
    path.unlink()
    return path.stem


def missing_image(root: Path) -> str:
    path = _first(root, "train/images")
    path.unlink()
    return path.stem


def mismatched_sizes(root: Path) -> str:
    path = _first(root, "train/masks")
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(path)
    return path.name


def bad_csv_row(root: Path) -> str:
    """Masks only as Kaggle ships them (train.csv, no masks folder), one run-length string with an odd count."""
    shutil.rmtree(root / "train" / "masks")
    path = root / "train.csv"
    lines = path.read_text().splitlines()
    ident = lines[1].split(",")[0]
    lines[1] = f"{ident},1 5 9"
    path.write_text("\n".join(lines) + "\n")
    return "train.csv: line 2"


TGS_CASES = [
    Case("truncated-png", truncated_image, says="cannot decode"),
    Case("text-named-png", text_named_png, says="cannot decode"),
    Case("zero-byte-image", zero_byte_image, says="cannot decode"),
    Case("decompression-bomb", decompression_bomb, says="pixels, more than"),
    Case("odd-mask-values", odd_mask_values, touches_images=False, says="{0, 1, 2, 7}"),
    Case("jpeg-mask", jpeg_mask, touches_images=False, says="JPEG"),
    Case("rgba-image", rgba_image, expect="accepted"),
    Case("unicode-names", unicode_names, expect="accepted"),
    Case("missing-mask", missing_mask, touches_images=False, says="without its mask"),
    Case("missing-image", missing_image, touches_images=False, says="without its image"),
    Case("mismatched-sizes", mismatched_sizes, touches_images=False, says="differs"),
    Case("bad-csv-row", bad_csv_row, touches_images=False, says="odd number"),
]


# ---- folders layout (images/, masks/, masks 0/1) ----------------------------------------------------------

def folders_from_tgs(tgs_root: Path, root: Path) -> Path:
    """A binary `folders` set (images/, masks/ with 0/1 values) made from a TGS folder."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image in sorted((tgs_root / "train" / "images").glob("*.png")):
        shutil.copy(image, root / "images" / image.name)
        mask = np.asarray(Image.open(tgs_root / "train" / "masks" / image.name))
        Image.fromarray((mask > 0).astype(np.uint8)).save(root / "masks" / image.name)
    return root


def _folders(fn: Callable[[Path], str]) -> Callable[[Path], str]:
    """A TGS case applied to a folders set: the same files live under images/ and masks/ instead of train/."""
    def make(root: Path) -> str:
        (root / "train").mkdir()
        for sub in ("images", "masks"):
            (root / sub).rename(root / "train" / sub)
        try:
            return fn(root)
        finally:
            for sub in ("images", "masks"):
                (root / "train" / sub).rename(root / sub)
            (root / "train").rmdir()
    make.__name__ = fn.__name__
    return make


def jpeg_mask_file(root: Path) -> str:
    """folders: a mask stored as a real .jpg beside the other .png masks."""
    path = _first(root, "masks")
    values = np.asarray(Image.open(path)) * 255
    path.unlink()
    target = path.with_suffix(".jpg")
    Image.fromarray(values.astype(np.uint8)).save(target, quality=75)
    return target.name


FOLDERS_CASES = [
    Case("truncated-png", _folders(truncated_image), says="cannot decode"),
    Case("text-named-png", _folders(text_named_png), says="cannot decode"),
    Case("zero-byte-image", _folders(zero_byte_image), says="cannot decode"),
    Case("decompression-bomb", _folders(decompression_bomb), says="pixels, more than"),
    Case("odd-mask-values", _folders(odd_mask_values), touches_images=False, says="{0, 1, 2, 7}"),
    Case("jpeg-mask", jpeg_mask_file, touches_images=False, says="JPEG"),
    Case("rgba-image", _folders(rgba_image), expect="accepted"),
    Case("unicode-names", _folders(unicode_names), expect="accepted"),
    Case("missing-mask", _folders(missing_mask), touches_images=False, says="without its mask"),
    Case("mismatched-sizes", _folders(mismatched_sizes), touches_images=False, says="differs"),
]


# ---- configs (a YAML file's text, or --set overrides) -----------------------------------------------------

BAD_YAML = "train:\n  epochs: 1\n  batch_size: [8\nmodel:\n  base_width: 4\n"  # the list is never closed (line 3)

CONFIG_CASES = {  # name -> (--set overrides or a YAML text, needle)
    "bad-yaml": (BAD_YAML, "line 4"),
    "unknown-key-yaml": ("train:\n  epochz: 1\n", "train.epochz"),
    "unknown-key-set": (["train.epochz=1"], "train.epochz"),
    "unknown-section": (["trian.epochs=1"], "trian"),
    "out-of-range": (["train.epochs=0"], "train.epochs"),
    "wrong-type": (["train.batch_size=eight"], "train.batch_size"),
    "bad-choice": (["optim.name=adamm"], "optim.name"),
    "bad-device": (["train.device=gpu0"], "train.device"),
    "bad-monitor": (["train.monitor=val/bogus"], "val/bogus"),
    "bad-binary-rule": (["data.options={binary_rule: mostly}"], "binary_rule"),
}


# ---- run folders (a copy of a finished run) ---------------------------------------------------------------

CHECKPOINT = "{checkpoint}"  # in a needle: the checkpoint the command reads (resume: last.pt, others best.pt)


def no_checkpoint(run: Path) -> str:
    shutil.rmtree(run / "checkpoints")
    return str(run.name)


def pickled_checkpoint(run: Path) -> str:
    """best.pt and last.pt replaced by a torch.save of a pickled object (arbitrary code on a full unpickle)."""
    for name in ("best.pt", "last.pt"):
        torch.save({"model_state": {}, "payload": argparse.Namespace(evil=True)}, run / "checkpoints" / name)
    return CHECKPOINT


def truncated_checkpoint(run: Path) -> str:
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return CHECKPOINT


def half_written_tmp(run: Path) -> str:
    """A kill during a checkpoint write leaves a hidden temporary beside the good checkpoints: ignored."""
    (run / "checkpoints" / ".best.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    return ""


def not_a_run(run: Path) -> str:
    for item in run.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    (run / "notes.txt").write_text("a folder that is not a run\n")
    return str(run.name)


RUN_CASES = [
    # A run killed before its first checkpoint: resume restarts it; the other commands have no weights to read.
    Case("no-checkpoint", no_checkpoint, accepted_by=("resume",), says="no checkpoints/best.pt"),
    Case("pickled-checkpoint", pickled_checkpoint, says="pickled Python objects (argparse.Namespace)"),
    Case("truncated-checkpoint", truncated_checkpoint, says="cannot be read as a torch file"),
    Case("half-written-tmp", half_written_tmp, expect="accepted"),
    Case("not-a-run", not_a_run, says="train"),
]
