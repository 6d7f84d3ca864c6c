import pickle

import pytest
import torch

from run_fixtures import schedule_lrs
from unetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from unetlab.errors import UnetlabError
from unetlab.run_folder import RunFolder


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoint_round_trip_and_atomic(tmp_path):
    path = save_checkpoint(tmp_path / "c" / "best.pt", {"model_state": {"w": torch.ones(2)}, "epoch": 3})
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]


def test_checkpoint_refuses_pickled_objects_garbage_and_foreign_files(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "unetlab-checkpoint-v1", "x": _Evil()}, evil)
    with pytest.raises(UnetlabError, match="evil.pt"):
        load_checkpoint(evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UnetlabError, match="garbage.pt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UnetlabError, match="not a unetlab checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(UnetlabError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert pickle  # keeps the import meaningful for readers: the refusal above is about pickle


def test_resolve_checkpoint(tmp_path):
    with pytest.raises(UnetlabError, match="no checkpoints/best.pt"):
        RunFolder.resolve_checkpoint(tmp_path)
    with pytest.raises(UnetlabError, match="not found"):
        RunFolder.resolve_checkpoint(tmp_path / "nope")


def test_cosine_with_warmup_follows_progress():
    lrs = schedule_lrs(["schedule.name=cosine", "optim.lr=1.0", "schedule.min_lr=0", "train.epochs=10",
                "schedule.warmup_epochs=1"], [0.0, 0.05, 0.1, 0.55, 1.0])
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-9)


def test_onecycle_rises_then_anneals_to_floor():
    lrs = schedule_lrs(["schedule.name=onecycle", "optim.lr=1.0", "schedule.min_lr=0.01"], [0.0, 0.3, 0.65, 1.0])
    assert lrs[0] == pytest.approx(0.01) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(0.505) and lrs[3] == pytest.approx(0.01)


def test_pickled_checkpoint_refusal_is_one_whole_line_saying_what_and_why(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "unetlab-checkpoint-v1", "x": _Evil()}, evil)
    with pytest.raises(UnetlabError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert message.startswith(f"{evil}: holds pickled Python objects (print)")  # what __reduce__ calls
    assert "never unpickles" in message and "unpickling can run any code" in message
    assert "torch.load(weights_only=True)" in message
    assert message.endswith("re-save the weights as a state dict: torch.save(model.state_dict(), path)")
    assert "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize("content, why", [(b"", "empty or cut short"),
                                          (b"not a checkpoint", "neither a torch zip archive nor a pickle"),
                                          (None, "failed finding central directory")])
def test_unreadable_checkpoints_say_why_in_one_line(tmp_path, content, why):
    path = tmp_path / "c.pt"
    if content is None:  # a torch zip archive cut short
        save_checkpoint(path, {"epoch": 1})
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(UnetlabError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot be read as a torch file (") and "\n" not in message
    assert why in message and "truncated, corrupt or of another kind" in message


def test_predict_with_a_pickled_checkpoint_is_one_line(tmp_path, capsys):
    from run_fixtures import assert_one_line_error, run_cli

    evil = tmp_path / "best.pt"
    torch.save({"format": "unetlab-checkpoint-v1", "x": _Evil()}, evil)
    (tmp_path / "in").mkdir()
    code, out, err = run_cli(["predict", str(evil), str(tmp_path / "in"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, str(evil), "pickled Python objects", "never unpickles")
    assert "code ran" not in out + err
