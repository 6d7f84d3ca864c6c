"""`unetlab plot`: learning curves of several runs from hand-written metrics.csv files (no training)."""

from __future__ import annotations

import pytest
from PIL import Image
from run_fixtures import assert_choice_refused, assert_one_line_error, run_cli

from unetlab.errors import UnetlabError
from unetlab.evaluation import curves
from unetlab.evaluation.curves import plot_runs

HEADER = "epoch,step,lr,train/loss,val/loss,val/iou,val/tgs_map,train/images_per_s,time_s\n"


def _run(folder, rows=3, extra_metric=False, lr0=1e-3):
    """A fake run folder: metrics.csv as MetricsLog writes it (a blank where a value was not logged)."""
    folder.mkdir(parents=True)
    header = HEADER.rstrip("\n") + (",val/dice\n" if extra_metric else "\n")
    lines = [header]
    for e in range(1, rows + 1):
        values = [e, 10 * e, lr0 / e, 0.7 / e, 0.8 / e, 0.5 + 0.1 * e, "" if e == 2 else 0.4 + 0.1 * e, 55.0, 30.0 * e]
        if extra_metric:
            values.append(0.6 + 0.05 * e)
        lines.append(",".join(str(v) for v in values) + "\n")
    (folder / "metrics.csv").write_text("".join(lines))
    return folder


def _png(path):
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        size = im.size
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp.png")]
    return size




def test_plot_one_run_writes_a_png(tmp_path, capsys):
    run = _run(tmp_path / "phase1")
    out = tmp_path / "figs" / "curves.png"
    code, text, err = run_cli(["plot", str(run), "--out", str(out)], capsys)
    assert code == 0, err
    assert "wrote" in text and str(out) in text
    _png(out)


def test_plot_two_runs_same_name_and_default_panels(tmp_path, monkeypatch):
    a = _run(tmp_path / "a" / "run", extra_metric=True)
    b = _run(tmp_path / "b" / "run", rows=5, lr0=3e-4)
    drawn = {}
    import unetlab.viz as viz

    real = viz._save_figure

    def spy(fig, path):
        drawn["titles"] = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        drawn["legends"] = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_visible()]
        drawn["yscale"] = {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_visible()}
        return real(fig, path)

    monkeypatch.setattr(viz, "_save_figure", spy)
    out = plot_runs([a, b], tmp_path / "two.png")
    _png(out)
    # loss first, then every val/* metric of any run (val/dice only in run a), learning rate last
    assert drawn["titles"] == ["loss", "val/iou", "val/tgs_map", "val/dice", "learning rate"]
    assert drawn["legends"][0] == ["a/run train", "a/run val", "b/run train", "b/run val"]
    assert drawn["legends"][1] == ["a/run", "b/run"]
    assert drawn["legends"][3] == ["a/run"]
    assert drawn["yscale"]["learning rate"] == "log"


def test_plot_same_folder_twice_gets_unique_labels(tmp_path, monkeypatch):
    run = _run(tmp_path / "r")

    assert curves._unique_run_labels([run, run]) == ["r", "r (2)"]
    assert curves._unique_run_labels([tmp_path / "x" / "r", tmp_path / "y" / "z" / "r"]) == ["x/r", "z/r"]


def test_plot_against_time_and_metrics_filter(tmp_path, capsys, monkeypatch):
    import unetlab.viz as viz

    drawn = {}
    real = viz._save_figure

    def spy(fig, path):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        drawn["titles"] = [ax.get_title() for ax in axes]
        drawn["xlabel"] = {ax.get_xlabel() for ax in axes}
        drawn["x"] = {line.get_label(): list(line.get_xdata()) for line in axes[1].get_lines()}
        return real(fig, path)

    monkeypatch.setattr(viz, "_save_figure", spy)
    a, b = _run(tmp_path / "long"), _run(tmp_path / "short", rows=1)
    out = tmp_path / "time.png"
    code, text, err = run_cli(["plot", str(a), str(b), "--out", str(out), "--x", "time",
                               "--metrics", "loss, iou ,lr,train/images_per_s"], capsys)
    assert code == 0, err
    assert "2 runs" in text and "time" in text
    _png(out)
    assert drawn["titles"] == ["loss", "val/iou", "learning rate", "train/images_per_s"]
    assert drawn["xlabel"] == {"time (min)"}
    assert drawn["x"] == {"long": [0.5, 1.0, 1.5], "short": [0.5]}  # time_s 30, 60, 90 s


def test_plot_metrics_filter_picks_the_panels(tmp_path, monkeypatch):
    import unetlab.viz as viz

    titles = []
    monkeypatch.setattr(viz, "_save_figure", lambda fig, path: titles.extend(
        ax.get_title() for ax in fig.axes if ax.get_visible()) or path)
    plot_runs([_run(tmp_path / "r")], tmp_path / "x.png", metrics=["val/tgs_map", "train/loss", "tgs_map"], x="time")
    assert titles == ["val/tgs_map", "train/loss"]


def test_plot_a_metrics_csv_given_directly(tmp_path, monkeypatch):
    import unetlab.viz as viz

    legends = []
    monkeypatch.setattr(viz, "_save_figure", lambda fig, path: legends.extend(
        [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_visible()) or path)
    csv_file = _run(tmp_path / "r") / "metrics.csv"
    renamed = csv_file.rename(tmp_path / "r" / "phase1-metrics.csv")  # any name, labelled by its folder
    plot_runs([renamed], tmp_path / "x.png", metrics=["iou"])
    assert legends == [["r"]]


def test_plot_missing_run_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(["plot", str(missing), "--out", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, str(missing), "unetlab train")
    assert not (tmp_path / "x.png").exists()


def test_plot_folder_without_metrics_csv(tmp_path, capsys):
    good = _run(tmp_path / "good")
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    code, _, err = run_cli(["plot", str(good), str(folder), "--out", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, str(folder / "metrics.csv"), "not found")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content", ["", HEADER])
def test_plot_empty_metrics_csv(tmp_path, capsys, content):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "metrics.csv").write_text(content)
    code, _, err = run_cli(["plot", str(folder), "--out", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, str(folder / "metrics.csv"), "empty")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x80\x81\n\x00\x01\n", b"hello;world\n1;2\n"])
def test_plot_unreadable_metrics_csv(tmp_path, capsys, content):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "metrics.csv").write_bytes(content)
    code, _, err = run_cli(["plot", str(folder), "--out", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, str(folder / "metrics.csv"))
    assert "pass" in err


def test_plot_unknown_metric_lists_the_available_ones(tmp_path, capsys):
    run = _run(tmp_path / "r")
    code, _, err = run_cli(["plot", str(run), "--out", str(tmp_path / "x.png"), "--metrics", "loss,val/nope"], capsys)
    assert_one_line_error(code, err, "val/nope", "available: loss, lr, train/loss, val/loss, val/iou, val/tgs_map")


def test_plot_bad_x_and_time_without_time_column(tmp_path, capsys):
    run = _run(tmp_path / "r")
    code, _, err = run_cli(["plot", str(run), "--out", str(tmp_path / "x.png"), "--x", "step"], capsys)
    assert_choice_refused(code, err, "--x", "step", "epoch", "time")
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.csv").write_text("epoch,train/loss,val/loss\n1,0.5,0.6\n")
    code, _, err = run_cli(["plot", str(old), "--out", str(tmp_path / "x.png"), "--x", "time"], capsys)
    assert_one_line_error(code, err, str(old / "metrics.csv"), "time_s")
    with pytest.raises(UnetlabError, match="no run"):
        plot_runs([], tmp_path / "x.png")
