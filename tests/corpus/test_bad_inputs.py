"""The bad-input corpus through the CLI: every command that reads a broken input ends in one clear line.

Each case of `bad_inputs` is made once per module on a private copy; every command that reads that kind
of input runs on it in process. An `error` case must exit 2 with ONE `error:` line on stderr naming the
file or key, no traceback, and leave every file of the user's as it was (hashed before and after); an
`accepted` case must exit 0 and also leave the user's files alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from corpus.bad_inputs import (CONFIG_CASES, FOLDERS_CASES, RUN_CASES, TGS_CASES, Case, file_hashes,
                               folders_from_tgs, unchanged)
from run_fixtures import TINY, assert_one_line_error, run_cli

FOLDERS_SETS = ["--set", "data.format=folders", "--set", "data.options={binary_rule: strict}"]
TRAIN_SETS = [arg for item in [*TINY, "train.epochs=1"] for arg in ("--set", item)]


@pytest.fixture(scope="module")
def folders_dir(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return folders_from_tgs(tgs_dir, tmp_path_factory.mktemp("folders") / "set")


@pytest.fixture(scope="module")
def broken(tgs_dir, folders_dir, tiny_run, tmp_path_factory):
    """(layout, case name) -> (folder, needle): each case made once, on its own copy, when first asked for."""
    made: dict[tuple[str, str], tuple[Path, str]] = {}
    sources = {"tgs": tgs_dir, "folders": folders_dir, "run": tiny_run}

    def get(layout: str, case: Case) -> tuple[Path, str]:
        if (layout, case.name) not in made:
            root = Path(shutil.copytree(sources[layout], tmp_path_factory.mktemp(f"{layout}-{case.name}") / "input"))
            made[layout, case.name] = root, case.make(root)
        return made[layout, case.name]

    return get


def _check(expect: str, code: int, err: str, needles: list[str], before: dict[str, str], root: Path) -> None:
    assert "Traceback" not in err, err
    if expect == "accepted":
        assert code == 0, err
    else:
        assert_one_line_error(code, err, *[needle for needle in needles if needle])
    assert not unchanged(before, file_hashes(root)), "the user's files changed"


def _data_commands(layout: str, root: Path, run: Path, out: Path) -> dict[str, list[str]]:
    images = root / ("train/images" if layout == "tgs" else "images")
    fmt = ["--format", "folders", "--set-option", "binary_rule=strict"] if layout == "folders" else []
    sets = FOLDERS_SETS if layout == "folders" else []
    commands = {
        "inspect": ["inspect", str(root), *fmt],
        "train": ["train", "--data", str(root), "--out", str(out / "run"), "--no-eval", "--no-progress",
                  *TRAIN_SETS, *sets],
        "predict": ["predict", str(run), str(images), "--out", str(out / "pred")],
    }
    if layout == "tgs":  # the tiny run reads TGS folders
        commands["evaluate"] = ["evaluate", str(run), "--data", str(root), "--split", "all"]
    return commands


DATA_PARAMS = [pytest.param(layout, case, command, id=f"{layout}-{case.name}-{command}")
               for layout, cases in (("tgs", TGS_CASES), ("folders", FOLDERS_CASES)) for case in cases
               for command in ("inspect", "train", "evaluate", "predict")
               if not (command == "evaluate" and layout == "folders")
               and not (command == "predict" and not case.touches_images)]


@pytest.mark.parametrize("layout, case, command", DATA_PARAMS)
def test_a_broken_data_folder_ends_in_one_line(layout, case, command, broken, tiny_run, tmp_path, capsys):
    root, needle = broken(layout, case)
    before = file_hashes(root)
    args = _data_commands(layout, root, tiny_run, tmp_path)[command]
    code, _, err = run_cli(args, capsys)
    _check(case.expected(command), code, err, [needle, case.says], before, root)
    assert sorted(file_hashes(root)) == sorted(before), "a file was written into the data folder"


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_a_bad_config_ends_in_one_line_naming_the_key(name, tgs_dir, tmp_path, capsys):
    source, needle = CONFIG_CASES[name]
    before = file_hashes(tgs_dir)
    args = ["train", "--data", str(tgs_dir), "--out", str(tmp_path / "run"), "--no-eval", "--no-progress",
            *TRAIN_SETS]
    if isinstance(source, str):
        config = tmp_path / "my config.yaml"
        config.write_text(source)
        args += ["--config", str(config)]
        needle_file = config.name
    else:
        args += [arg for item in source for arg in ("--set", item)]
        needle_file = needle
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, needle, needle_file)
    assert not unchanged(before, file_hashes(tgs_dir))
    assert not (tmp_path / "run" / "checkpoints").exists(), "refused only after training started"


def _run_commands(run: Path, data: Path, out: Path) -> dict[str, list[str]]:
    return {
        "evaluate": ["evaluate", str(run), "--data", str(data), "--split", "all"],
        "predict": ["predict", str(run), str(data / "train" / "images"), "--out", str(out / "pred")],
        "export": ["export", str(run), "--format", "torchscript", "--out", str(out / "model.pt")],
        "resume": ["train", "--resume", str(run), "--no-eval", "--no-progress"],
    }


@pytest.mark.parametrize("case, command", [pytest.param(case, command, id=f"{case.name}-{command}")
                                           for case in RUN_CASES
                                           for command in ("evaluate", "predict", "export", "resume")])
def test_a_broken_run_folder_ends_in_one_line(case, command, broken, tgs_dir, tmp_path, capsys):
    run, needle = broken("run", case)
    expect = case.expected(command)
    if expect == "accepted" and command == "resume":  # resume goes on (or restarts) in the run's own folder
        run = Path(shutil.copytree(run, tmp_path / "own-copy"))
    # An accepted evaluate rewrites the run's own report; the checkpoints are what must never change.
    kept = run / "checkpoints" if expect == "accepted" and run.joinpath("checkpoints").is_dir() else run
    before, data_before = file_hashes(kept), file_hashes(tgs_dir)
    code, out, err = run_cli(_run_commands(run, tgs_dir, tmp_path)[command], capsys)
    assert not unchanged(data_before, file_hashes(tgs_dir))
    if expect == "accepted" and command == "resume":
        assert code == 0 and "Traceback" not in err, err
        assert not list(run.rglob("*.tmp")), "resume left a half-written temporary behind"
        assert (run / "checkpoints" / "last.pt").is_file()
        if case.name == "no-checkpoint":  # killed before its first checkpoint: restarted from scratch
            assert "restarting" in out and "from epoch 0" in out, out
        return
    checkpoint = "checkpoints/last.pt:" if command == "resume" else "checkpoints/best.pt:"
    _check(expect, code, err, [needle.format(checkpoint=checkpoint), case.says], before, kept)


@pytest.mark.parametrize("out", ["train", "train/masks", "train/images"])
def test_predict_into_the_data_folder_is_refused_and_changes_nothing(out, tgs_dir, tiny_run, tmp_path, capsys):
    data = Path(shutil.copytree(tgs_dir, tmp_path / "data"))
    before = file_hashes(data)
    code, _, err = run_cli(["predict", str(tiny_run), str(data / "train" / "images"), "--out", str(data / out)],
                           capsys)
    assert_one_line_error(code, err, f"--out {data / out}:")
    assert file_hashes(data) == before, "predict wrote into the data folder"


def test_predict_into_a_folder_above_the_inputs_adds_files_but_replaces_none(tgs_dir, tiny_run, tmp_path, capsys):
    """Documented limit: only the input folder, its parent and a masks folder beside it are refused; a folder
    higher up (say `--out .`) gets masks/ and overlays/ but no file of the user's is replaced."""
    data = Path(shutil.copytree(tgs_dir, tmp_path / "data"))
    before = file_hashes(data)
    _, report, _ = run_cli(["inspect", str(data)], capsys)
    code, _, err = run_cli(["predict", str(tiny_run), str(data / "train" / "images"), "--out", str(data)], capsys)
    assert code == 0, err
    assert not unchanged(before, file_hashes(data))
    code, again, err = run_cli(["inspect", str(data)], capsys)
    assert code == 0 and again == report, "the predictions changed how the data set reads"
