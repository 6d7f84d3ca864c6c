"""unetlab tune: the tune: section, a tiny search and its best.yaml, pruning, resume, two workers, --report.

Every trial is a tiny run (4-channel U-Net, one epoch on the 16-image `tgs_dir`, about a second); the
metric is val/loss (minimised), whose values differ from trial to trial.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from run_fixtures import assert_one_line_error, run_cli, tiny_config
from unetlab import tuning
from unetlab.config import load_config
from unetlab.errors import ConfigError, UnetlabError
from unetlab.run_folder import RunFolder

SPACE = ["tune.space.optim.lr={float: [1e-4, 1e-2], log: true}", "tune.space.train.batch_size={choice: [4, 8]}"]


def tune_config(*overrides: str):
    return tiny_config("train.epochs=1", "train.num_threads=1", "tune.startup_trials=1", *SPACE, *overrides)


def study_of(out: Path) -> optuna.Study:
    return tuning.load_tune_study(tuning.default_storage(out))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


# ----------------------------------------------------------------------------- the tune: section


@pytest.mark.parametrize("override, needle", [
    ("tune.space.optim.lrx={float: [0.1, 0.2]}", "tune.space.optim.lrx"),           # no such key
    ("tune.space.model.widthx={int: [2, 4]}", "tune.space.model.widthx"),           # no such model option
    ("tune.space.augment.shift={float: [0.0, 0.8]}", "tune.space.augment.shift"),   # high out of range
    ("tune.space.optim.name={choice: [adam, lion]}", "tune.space.optim.name"),      # a choice refused
    ("tune.space.optim.lr.x={float: [0.1, 0.2]}", "tune.space.optim.lr"),           # a value, not a section
    ("tune.space.optim.lr={float: [0.1, 0.01]}", "tune.space.optim.lr"),            # low >= high
    ("tune.space.optim.lr={float: [0, 0.1], log: true}", "tune.space.optim.lr"),    # log from 0
    ("tune.space.optim.lr={int: [1, 2], choice: [1]}", "tune.space.optim.lr"),      # two kinds
    ("tune.space.model.depth={int: [2, 3.5]}", "tune.space.model.depth"),           # int bounds
    ("tune.space.model.norm={choice: []}", "tune.space.model.norm"),                # empty choice
    ("tune.space.optim.lr=0.1", "tune.space.optim.lr"),                             # no distribution
    ("tune.metric=val/iou", "tune.direction"),                                      # direction unknown
])
def test_a_bad_space_is_refused_at_load_naming_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        tiny_config(override)


def test_the_space_reads_dotted_and_nested_keys_and_yaml_exponents():
    cfg = tiny_config("tune.space.optim.lr={float: [1e-4, 1e-2], log: true}",  # PyYAML: 1e-4 is text
                      "tune.space.model={base_width: {int: [4, 8], step: 4}}",
                      "tune.space.loss.pos_weight={float: [1, 3]}")
    assert cfg.tune.space == {"optim.lr": {"float": [1e-4, 1e-2], "log": True},
                              "model.base_width": {"int": [4, 8], "step": 4}, "loss.pos_weight": {"float": [1, 3]}}
    assert cfg.tune.objective(cfg.train) == ("val/loss", "minimize")
    other = tiny_config("train.monitor=val/iou", "train.monitor_mode=max")
    assert other.tune.objective(other.train) == ("val/iou", "maximize")
    trial_cfg = cfg.tune.apply(cfg, {"optim.lr": 0.003, "model.base_width": 8})
    assert (trial_cfg.optim.lr, trial_cfg.model.base_width, trial_cfg.tune.space) == (0.003, 8, {})


def test_the_pruner_follows_the_config():
    assert isinstance(tuning._pruner(tune_config()), optuna.pruners.MedianPruner)
    assert isinstance(tuning._pruner(tune_config("tune.pruner=hyperband")), optuna.pruners.HyperbandPruner)
    assert isinstance(tuning._pruner(tune_config("tune.pruner=none")), optuna.pruners.NopPruner)


# ----------------------------------------------------------------------------- a search, resumed


@pytest.fixture(scope="module")
def searched(tgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two trials, then the same search again with trials=3: (out folder, log lines of the second call)."""
    out = tmp_path_factory.mktemp("tune") / "search"
    cfg = tune_config("name=tiny-search")
    first = tuning.tune(cfg, tgs_dir, out, trials=2, log=lambda text: None)
    assert first.finished == 2
    lines: list[str] = []
    tuning.tune(cfg, tgs_dir, out, trials=3, log=lines.append)
    return out, lines


def test_a_stopped_search_continues_with_only_the_missing_trials(searched):
    out, lines = searched
    study = study_of(out)
    assert study.study_name == "tiny-search"
    assert [t.number for t in study.trials] == [0, 1, 2] and states(study) == ["COMPLETE"] * 3
    assert "2 of 3 trials finished" in lines[0]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-0", "trial-1", "trial-2"]


def test_each_trial_is_a_plain_run_with_its_values(searched):
    out, _ = searched
    for trial in study_of(out).trials:
        run = RunFolder(out / "trials" / f"trial-{trial.number}")
        cfg = run.read_config()
        assert cfg.optim.lr == pytest.approx(trial.params["optim.lr"])
        assert cfg.train.batch_size == trial.params["train.batch_size"]
        assert cfg.tune.space == {}  # a trial's config has no search in it
        assert trial.value == pytest.approx(min(row["val/loss"] for row in run.read_metrics()))


def test_best_yaml_is_a_ready_config_with_the_best_values(searched):
    out, _ = searched
    study = study_of(out)
    assert study.best_value == min(t.value for t in study.trials)
    cfg = load_config(out / "best.yaml")
    assert cfg.optim.lr == pytest.approx(study.best_params["optim.lr"])
    assert cfg.train.batch_size == study.best_params["train.batch_size"]
    assert cfg.model.base_width == 4 and cfg.tune.space == {}
    assert (out / "best.yaml").read_text().startswith(f"# Best trial {study.best_trial.number} ")
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(r["number"], r["state"], r["epochs"]) for r in rows] == [("0", "COMPLETE", "1"), ("1", "COMPLETE", "1"),
                                                                       ("2", "COMPLETE", "1")]
    assert set(rows[0]) >= {"value", "optim.lr", "train.batch_size", "run_dir", "worker"}


def test_report_writes_the_figures(searched, capsys):
    out, _ = searched
    code, stdout, err = run_cli(["tune", str(out), "--report"], capsys)
    assert code == 0, err
    for name in tuning.FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", (name, stdout)
    assert not list((out / "figures").glob(".*"))  # no temporaries left


def test_report_of_a_young_study_notes_what_it_cannot_draw(tmp_path):
    cfg = tune_config()
    study = tuning.open_tune_study(cfg, tuning.default_storage(tmp_path), "young")
    study.enqueue_trial({"optim.lr": 0.001, "train.batch_size": 4})
    study.optimize(lambda trial: sum(tuning.suggest(trial, cfg.tune.space).values()), n_trials=1)
    lines: list[str] = []
    files = tuning.tune_report(tmp_path, log=lines.append)
    assert "param_importances" not in files and (tmp_path / "figures" / "slice.png").is_file()
    assert any("param_importances.png not drawn: parameter importances need" in line for line in lines)


# ----------------------------------------------------------------------------- pruning


def test_a_pruned_trial_stops_early_and_is_recorded_pruned(tgs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "_pruner", lambda cfg: optuna.pruners.ThresholdPruner(upper=0.0))  # any loss > 0
    lines: list[str] = []
    result = tuning.tune(tune_config("train.epochs=3"), tgs_dir, tmp_path, trials=1, log=lines.append)
    assert result.finished == 1 and result.best_trial is None
    assert states(study_of(tmp_path)) == ["PRUNED"]
    assert len(RunFolder(tmp_path / "trials" / "trial-0").read_metrics()) == 1  # 1 of 3 planned epochs
    assert any("pruned by optuna at epoch 1" in line for line in lines)
    assert not (tmp_path / "best.yaml").exists()
    assert list(csv.DictReader((tmp_path / "trials.csv").open()))[0]["state"] == "PRUNED"


# ----------------------------------------------------------------------------- workers and the CLI


def test_two_workers_share_one_study(tgs_dir, tmp_path):
    config = tmp_path / "tiny-tune.yaml"
    config.write_text(tune_config("name=tiny-tune").to_yaml())
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unetlab", "tune", str(config), "--data", str(tgs_dir), "--out", str(out),
               "--trials", "3"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    logs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs
    study = study_of(out)
    assert study.study_name == "tiny-tune"
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len({t.number for t in study.trials}) == len(study.trials), logs
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.FAIL}  # FAIL: a surplus start only
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state == TrialState.FAIL)
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(f"trial-{t.number}" for t in complete)
    assert load_config(out / "best.yaml").tune.space == {}


def test_cli_errors_are_one_line(tgs_dir, tmp_path, capsys):
    base = ["tune", "tgs-salt", "--data", str(tgs_dir), "--out", str(tmp_path / "out")]
    code, _, err = run_cli([*base, "--set", "tune.space.optim.lrx={float: [0.1, 0.2]}"], capsys)
    assert_one_line_error(code, err, "tune.space.optim.lrx")
    code, _, err = run_cli([*base, "--set", "tune.space.optim.lr={float: [1, 0]}"], capsys)
    assert_one_line_error(code, err, "tune.space.optim.lr", "low < high")
    code, _, err = run_cli([*base, *(x for s in SPACE for x in ("--set", s)), "--storage", "nota://url"], capsys)
    assert_one_line_error(code, err, "--storage nota://url: cannot open")
    code, _, err = run_cli([*base, "--storage", "sqlite:///x.db"], capsys)
    assert_one_line_error(code, err, "tune.space is empty")
    code, _, err = run_cli(["tune", str(tmp_path), "--report"], capsys)
    assert_one_line_error(code, err, "no tune.db")


def test_a_study_refuses_another_config_once_a_trial_finished(tmp_path):
    url, cfg = tuning.default_storage(tmp_path), tune_config()
    tuning.open_tune_study(tune_config("optim.lr=0.5"), url, "s")  # nothing finished yet: the config may change
    study = tuning.open_tune_study(cfg, url, "s")
    study.optimize(lambda trial: sum(tuning.suggest(trial, cfg.tune.space).values()), n_trials=1)
    assert tuning.open_tune_study(tune_config("tune.trials=50"), url, "s").study_name == "s"
    with pytest.raises(ConfigError, match="made from another config"):
        tuning.open_tune_study(tune_config("optim.lr=0.5"), url, "s")


def test_a_diverging_trial_fails_and_the_search_goes_on(tgs_dir, tmp_path):
    """A learning rate that makes training diverge is a bad point of the space, not a crash of the search."""
    cfg = tiny_config("name=tiny-diverge", "train.epochs=1", "optim.name=adam",
                      "tune.space.optim.lr={float: [1.0e+5, 1.0e+6], log: true}")
    lines: list[str] = []
    with pytest.raises(UnetlabError, match="3 trials in a row never reached a finite val/loss"):
        tuning.tune(cfg, tgs_dir, tmp_path / "out", trials=4, log=lines.append)
    assert sum("training diverged" in line for line in lines) == 3
    assert states(study_of(tmp_path / "out")) == ["FAIL"] * 3
