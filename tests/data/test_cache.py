"""The memory-mapped data cache: hits never decode, any source change invalidates, nothing broken is trusted."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetlab.data import cache as cache_mod
from unetlab.data.cache import IN_ROOT_NAME, clear_cache, external_cache_dir
from unetlab.data.formats import registry
from unetlab.data.formats.registry import cached_read_dataset
from unetlab.data.synthetic import write_tgs_dataset
from unetlab.errors import DataError


def entries(cache_dir: Path) -> list[Path]:
    """Cache folders that a read could use (temporary and trash folders excluded)."""
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def assert_same(a, b) -> None:
    assert a.ids == b.ids
    assert a.class_names == b.class_names and a.ignore_index == b.ignore_index
    assert a.meta == b.meta and a.root == b.root
    for x, y in zip(a.images + a.masks, b.images + b.masks):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


def maps_a_file(array: np.ndarray) -> bool:
    """Whether `array` is a view whose memory is a memory-mapped file (not a decoded copy)."""
    import mmap
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def forbid_reading(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("read_dataset called on a cache hit")
    monkeypatch.setattr(registry, "read_dataset", boom)


@pytest.fixture()
def tgs(tmp_path) -> Path:
    return write_tgs_dataset(tmp_path / "tgs", n=12)


def write_folders(root: Path, specs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for sample_id, (image, mask) in specs.items():
        Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
        if mask.dtype != np.uint8:
            Image.fromarray(mask.astype(np.uint16)).save(root / "masks" / f"{sample_id}.png")  # 16-bit PNG
        else:
            Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
    return root


def test_hit_after_miss_is_identical_and_never_decodes(tgs, monkeypatch):
    first = cached_read_dataset("tgs", tgs)
    assert_same(first, registry.read_dataset("tgs", tgs))
    assert len(entries(external_cache_dir(tgs))) == 1
    forbid_reading(monkeypatch)
    second = cached_read_dataset("tgs", tgs)
    assert_same(second, first)
    assert all(maps_a_file(a) for a in second.images + second.masks)  # zero-copy views
    assert second.meta[second.ids[0]] == first.meta[first.ids[0]]  # depths survive


def test_a_hit_still_obeys_a_lowered_pixel_limit(tgs, monkeypatch):
    from unetlab.data.io import pixel_limit

    cached_read_dataset("tgs", tgs)  # decoded under the default limit
    forbid_reading(monkeypatch)
    with pixel_limit(100 * 100), pytest.raises(DataError, match=r"cached in .*data\.max_pixels"):
        cached_read_dataset("tgs", tgs)  # 101 x 101 images
    with pixel_limit(101 * 101):
        assert len(cached_read_dataset("tgs", tgs).ids) == 12


def test_cached_arrays_are_read_only(tgs):
    cached_read_dataset("tgs", tgs)
    samples = cached_read_dataset("tgs", tgs)
    with pytest.raises(ValueError):
        samples.images[0][0, 0] = 1
    with pytest.raises(ValueError):
        samples.masks[0][...] = 0
    copy = samples.images[0].copy()
    copy[0, 0] = 7  # a copy is the user's own


@pytest.mark.parametrize("change", ["touch", "add", "remove", "rewrite"])
def test_any_source_change_invalidates(tgs, change):
    cached_read_dataset("tgs", tgs)
    old = entries(external_cache_dir(tgs))
    image = sorted((tgs / "train" / "images").iterdir())[0]
    if change == "touch":
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "add":
        (tgs / "notes.txt").write_text("a file the reader ignores still changes the fingerprint")
    elif change == "remove":
        (tgs / "SYNTHETIC.txt").unlink()
    else:
        array = np.asarray(Image.open(image)).copy()
        array[0, 0] = 255 - array[0, 0]
        Image.fromarray(array).save(image)
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    calls = []
    real = registry.read_dataset

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    registry.read_dataset, saved = counting, registry.read_dataset
    try:
        samples = cached_read_dataset("tgs", tgs)
    finally:
        registry.read_dataset = saved
    assert len(calls) == 1
    new = entries(external_cache_dir(tgs))
    assert len(new) == 1 and new != old  # the stale folder is removed after the new write
    assert_same(samples, real("tgs", tgs))


def folders_rgb_mixed(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    specs = {
        "a": (rng.integers(0, 256, (7, 9, 3), dtype=np.uint8), rng.integers(0, 3, (7, 9), dtype=np.uint8)),
        "b": (rng.integers(0, 256, (12, 5, 3), dtype=np.uint8), rng.integers(0, 3, (12, 5), dtype=np.uint8)),
        "c": (rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), np.array([[2]], dtype=np.uint8)),
    }
    return write_folders(tmp_path / "folders", specs)


def test_options_change_the_key_and_defaults_do_not(tmp_path, monkeypatch):
    root = folders_rgb_mixed(tmp_path)
    rgb = cached_read_dataset("folders", root)
    grey = cached_read_dataset("folders", root, channels=1)
    assert rgb.images[0].ndim == 3 and grey.images[0].ndim == 2
    assert len(entries(external_cache_dir(root))) == 2  # both kept: they are different reads
    forbid_reading(monkeypatch)
    assert_same(cached_read_dataset("folders", root, channels=None, images="images"), rgb)  # defaults spelled out
    assert_same(cached_read_dataset("FOLDERS", root, channels=1), grey)
    with pytest.raises(DataError, match="unknown option"):
        cached_read_dataset("folders", root, colour="red")
    with pytest.raises(DataError, match="unknown data format"):
        cached_read_dataset("nope", root)


def test_mixed_sizes_and_rgb_round_trip_exactly(tmp_path, monkeypatch):
    root = folders_rgb_mixed(tmp_path)
    direct = registry.read_dataset("folders", root)
    cached_read_dataset("folders", root)
    forbid_reading(monkeypatch)
    hit = cached_read_dataset("folders", root)
    assert_same(hit, direct)
    assert [im.shape for im in hit.images] == [(7, 9, 3), (12, 5, 3), (1, 1, 3)]
    assert hit.meta["a"]["image"] == str(root / "images" / "a.png")


def test_int64_masks_round_trip(tmp_path, monkeypatch):
    mask = np.array([[0, 1, 300], [1, 0, 300]], dtype=np.int64)
    small = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    root = write_folders(tmp_path / "wide", {"w": (np.full((2, 3), 9, np.uint8), mask),
                                             "s": (np.full((2, 2), 4, np.uint8), small)})
    options = {"num_classes": 2, "ignore_index": 300}
    direct = registry.read_dataset("folders", root, **options)
    assert direct.masks[direct.ids.index("w")].dtype == np.int64
    cached_read_dataset("folders", root, **options)
    forbid_reading(monkeypatch)
    hit = cached_read_dataset("folders", root, **options)
    assert_same(hit, direct)
    assert hit.masks[hit.ids.index("w")].dtype == np.int64 and hit.masks[hit.ids.index("s")].dtype == np.uint8
    names = {p.name for p in entries(external_cache_dir(root))[0].iterdir()}
    assert {"images.uint8", "masks.uint8", "masks.int64", "index.json"} <= names


@pytest.mark.parametrize("damage", ["truncate", "bad-json", "missing-file"])
def test_corrupt_cache_is_rebuilt_with_a_warning(tgs, damage):
    first = cached_read_dataset("tgs", tgs)
    (folder,) = entries(external_cache_dir(tgs))
    del first
    if damage == "truncate":
        path = folder / "images.uint8"
        os.truncate(path, path.stat().st_size - 10)
    elif damage == "bad-json":
        (folder / "index.json").write_text('{"version": 1, "files": {')
    else:
        (folder / "masks.uint8").unlink()
    with pytest.warns(UserWarning, match="corrupt data cache"):
        rebuilt = cached_read_dataset("tgs", tgs)
    assert_same(rebuilt, registry.read_dataset("tgs", tgs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_read_dataset("tgs", tgs)  # and now it is trusted again, silently


def test_crash_during_write_leaves_nothing_that_is_used(tgs, monkeypatch):
    calls = {"n": 0}
    real_append = cache_mod._Blob.append

    def crashing(self, array):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated crash mid-write")
        return real_append(self, array)
    monkeypatch.setattr(cache_mod._Blob, "append", crashing)
    with pytest.raises(KeyboardInterrupt):
        cached_read_dataset("tgs", tgs)
    assert entries(external_cache_dir(tgs)) == []
    assert [p for p in external_cache_dir(tgs).iterdir() if p.is_dir()] == []  # the temporary folder went too
    monkeypatch.setattr(cache_mod._Blob, "append", real_append)
    assert_same(cached_read_dataset("tgs", tgs), registry.read_dataset("tgs", tgs))


def test_killed_writer_leftover_is_never_trusted(tgs, monkeypatch):
    """A process killed mid-write cannot clean up: its temporary folder stays, under a name no read uses."""
    def crashing_index(*args, **kwargs):
        raise SystemExit("killed before index.json")
    monkeypatch.setattr(cache_mod, "_remove", lambda folder: None)  # a killed process removes nothing
    monkeypatch.setattr(cache_mod.json, "dump", crashing_index)
    with pytest.raises(SystemExit):
        cached_read_dataset("tgs", tgs)
    monkeypatch.undo()
    leftovers = [p for p in external_cache_dir(tgs).iterdir() if p.is_dir()]
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    calls = []
    real = registry.read_dataset
    monkeypatch.setattr(registry, "read_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert_same(cached_read_dataset("tgs", tgs), real("tgs", tgs))
    assert len(calls) == 1  # decoded again: the leftover was not used


def test_losing_a_rename_race_uses_the_winners_cache(tgs, monkeypatch):
    """Two writers: the other one renames first; this one discards its copy and reads the winner's."""
    real_rename = os.rename
    state = {"raced": False}

    def rename(src, dst):
        if not state["raced"] and Path(src).name.startswith(".tmp-"):
            state["raced"] = True
            winner = Path(str(src) + "-winner")
            import shutil
            shutil.copytree(src, winner)
            real_rename(winner, dst)  # the other process wins
        return real_rename(src, dst)
    monkeypatch.setattr(cache_mod.os, "rename", rename)
    samples = cached_read_dataset("tgs", tgs)
    monkeypatch.undo()
    assert state["raced"]
    assert_same(samples, registry.read_dataset("tgs", tgs))
    assert len(entries(external_cache_dir(tgs))) == 1
    assert not [p for p in external_cache_dir(tgs).iterdir() if p.name.startswith(".tmp-")]


def test_explicit_cache_dir_and_clear_cache(tgs, tmp_path, monkeypatch):
    cache_dir = tmp_path / "elsewhere"
    first = cached_read_dataset("tgs", tgs, cache_dir=cache_dir)
    assert not external_cache_dir(tgs).exists() and len(entries(cache_dir)) == 1
    assert not (tgs / IN_ROOT_NAME).exists()
    (cache_dir / "not-ours").mkdir()
    assert clear_cache(cache_dir) == 1
    assert entries(cache_dir) == [cache_dir / "not-ours"]  # only what unetlab made is removed
    cached_read_dataset("tgs", tgs)
    assert clear_cache(tgs) == 1 and not external_cache_dir(tgs).exists()
    assert_same(cached_read_dataset("tgs", tgs, cache_dir=cache_dir), first)


def test_the_cache_never_goes_into_the_data_folder(tgs, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETLAB_CACHE", str(tmp_path / "user-cache"))
    before = sorted(p.relative_to(tgs) for p in tgs.rglob("*"))
    cached_read_dataset("tgs", tgs)
    external = external_cache_dir(tgs)
    assert external.parent == tmp_path / "user-cache" / "data" and len(entries(external)) == 1
    assert not (tgs / IN_ROOT_NAME).exists()
    assert sorted(p.relative_to(tgs) for p in tgs.rglob("*")) == before
    assert clear_cache(tgs) == 1 and entries(external) == []


def test_palette_survives_the_cache(tmp_path, monkeypatch):
    """`cached_read` knows no format: the registry hands it the read; the format's colours come back on a hit."""
    rng = np.random.default_rng(1)
    root = write_folders(tmp_path / "f", {"a": (rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
                                                np.array([[0, 1, 2, 3, 4]] * 4, np.uint8))})
    palette = [(10, 20, 30), (40, 50, 60), (70, 80, 90), (1, 2, 3), (4, 5, 6)]

    def read():
        samples = registry.read_dataset("folders", root)
        samples.palette = list(palette)
        return samples
    first = cache_mod.cached_read(read, root, "folders", {"images": "images"}, cache_dir=tmp_path / "c")
    hit = cache_mod.cached_read(lambda: pytest.fail("decoded on a hit"), root, "folders", {"images": "images"},
                                cache_dir=tmp_path / "c")
    assert first.palette == hit.palette == palette
