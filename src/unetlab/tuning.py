"""Hyper-parameter search with Optuna: `unetlab tune CONFIG` (docs/tuning.md).

    result = tune(load_config("my-tune.yaml"), "data/tgs-salt", "tune/my-tune")
    tune_report("tune/my-tune")          # figures/*.png, best.yaml, trials.csv

The config's `tune:` section (config.TuneConfig) gives the search space, the metric and its
direction, the number of trials, the sampler and the pruner. Each trial is a normal run folder,
`<out>/trials/trial-<number>/`, trained from the config with the trial's values set (and without
the tune section). A callback reports the metric of every epoch to Optuna; when the pruner says so
the Trainer stops before the next epoch and the trial is recorded PRUNED. A trial's value is the
best value of the metric over its epochs.

The study lives in a storage: `<out>/tune.db` (SQLite) by default, or any SQLAlchemy URL. Workers
(processes, machines) that run `tune` on the same storage and study name share the study: each
asks for the next trial, trial numbers come from the storage, and together they stop at
`tune.trials` finished (complete or pruned) trials. A stopped search (Ctrl-C, a kill) keeps its
finished trials; running it again continues up to `tune.trials`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import optuna
from optuna.trial import TrialState

from unetlab.config import Config, TuneConfig, config_from_dict
from unetlab.data.formats.registry import load_for_config
from unetlab.engine.callbacks import Callback, TrainingDiverged
from unetlab.engine.trainer import train as _train
from unetlab.errors import ConfigError, UnetlabError
from unetlab.files import atomic_path, atomic_write_text
from unetlab.run_folder import RunFolder

STORAGE_FILE = "tune.db"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"
FIGURES = ("optimization_history", "param_importances", "slice")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILED_IN_A_ROW = 3  # trials of one worker whose metric was never finite: then it stops
_CONFIG_ATTR = "unetlab_config"  # the study's base config (user attribute), so a report needs only the storage


@dataclass
class TuneResult:
    study_name: str
    storage: str  # password hidden
    finished: int  # complete + pruned trials of the whole study
    best_trial: Optional[int] = None
    best_value: Optional[float] = None
    best_params: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # best.yaml, trials.csv


# ----------------------------------------------------------------------------- storage and study


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{(Path(out_dir) / STORAGE_FILE).resolve()}"


def _shown(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna storage on a SQLAlchemy URL; SQLite waits for other workers' writes instead of failing.

    Heartbeats let a later worker mark the trials of a killed one FAIL (they are then run again)."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):  # workers starting together may race to create the tables
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=30, grace_period=120)
        except Exception as exc:  # a bad URL, a missing driver, a server that does not answer
            racing = any(text in str(exc).lower() for text in ("already exists", "locked", "unique constraint",
                                                                   "duplicate key"))
            if attempt == 4 or not racing:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UnetlabError(f"--storage {_shown(url)}: cannot open ({first}); give sqlite:///path/tune.db "
                                   "or a SQLAlchemy URL such as postgresql+psycopg://user@host/db") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class _TrialSeeded(optuna.samplers.BaseSampler):
    """The configured sampler, seeded with seed + trial number: reproducible with one worker, and two
    workers never draw the same random start-up values."""

    def __init__(self, tune: TuneConfig, seed: int):
        self.tune, self.seed, self._current = tune, seed, (-1, None)

    def _for(self, trial: Any) -> optuna.samplers.BaseSampler:
        if self._current[0] != trial.number:
            seed = self.seed + trial.number
            sampler = (optuna.samplers.RandomSampler(seed=seed) if self.tune.sampler == "random" else
                       optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.tune.startup_trials))
            self._current = (trial.number, sampler)
        return self._current[1]  # type: ignore[return-value]

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):  # type: ignore[no-untyped-def]
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        self._for(trial).after_trial(study, trial, state, values)


def _pruner(cfg: Config) -> optuna.pruners.BasePruner:
    tune = cfg.tune
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.train.epochs)
    return optuna.pruners.NopPruner()


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    tune = {k: v for k, v in config.get("tune", {}).items() if k != "trials"}
    return {**{k: v for k, v in config.items() if k != "data"}, "tune": tune,
            "data": {k: v for k, v in config.get("data", {}).items() if k != "root"}}


def _count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def open_tune_study(cfg: Config, storage: str, study_name: str) -> optuna.Study:
    """Create the study, or join it when it exists (it must have been made from the same config)."""
    _, direction = cfg.tune.objective(cfg.train)
    study = optuna.create_study(storage=open_storage(storage), study_name=study_name, direction=direction,
                                sampler=_TrialSeeded(cfg.tune, cfg.seed), pruner=_pruner(cfg), load_if_exists=True)
    stored = study.user_attrs.get(_CONFIG_ATTR)
    if stored is None or not _count(study, FINISHED):  # until a trial finished, the config may still be fixed
        study.set_user_attr(_CONFIG_ATTR, cfg.to_dict())
    elif _comparable(stored) != _comparable(cfg.to_dict()):
        raise ConfigError(f"study {study_name!r} in {_shown(storage)} was made from another config (only "
                          "tune.trials and data.root may change); use another --study-name or --out")
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {study_name!r} is a {study.direction.name.lower()} study, the config asks "
                          f"to {direction}; use another --study-name or --out")
    return study


def load_tune_study(storage: str, study_name: Optional[str] = None) -> optuna.Study:
    """An existing study; without a name, the only study of the storage."""
    opened = open_storage(storage)
    names = optuna.get_all_study_names(opened)
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name not in names:
        listed = ", ".join(names) or "none"
        raise UnetlabError(f"{_shown(storage)}: no study {study_name or '(name not given)'!r}; studies: {listed}")
    return optuna.load_study(study_name=study_name, storage=opened)


# ----------------------------------------------------------------------------- one trial


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's value of every key of the space (the Optuna parameter is named by the config key)."""
    params = {}
    for key, spec in space.items():
        if "choice" in spec:
            params[key] = trial.suggest_categorical(key, spec["choice"])
        elif "int" in spec:
            low, high = spec["int"]
            params[key] = trial.suggest_int(key, low, high, step=spec.get("step") or 1, log=spec.get("log", False))
        else:
            low, high = spec["float"]
            params[key] = trial.suggest_float(key, low, high, step=spec.get("step"), log=spec.get("log", False))
    return params


class PruningCallback(Callback):
    """Reports the metric of each epoch to the trial; when the pruner says so (before the last planned
    epoch), the Trainer stops before the next epoch and the objective raises optuna.TrialPruned."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_at: Optional[int] = None

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        if self.metric not in row:
            known = ", ".join(k for k in row if k.startswith(("val/", "train/")))
            raise ConfigError(f"tune.metric {self.metric!r} is not a metric of this run; it logs {known}")
        epoch, value = int(row["epoch"]), float(row[self.metric])
        if math.isfinite(value):
            self.trial.report(value, epoch)
        # A trial that has run all its epochs keeps its value: pruning it then would only lose it.
        if epoch < trainer.cfg.train.epochs and self.trial.should_prune():
            self.pruned_at = epoch

    def should_stop(self, trainer: Any) -> str | None:
        return None if self.pruned_at is None else f"pruned by optuna at epoch {self.pruned_at}"


class _Surplus(Exception):
    """Workers that start a trial at the same moment can overshoot tune.trials: the later one steps back."""


def _best_of(history: list[dict[str, float]], metric: str, direction: str) -> float:
    values = [float(row[metric]) for row in history if metric in row and math.isfinite(float(row[metric]))]
    if not values:
        return math.nan  # Optuna records the trial FAIL; the search goes on
    return max(values) if direction == "maximize" else min(values)


class _Objective:
    """Trains one trial in `<out>/trials/trial-<number>/`; its value is the best metric over the epochs."""

    def __init__(self, cfg: Config, data_root: str, out_dir: Path, target: int, log: Callable[[str], None]):
        self.cfg, self.data_root, self.out_dir, self.target, self.log = cfg, data_root, out_dir, target, log
        self.metric, self.direction = cfg.tune.objective(cfg.train)
        self.surplus, self.failed_in_a_row = False, 0

    def __call__(self, trial: optuna.Trial) -> float:
        ahead = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(1 for t in ahead if t.number < trial.number) >= self.target:
            self.surplus = True
            trial.set_user_attr("surplus", True)
            raise _Surplus()
        params = suggest(trial, self.cfg.tune.space)
        cfg = self.cfg.tune.apply(self.cfg, params, source=f"trial {trial.number}")
        run_dir = self.out_dir / "trials" / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self.log(f"trial {trial.number}: " + ", ".join(f"{k}={_text(v)}" for k, v in params.items()))
        pruning = PruningCallback(trial, self.metric)
        prefix = f"  trial {trial.number} | "
        try:
            result = _train(cfg, data_root=self.data_root, run_dir=run_dir, progress=False,
                            log=lambda text: self.log(prefix + text), callbacks=[pruning])
        except TrainingDiverged as exc:  # a point of the space, not a fault: score the epochs before it
            self.log(f"trial {trial.number}: {exc}")
            history = RunFolder(run_dir).read_metrics() if (run_dir / RunFolder.METRICS).is_file() else []
            trial.set_user_attr("diverged", True)
        else:
            history = result.history
            trial.set_user_attr("epochs", result.epochs_run)
        if pruning.pruned_at is not None:
            self.log(f"trial {trial.number}: pruned at epoch {pruning.pruned_at}")
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
        value = _best_of(history, self.metric, self.direction)
        self.failed_in_a_row = 0 if math.isfinite(value) else self.failed_in_a_row + 1
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise UnetlabError(f"{self.failed_in_a_row} trials in a row never reached a finite {self.metric}; "
                               "narrow tune.space (a learning rate too high?) and run again")
        self.log(f"trial {trial.number}: {self.metric} = {_text(value)}" if math.isfinite(value) else
                 f"trial {trial.number}: failed, {self.metric} was never finite (NaN); the search goes on")
        return value


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- the search


def tune(config: Config, data_root: str | Path | None, out_dir: str | Path, storage: Optional[str] = None,
         study_name: Optional[str] = None, trials: Optional[int] = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Run (or join, or continue) the study of `config.tune` until it holds `trials` finished trials;
    then write `<out_dir>/best.yaml` and `<out_dir>/trials.csv`."""
    root = data_root if data_root is not None else config.data.root
    if root is None:
        raise ConfigError("data.root: no data folder given; pass --data DIR or set data.root in the config")
    if not config.tune.space:
        raise ConfigError("tune.space is empty: nothing to search; add a tune: section (docs/tuning.md)")
    load_for_config(config, root)  # a data problem is one error now, not a failed first trial (and warms the cache)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url, name = storage or default_storage(out), study_name or config.name
    target = trials if trials is not None else config.tune.trials
    with _quiet_optuna():
        study = open_tune_study(config, url, name)
        log(f"study {name!r} in {_shown(url)}: {_count(study, FINISHED)} of {target} trials finished")
        objective = _Objective(config, str(root), out, target, log)
        try:
            while not objective.surplus and _open_slots(study, target, log):
                study.optimize(objective, n_trials=1, catch=(_Surplus,), gc_after_trial=True)
        finally:
            files = write_results(study, out, log=log)
    return _result(study, url, files)


def _open_slots(study: optuna.Study, target: int, log: Callable[[str], None]) -> bool:
    """Whether another trial is needed: finished plus running trials (of any worker) below `target`."""
    optuna.storages.fail_stale_trials(study)  # trials of a killed worker (no heartbeat for 2 min) become FAIL
    finished, running = _count(study, FINISHED), _count(study, (TrialState.RUNNING,))
    if finished < target <= finished + running:
        log(f"{finished} of {target} trials finished and {running} running elsewhere: this worker stops "
            "(a killed worker's trial counts as running until its heartbeat is 2 minutes old)")
    return finished + running < target


def _result(study: optuna.Study, url: str, files: dict[str, Path]) -> TuneResult:
    result = TuneResult(study.study_name, _shown(url), _count(study, FINISHED), files=files)
    if _count(study, (TrialState.COMPLETE,)):
        best = study.best_trial
        result.best_trial, result.best_value, result.best_params = best.number, best.value, dict(best.params)
    return result


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's own INFO lines and warnings off (tune logs its own lines); restored afterwards."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


# ----------------------------------------------------------------------------- results and report


def study_config(study: optuna.Study) -> Config:
    """The base config the study was made from (stored in the study by `tune`)."""
    stored = study.user_attrs.get(_CONFIG_ATTR)
    if stored is None:
        raise UnetlabError(f"study {study.study_name!r} was not made by `unetlab tune` (it stores no config)")
    return config_from_dict(stored, source=f"study {study.study_name}")


def write_results(study: optuna.Study, out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """`trials.csv` (every trial that ran) and, once a trial completed, `best.yaml`: the study's config with the
    best trial's values, ready for `unetlab train --config best.yaml`."""
    files = {"trials": atomic_write_text(out_dir / TRIALS_FILE, trials_csv(study))}
    if not _count(study, (TrialState.COMPLETE,)):
        log(f"no complete trial yet: {BEST_FILE} not written")
        return files
    best, base = study.best_trial, study_config(study)
    metric, _ = base.tune.objective(base.train)
    cfg = base.tune.apply(base, best.params, source=f"best trial {best.number}")
    header = (f"# Best trial {best.number} of study '{study.study_name}': {metric} = {best.value:.6g} "
              f"({_count(study, FINISHED)} trials finished).\n"
              f"# unetlab train --config {BEST_FILE} --data DIR\n")
    files["best"] = atomic_write_text(out_dir / BEST_FILE, header + cfg.to_yaml())
    log(f"best trial {best.number}: {metric} = {_text(best.value)}; wrote {files['best']}")
    return files


def trials_csv(study: optuna.Study) -> str:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    keys = list(dict.fromkeys(key for t in trials for key in t.params))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "epochs", "duration_s", *keys, "run_dir", "worker"])
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value, t.user_attrs.get("epochs", ""),
                         duration, *(t.params.get(key, "") for key in keys), t.user_attrs.get("run_dir", ""),
                         t.user_attrs.get("worker", "")])
    return buffer.getvalue()


def tune_report(out_dir: str | Path, storage: Optional[str] = None, study_name: Optional[str] = None,
                log: Callable[[str], None] = print) -> dict[str, Path]:
    """best.yaml, trials.csv and figures/{optimization_history,param_importances,slice}.png of a study
    (`<out_dir>/tune.db` unless `storage` is given; the only study there unless `study_name` is)."""
    out = Path(out_dir)
    if storage is None and not (out / STORAGE_FILE).is_file():
        raise UnetlabError(f"{out}: no {STORAGE_FILE} here; run `unetlab tune` first, or pass --storage URL")
    with _quiet_optuna():
        study = load_tune_study(storage or default_storage(out), study_name)
        files = write_results(study, out, log=log)
        base = study_config(study)
        files.update(draw_figures(study, out / "figures", metric=base.tune.objective(base.train)[0], log=log))
    return files


def _importance_note(study: optuna.Study) -> str | None:
    values = {t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if len(values) < 2:
        return "parameter importances need at least 2 complete trials with different values"
    return None


def draw_figures(study: optuna.Study, folder: Path, metric: str = "Objective Value",
                 log: Callable[[str], None] = print) -> dict[str, Path]:
    """The PNGs of optuna.visualization.matplotlib; a figure that cannot be drawn yet is a note in the log."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    drawers = {"optimization_history": plots.plot_optimization_history,
               "param_importances": plots.plot_param_importances, "slice": plots.plot_slice}
    written = {}
    for name, draw in drawers.items():
        note = "no complete trial yet" if not _count(study, (TrialState.COMPLETE,)) else (
            _importance_note(study) if name == "param_importances" else None)
        if note is None:
            try:
                # Optuna switches the global style to ggplot: keep that inside; matplotlib's notes on flat axes off.
                with matplotlib.rc_context(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    written[name] = _save(draw(study, target_name=metric), folder / f"{name}.png")
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                note = f"optuna could not draw it ({exc})"
        if note is not None:
            log(f"{name}.png not drawn: {note}")
    if written:
        log(f"wrote {', '.join(str(p) for p in written.values())}")
    return written


def _save(axes: Any, path: Path) -> Path:
    import numpy as np
    from matplotlib import pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = np.asarray(axes, dtype=object).flat[0].figure
    FigureCanvasAgg(figure)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
