"""Tests for unetlab.files: the one write-to-a-temporary-then-rename helper."""

from __future__ import annotations

import os

import pytest

from unetlab.files import TEMP_SUFFIX, atomic_path, atomic_write_bytes, atomic_write_text, remove_stale_temporaries


def test_atomic_path_renames_the_temporary_onto_the_target(tmp_path):
    target = tmp_path / "sub" / "model.onnx"  # the folder is created
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.startswith(".model.onnx.") and tmp.name.endswith(TEMP_SUFFIX + ".png")
        assert not target.exists()  # nothing at the target until the writer succeeded
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(target.parent)) == ["model.onnx"]


def test_atomic_path_on_error_keeps_the_old_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "best.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]


def test_atomic_path_error_before_any_file_existed_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.json"):
            raise KeyboardInterrupt  # BaseException too: a Ctrl-C never leaves a temporary
    assert os.listdir(tmp_path) == []


def test_atomic_write_text_overwrites_in_utf8_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    atomic_write_text(target, "second ü")
    assert target.read_bytes() == "second ü".encode("utf-8")
    assert sorted(os.listdir(target.parent)) == ["out.json"]


def test_atomic_write_bytes_returns_the_path(tmp_path):
    target = tmp_path / "x.bin"
    assert atomic_write_bytes(str(target), b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"


def test_atomic_write_failure_keeps_the_old_content(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, None)  # type: ignore[arg-type]  # the write itself fails
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_remove_stale_temporaries_removes_only_hidden_tmp_files(tmp_path):
    stale = [tmp_path / ".best.pt.abc123.tmp", tmp_path / ".curves.png.x9.tmp.png"]
    kept = [tmp_path / "best.pt", tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "a.tmp.png",
            tmp_path / "images.tar.gz.part"]
    for path in stale + kept:
        path.write_bytes(b"x")
    (tmp_path / ".dir.tmp").mkdir()  # folders are not temporaries of a file write
    nested = tmp_path / "sub" / ".deep.pt.q.tmp"
    nested.parent.mkdir()
    nested.write_bytes(b"x")  # not recursive
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept) and nested.exists() and (tmp_path / ".dir.tmp").is_dir()


def test_remove_stale_temporaries_spares_a_finished_write(tmp_path):
    with atomic_path(tmp_path / "metrics.csv") as tmp:
        tmp.write_text("epoch\n1\n")
    assert remove_stale_temporaries(tmp_path) == []
    assert (tmp_path / "metrics.csv").read_text() == "epoch\n1\n"


def test_written_files_get_the_umask_permissions_not_private_ones(tmp_path):
    import os
    import stat

    from unetlab.files import atomic_write_text

    from unetlab.files import _UMASK

    path = atomic_write_text(tmp_path / "shared.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any new file of this process gets
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode) == 0o666 & ~_UMASK
