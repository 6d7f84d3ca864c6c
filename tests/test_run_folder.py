"""Tests for unetlab.run_folder: the one owner of a run folder's layout and files."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
import torch

import unetlab.run_folder as run_folder_module
from unetlab.config import load_config
from unetlab.errors import UnetlabError
from unetlab.run_folder import RunFolder


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


# ------------------------------------------------------------------------------ creating and finding


def test_create_makes_the_layout_and_refuses_a_non_empty_folder_or_a_file(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    assert (run.path / "checkpoints").is_dir() and (run.path / "figures").is_dir()
    (tmp_path / "empty").mkdir()
    assert (RunFolder.create(tmp_path / "empty").path / "checkpoints").is_dir()  # an existing empty folder is fine
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(UnetlabError, match="not empty"):
        RunFolder.create(run.path)
    assert (run.path / "checkpoints").is_dir() and (run.path / "notes.txt").is_file()  # nothing was touched
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UnetlabError, match="is a file"):
        RunFolder.create(a_file)
    assert a_file.read_text() == "x"


def test_new_path_never_collides(tmp_path, monkeypatch):
    class _Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 5, 6, 7, 8, 9)

    monkeypatch.setattr(run_folder_module, "datetime", _Frozen)
    first = RunFolder.new_path(tmp_path, "demo")
    assert first == tmp_path / "demo-20240506-070809"
    first.mkdir()
    second = RunFolder.new_path(tmp_path, "demo")
    assert second == tmp_path / "demo-20240506-070809-2"
    second.mkdir()
    assert RunFolder.new_path(tmp_path, "demo") == tmp_path / "demo-20240506-070809-3"


def test_of_finds_the_run_from_its_folder_or_a_checkpoint(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    best = run.checkpoint_path("best")
    assert best == tmp_path / "run" / "checkpoints" / "best.pt"
    assert RunFolder.of(run.path).path == run.path
    assert RunFolder.of(best).path == run.path  # need not exist yet
    assert RunFolder.of(tmp_path / "loose" / "model.pt").path == tmp_path / "loose"


def test_paths_of_the_layout(tmp_path):
    run = RunFolder(tmp_path)
    assert run.config_path == tmp_path / "config.yaml"
    assert run.split_path == tmp_path / "split.json"
    assert run.folds_path == tmp_path / "folds.json"
    assert run.metrics_path == tmp_path / "metrics.csv"
    assert run.report_path == tmp_path / "report.md"
    assert run.evaluation_path("best-val") == tmp_path / "evaluation" / "best-val.json"
    assert run.figure_path("curves.png") == tmp_path / "figures" / "curves.png"
    assert run.export_path("model.onnx") == tmp_path / "export" / "model.onnx"


# ------------------------------------------------------------------------------ metrics


def test_metrics_round_trip_blanks_counters_and_late_columns(tmp_path):
    run = RunFolder(tmp_path)
    rows = [{"epoch": 1, "step": 10, "train/loss": 0.5, "val/iou": ""},
            {"epoch": 2, "step": 20, "train/loss": 0.25, "val/iou": 0.75, "lr": 1e-3}]  # lr appears later
    assert run.write_metrics(rows) == run.metrics_path
    assert run.metrics_path.read_text().splitlines()[0] == "epoch,step,train/loss,val/iou,lr"
    back = run.read_metrics()
    assert [r["epoch"] for r in back] == [1, 2] and all(type(r["epoch"]) is int for r in back)
    assert [r["step"] for r in back] == [10, 20] and all(type(r["step"]) is int for r in back)
    assert back[0]["train/loss"] == 0.5 and back[1]["val/iou"] == 0.75 and back[1]["lr"] == 1e-3
    assert math.isnan(back[0]["val/iou"]) and math.isnan(back[0]["lr"])  # blank and absent -> NaN
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary left


def test_read_metrics_up_to_epoch_cuts_later_rows(tmp_path):
    run = RunFolder(tmp_path)
    run.write_metrics([{"epoch": e, "val/iou": e / 10} for e in range(1, 6)])
    assert [r["epoch"] for r in run.read_metrics(up_to_epoch=3)] == [1, 2, 3]
    assert run.read_metrics(up_to_epoch=0) == []
    assert len(run.read_metrics()) == 5


def test_read_metrics_missing_file_and_foreign_csv(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.read_metrics() == []  # a run that has not logged an epoch yet
    with pytest.raises(UnetlabError, match="no such run folder"):
        run.read_metrics(strict=True)
    run.path.mkdir()
    with pytest.raises(UnetlabError, match=r"metrics\.csv: not found"):
        run.read_metrics(strict=True)
    run.metrics_path.write_text("epoch,val/iou\n")
    assert run.read_metrics() == []
    with pytest.raises(UnetlabError, match="empty"):
        run.read_metrics(strict=True)
    run.metrics_path.write_text("hello;world\n1;2\n")
    with pytest.raises(UnetlabError, match="no 'epoch' column"):
        run.read_metrics()
    run.metrics_path.write_bytes(b"\xff\xfe\x00garbage\x80\n")
    with pytest.raises(UnetlabError, match="cannot read it"):
        run.read_metrics()


def test_read_metrics_file_reads_a_csv_of_any_name(tmp_path):
    path = tmp_path / "old-metrics.csv"
    path.write_text("epoch,val/iou\n1,0.5\n2,\n")
    rows = RunFolder.read_metrics_file(path, strict=True)
    assert rows[0] == {"epoch": 1, "val/iou": 0.5} and math.isnan(rows[1]["val/iou"])


# ------------------------------------------------------------------------------ config


def test_config_round_trip_and_errors_name_the_file(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(UnetlabError, match=r"no config\.yaml") as missing:
        run.read_config()
    assert str(tmp_path) in str(missing.value)
    config = load_config(None, ["model.depth=3"])
    run.write_config(config)
    assert run.read_config().model.depth == 3
    assert run.read_config(["model.depth=2"]).model.depth == 2
    run.config_path.write_text("model: [unclosed\n")
    with pytest.raises(UnetlabError, match=r"config\.yaml"):
        run.read_config()


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_save_load_round_trip_with_weights_only(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    assert not run.has_checkpoint("best")
    path = run.save_checkpoint("best", {"model_state": {"w": torch.arange(3.0)}, "epoch": 4, "mean": [0.5]})
    assert path == run.checkpoint_path("best") and run.has_checkpoint("best")
    payload = run.load_checkpoint("best")
    assert payload["epoch"] == 4 and payload["mean"] == [0.5]
    assert torch.equal(payload["model_state"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
    with pytest.raises(UnetlabError, match="not found"):
        run.load_checkpoint("last")
    # weights_only: a checkpoint holding a pickled object is refused, its code never runs
    torch.save({"format": "unetlab-checkpoint-v1", "x": _Evil()}, run.checkpoint_path("last"))
    with pytest.raises(UnetlabError, match="last.pt"):
        run.load_checkpoint("last")


def test_resolve_checkpoint_from_a_run_or_a_file(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    with pytest.raises(UnetlabError, match="no checkpoints/best.pt"):
        RunFolder.resolve_checkpoint(run.path)
    path = run.save_checkpoint("last", {"epoch": 1})
    assert RunFolder.resolve_checkpoint(run.path, "last") == path
    assert RunFolder.resolve_checkpoint(path) == path  # a file is taken as it is
    with pytest.raises(UnetlabError, match="not found"):
        RunFolder.resolve_checkpoint(tmp_path / "nope")


def test_remove_stale_temporaries_in_the_run_folders(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    stale = [run.path / ".metrics.csv.a1.tmp", run.path / "checkpoints" / ".best.pt.b2.tmp",
             run.path / "figures" / ".curves.png.c3.tmp.png"]
    for path in stale:
        path.write_bytes(b"half")
    kept = run.save_checkpoint("best", {"epoch": 1})
    assert sorted(run.remove_stale_temporaries()) == sorted(stale)
    assert kept.is_file() and not any(p.exists() for p in stale)


def _unfinished_run(path, with_last=False):
    """A run folder as `unetlab train` leaves it when killed in its first epoch (or later, `with_last`)."""
    run = RunFolder.create(path)
    run.write_config(load_config(None, ["train.epochs=2"]))
    (run.path / "split.json").write_text("{}")
    (run.path / "events.out.tfevents.1.host.2.0").write_bytes(b"events")
    (run.path / "checkpoints" / ".last.pt.k1.tmp").write_bytes(b"half a checkpoint")
    if with_last:
        run.save_checkpoint("last", {"epoch": 1})
    return run


def test_a_skeleton_left_before_config_yaml_is_reused_with_its_temporaries_removed(tmp_path):
    skeleton = RunFolder.create(tmp_path / "run")  # killed before config.yaml was renamed into place
    (skeleton.path / ".config.yaml.z9.tmp").write_text("half")
    RunFolder.create(skeleton.path)
    assert sorted(p.name for p in skeleton.path.iterdir()) == ["checkpoints", "figures"]


def test_create_in_a_run_folder_says_how_to_resume_it(tmp_path):
    unfinished = _unfinished_run(tmp_path / "a")
    with pytest.raises(UnetlabError, match="stopped before its first checkpoint; restart it from epoch 0 with "
                                           "`unetlab train --resume .*` or choose another --out"):
        RunFolder.create(unfinished.path)
    resumable = _unfinished_run(tmp_path / "b", with_last=True)
    with pytest.raises(UnetlabError, match="holds a run .*continue it with `unetlab train --resume"):
        RunFolder.create(resumable.path)


def test_restart_clears_what_the_run_wrote_and_keeps_config_and_other_files(tmp_path):
    run = _unfinished_run(tmp_path / "run")
    config = run.config_path.read_text()
    (run.path / "figures" / "learning_curves.png").write_bytes(b"png")
    (run.path / "metrics.csv").write_text("epoch\n")
    (run.path / "notes.txt").write_text("the user's")
    RunFolder.restart(run.path)
    left = sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*"))
    assert left == ["checkpoints", "config.yaml", "figures", "notes.txt"]
    assert run.config_path.read_text() == config
    with pytest.raises(UnetlabError, match="only a run with config.yaml and no checkpoints/last.pt"):
        RunFolder.restart(_unfinished_run(tmp_path / "later", with_last=True).path)


# ------------------------------------------------------------------------------ operating point


def _point(**changes):
    point = {"threshold": 0.437, "min_area": 20, "min_component": 5, "criterion": "max-tgs", "checkpoint": "best",
             "checkpoint_sha256": "0" * 64, "data": "/data", "split": "val", "images": 10, "metrics": {"iou": 0.5}}
    return {**point, **changes}


def test_operating_point_round_trip_is_atomic_and_stamped(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    assert run.read_operating_point() is None
    path = run.write_operating_point(_point())
    assert path == tmp_path / "run" / RunFolder.OPERATING_POINT == run.operating_point_path
    saved = run.read_operating_point()
    assert {k: saved[k] for k in _point()} == _point()
    assert datetime.fromisoformat(saved["written"]).tzinfo is not None
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no temporaries left
    with pytest.raises(ValueError, match="lacks checkpoint_sha256"):
        run.write_operating_point({k: v for k, v in _point().items() if k != "checkpoint_sha256"})


def test_operating_point_applies_only_to_the_checkpoint_it_was_chosen_for(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    best = run.save_checkpoint("best", {"weights": torch.zeros(3)})
    last = run.save_checkpoint("last", {"weights": torch.ones(3)})
    run.write_operating_point(_point(checkpoint_sha256=RunFolder.checkpoint_digest(best)))
    assert run.operating_point_for(best)["criterion"] == "max-tgs"
    assert run.operating_point_for(last) is None
    run.save_checkpoint("best", {"weights": torch.full((3,), 2.0)})  # best.pt rewritten (training resumed)
    assert run.operating_point_for(best) is None


@pytest.mark.parametrize("text, needle", [
    ("{not json", "cannot read it"),
    ('{"threshold": 0.5}', "not an operating point (no min_area"),
    (None, "threshold must lie in (0, 1)"),
])
def test_a_broken_operating_point_is_a_one_line_error_naming_the_file(tmp_path, text, needle):
    import json

    run = RunFolder.create(tmp_path / "run")
    run.operating_point_path.write_text(text if text is not None else json.dumps(_point(threshold=1.5)))
    with pytest.raises(UnetlabError) as caught:
        run.read_operating_point()
    message = str(caught.value)
    assert needle in message and str(run.operating_point_path) in message and "--save" in message
    assert "\n" not in message
