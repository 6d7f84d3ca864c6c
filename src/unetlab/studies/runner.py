"""`run_study`: one worker of a study. Start as many as you like, on one machine or several (same study
folder, one `--storage` URL): each claims a cell, trains it, scores it and claims the next.

    run_study("q52-skips", "studies/q52-skips", data_root="data/tgs-salt")
    study_status("q52-skips", "studies/q52-skips")     # {"done": [...], "running": [...], "left": [...]}

How "never twice" and "resume" hold (the storage side is `coordination.py`'s):

* a cell is claimed through the storage's transactions, by one worker only;
* a cell whose run folder holds its evaluation (`evaluation/best-val.json`) is finished and never trained
  again: a worker that claims it (its first worker died before telling the storage) only records it;
* a claimed cell whose run folder has `checkpoints/last.pt` and the cell's own config resumes from it
  (`engine.trainer.resume`); otherwise the folder, which only ever holds what the study wrote, is
  cleared and the cell starts afresh;
* a grid (the spec's fingerprint) that changed after cells finished is refused, on disk and in the storage;
* an error or Ctrl-C in a cell fails its trial and queues the cell again at once (the next run resumes it).

The one case the storage cannot rule out: a live worker that misses its heartbeats for the whole grace
period (6 beats, 2 minutes by default) is judged dead and its cell handed to another worker; it notices
at its next beat and stops the cell at the next training step (normally before the new owner resumes it).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Callable

from optuna.trial import FrozenTrial, TrialState

from unetlab.config import Config
from unetlab.data.formats.registry import load_for_config
from unetlab.data.splits import save_split
from unetlab.engine.callbacks import Callback
from unetlab.engine.trainer import resume as resume_run
from unetlab.engine.trainer import split_indices
from unetlab.engine.trainer import train as train_run
from unetlab.errors import ConfigError, UnetlabError
from unetlab.evaluation import evaluate
from unetlab.run_folder import RunFolder
from unetlab.studies.coordination import (
    GRACE_BEATS, HEARTBEAT_S, CellQueue, Heartbeat, cell_of, cells_by_state, create_or_load, find_study,
    open_storage, other_grids, requeue_lost_cells, running_in_other_grids, study_name,
)
from unetlab.studies.folder import StudyFolder
from unetlab.studies.sharing import adopt_twin, find_twin
from unetlab.studies.spec import StudySpec, cell_identity, load_study
from unetlab.tasks import build_task

Log = Callable[[str], None]


class CellLost(UnetlabError):
    """This worker's claim on a cell expired (it missed its heartbeats) and another worker took the cell over."""


def default_study_dir(spec: StudySpec) -> Path:
    return Path("studies") / spec.name


# ----------------------------------------------------------------------------- checks before any work


def _grid_changed(spec: StudySpec, where: str, finished: int) -> UnetlabError:
    return UnetlabError(f"study {spec.name}: the grid changed after {finished} cell(s) finished ({where} holds "
                        "results of another version of this study file); results are never mixed: give the study "
                        "a new name or use another --out folder and storage")


def _finished_cells_match(spec: StudySpec, folder: StudyFolder) -> bool:
    """Whether every finished cell on disk is a cell of `spec` whose config.yaml (read with today's Config,
    so keys added to unetlab since get their defaults) is the spec's config of that cell now."""
    cells = {StudyFolder.label(*cell): cell for cell in spec.cells()}
    finished = folder.finished_cells()
    return all(label in cells and _same_config(folder.cell_run(*cells[label]), spec.cell_config(*cells[label]))
               for label in finished)


def check_grid(spec: StudySpec, folder: StudyFolder, fingerprint: str, storage: Any = None,
               folder_storage: bool = False) -> None:
    """Refuse a spec whose grid differs from the one cells already finished (or run) with. A fingerprint that
    changed only because unetlab gained config keys since (every finished cell's config still equals the
    spec's) is not a change: the cells are the same experiments. In a shared storage, an old grid counts as
    this folder's when it was created for this folder's path, or when the storage is the folder's own
    study.db (`folder_storage`)."""
    old = folder.read_fingerprint()
    finished = folder.finished_cells()
    # Read every finished cell's config only when a fingerprint differs; asked whether or not study.yaml was
    # already re-keyed, since the storage keeps the old grid's cells after it is.
    same_cells = functools.cache(lambda: bool(finished) and _finished_cells_match(spec, folder))
    if old is not None and old != fingerprint and finished and not same_cells():
        raise _grid_changed(spec, str(folder.path), len(finished))
    if storage is not None:
        for other, (complete, running, where) in other_grids(storage, spec.name, fingerprint).items():
            ours = (folder_storage or where == str(folder.path.resolve())) and same_cells()
            if running or (complete and not ours):
                raise _grid_changed(spec, f"the storage (grid {other}, {running} cell(s) running)", complete)


def ensure_split(spec: StudySpec, folder: StudyFolder, data_root: str | Path, common: Config) -> Path:
    """split.json: the one train/validation split of every cell, made once from the data with the base
    config's stratification and the study's split seed (deterministic: workers racing write the same bytes)."""
    if folder.split_path.is_file():
        return folder.split_path
    seed = spec.split_seed_for(common)
    dataset = load_for_config(common, data_root)
    task = build_task(common.task, dataset.class_names, common.eval.threshold, common.eval.min_area,
                      palette=dataset.palette, min_component=common.eval.min_component)
    strata = task.strata(dataset, common.data.coverage_bins)
    train_idx, val_idx = split_indices(common.model_copy(update={"seed": seed}), dataset, None, strata,
                                       task.strata_name)
    return save_split(folder.split_path, dataset.ids, train_idx, val_idx, seed=seed, stratified_by=task.strata_name,
                      coverage_bins=common.data.coverage_bins, val_fraction=common.data.val_fraction, study=spec.name)


# ----------------------------------------------------------------------------- one cell


class CellRecorder(Callback):
    """Records a cell's progress on its trial (run folder, epoch, the study metric per epoch) and stops the
    cell if this worker lost its claim."""

    def __init__(self, queue: CellQueue, trial: FrozenTrial, beat: Heartbeat, metric: str):
        self.queue, self.trial, self.beat, self.metric = queue, trial, beat, metric

    def on_fit_start(self, trainer: Any) -> None:
        self.queue.set_attr(self.trial, "run", str(trainer.run.path))
        self.queue.set_attr(self.trial, "epochs", trainer.cfg.train.epochs)

    def on_step_end(self, trainer: Any, step: int, loss: Any) -> None:
        if self.beat.lost:
            raise CellLost(f"{trainer.run.path}: this worker missed its heartbeats and another worker took the "
                           "cell over; stopping it here")

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        self.queue.set_attr(self.trial, "epoch", int(row["epoch"]))
        value = row.get(self.metric, math.nan)
        if math.isfinite(value):
            self.queue.storage.set_trial_intermediate_value(self.queue.trial_id(self.trial), int(row["epoch"]), value)


def _same_config(run: RunFolder, config: Config) -> bool:
    try:
        return cell_identity(run.read_config()) == cell_identity(config)
    except UnetlabError:
        return False


def run_cell(spec: StudySpec, folder: StudyFolder, variant: str, seed: int, data_root: str | Path,
             log: Log = print, callbacks: list[Callback] | None = None, share: bool = True) -> dict[str, Any]:
    """Train (or resume) and score one cell; its evaluation result. A finished cell is only read back; with
    `share`, an identical cell another study beside this one finished is copied in instead of trained."""
    config = spec.cell_config(variant, seed, data_root=data_root, split_file=folder.split_path.resolve())
    run = folder.cell_run(variant, seed)
    if folder.is_finished(variant, seed):
        if not _same_config(run, config):
            raise _grid_changed(spec, str(run.path), 1)
        log("finished earlier: not trained again")
        return folder.read_evaluation(variant, seed)
    twin = find_twin(folder, config, data_root) if share else None
    if twin is not None:
        origin = adopt_twin(folder, variant, seed, twin)
        log(f"shared: {origin['study']}'s {origin['cell']} is this experiment (same config, seed, data and split); "
            "copied, not trained again")
        return folder.read_evaluation(variant, seed)
    dataset = load_for_config(config, data_root)
    options = dict(progress=False, log=log, dataset=dataset, callbacks=callbacks or [])
    if run.has_checkpoint("last") and _same_config(run, config):
        log(f"resuming from {run.checkpoint_path('last')}")
        resume_run(run.path, data_root=data_root, **options)
    else:
        if run.path.exists():
            log(f"{run.path}: no usable last checkpoint; clearing the half-created cell and starting afresh")
            folder.clear_cell(variant, seed)
        train_run(config, data_root=data_root, run_dir=run.path, **options)
    return evaluate(run.path, data_root, split="val", which="best", dataset=dataset, log=log,
                    command=f"unetlab evaluate {run.path} --data {data_root} --split val")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _finish(queue: CellQueue, trial: FrozenTrial, result: dict[str, Any], key: str, log: Log) -> None:
    value = result.get("metrics", {}).get(key, math.nan)
    try:
        if isinstance(value, (int, float)) and math.isfinite(value):
            queue.study.tell(trial.number, float(value))
        else:
            queue.set_attr(trial, "error", f"{key} is not finite ({value})")
            queue.study.tell(trial.number, state=TrialState.FAIL)
    except Exception as exc:  # the trial was failed as stale meanwhile: its retry finds the finished folder
        log(f"could not record the result in the storage ({_one_line(exc)}); the cell's folder holds it")


def _run_claimed(queue: CellQueue, trial: FrozenTrial, spec: StudySpec, folder: StudyFolder,
                 data_root: str | Path, log: Log, heartbeat_s: float, share: bool) -> None:
    variant, seed = cell_of(trial)  # type: ignore[misc]
    label = StudyFolder.label(variant, seed)
    metric = spec.metric_for(spec.common_config().task)

    def cell_log(text: str) -> None:
        log(f"[{label}] {text}")

    cell_log(f"claimed (trial {trial.number})")
    try:
        queue.record_params(trial, list(spec.variants), list(spec.seeds))
        with queue.heartbeat(trial, heartbeat_s) as beat:
            result = run_cell(spec, folder, variant, seed, data_root, cell_log,
                              [CellRecorder(queue, trial, beat, metric)], share)
    except CellLost as exc:
        cell_log(str(exc))
        return
    except BaseException as exc:  # an error or an interrupt: free the cell at once, then stop this worker
        queue.release(trial, _one_line(exc), log)
        raise
    _finish(queue, trial, result, metric.split("/", 1)[-1], cell_log)
    cell_log(f"done: {metric} {result.get('metrics', {}).get(metric.split('/', 1)[-1], math.nan):.4f}")


# ----------------------------------------------------------------------------- the worker


def _all_done(queue: CellQueue, spec: StudySpec, folder: StudyFolder) -> bool:
    states = cells_by_state(queue.study)
    return all(states.get(cell) == TrialState.COMPLETE or folder.is_finished(*cell) for cell in spec.cells())


def _work(queue: CellQueue, spec: StudySpec, folder: StudyFolder, data_root: str | Path, log: Log,
          max_cells: int | None, heartbeat_s: float, share: bool) -> tuple[int, bool]:
    """Claim and run cells until none is left (waiting for cells other workers run: if one of them dies,
    its cell comes back here); returns how many cells this worker ran and whether its last one completed
    the study."""
    ran, said, completed = 0, False, False
    while max_cells is None or ran < max_cells:
        trial = queue.claim()
        if trial is None:
            running = [c for c, state in cells_by_state(queue.study).items() if state == TrialState.RUNNING]
            if not running:
                break
            if not said:
                log(f"no cell left to start; waiting for {len(running)} cell(s) running in other workers (a cell "
                    f"whose worker stops is taken over here after {GRACE_BEATS * heartbeat_s:g} s)")
                said = True
            time.sleep(heartbeat_s)
            continue
        said = False
        owner = queue.owner(trial)
        if owner is not None or cell_of(trial) not in set(spec.cells()):
            queue.set_attr(trial, "duplicate_of", owner.number if owner is not None else -1)
            queue.study.tell(trial.number, state=TrialState.PRUNED)
            continue
        recorded_only = folder.is_finished(*cell_of(trial))  # type: ignore[misc]
        _run_claimed(queue, trial, spec, folder, data_root, log, heartbeat_s, share)
        ran += 0 if recorded_only else 1  # max_cells counts cells this worker ran, not ones it only recorded
        completed = _all_done(queue, spec, folder)
    return ran, completed


def _prepare(spec: StudySpec, folder: StudyFolder, data_root: str | Path | None, storage: str | None,
             heartbeat_s: int) -> tuple[CellQueue, str | Path]:
    """Every check before anything trains, then the storage, study.yaml, split.json and the queue."""
    spec.validate_all()
    fingerprint = spec.fingerprint()
    common = spec.common_config(data_root)
    root = data_root if data_root is not None else common.data.root
    if root is None:
        raise ConfigError(f"study {spec.name}: no data folder; pass --data DIR (or set data.root in the base)")
    check_grid(spec, folder, fingerprint)
    folder.path.mkdir(parents=True, exist_ok=True)
    store = open_storage(storage or folder.default_storage(), heartbeat_s)
    check_grid(spec, folder, fingerprint, store, folder_storage=storage is None)
    folder.write_spec(spec, fingerprint)
    ensure_split(spec, folder, root, common)
    study = create_or_load(store, study_name(spec.name, fingerprint), spec.cells(),
                           {"fingerprint": fingerprint, "folder": str(folder.path.resolve())})
    finished = {cell for cell in spec.cells() if folder.is_finished(*cell)}
    requeue_lost_cells(study, spec.cells(), finished)
    return CellQueue(store, study), root


def run_study(spec: StudySpec | str | Path, study_dir: str | Path | None = None,
              data_root: str | Path | None = None, storage: str | None = None, log: Log = print,
              max_cells: int | None = None, heartbeat_s: int = HEARTBEAT_S, report: bool = True,
              share: bool = True) -> dict[str, list[str]]:
    """Run cells of `spec` (a StudySpec, a built-in name or a study file) until none is left or `max_cells`
    ran; returns `study_status`. The worker whose cell completes the study builds the report too. With
    `share`, a cell that another study beside this one already finished identically is copied, not trained
    (`studies/sharing.py`)."""
    spec = load_study(spec)
    folder = StudyFolder(study_dir if study_dir is not None else default_study_dir(spec))
    queue, root = _prepare(spec, folder, data_root, storage, heartbeat_s)
    log(f"study {spec.name}: {len(spec.cells())} cells ({len(spec.variants)} variants x {len(spec.seeds)} seeds, "
        f"matched on {spec.budget.matched}) in {folder.path}")
    ran, completed = _work(queue, spec, folder, root, log, max_cells, heartbeat_s, share)
    status = study_status(spec, folder.path, storage)
    log(f"this worker ran {ran} cell(s); done {len(status['done'])}, running {len(status['running'])}, "
        f"left {len(status['left'])}")
    if report and completed:
        try:
            log(f"report: {build_study_report(spec, folder.path)}")
        except Exception as exc:  # the cells are what matters; `--report` rebuilds it and shows the error
            log(f"report not built ({_one_line(exc)}); run `unetlab study {spec.name} --report` to retry")
    return status


def study_status(spec: StudySpec | str | Path, study_dir: str | Path | None = None, storage: str | None = None
                 ) -> dict[str, list[str]]:
    """Cells done (finished on disk or COMPLETE), running (claimed by a worker) and left, as `variant/seed-N`."""
    spec = load_study(spec)
    folder = StudyFolder(study_dir if study_dir is not None else default_study_dir(spec))
    fingerprint = spec.fingerprint()
    check_grid(spec, folder, fingerprint)
    states: dict[tuple[str, int], TrialState] = {}
    elsewhere: set[tuple[str, int]] = set()  # running under an older grid of this folder
    url = storage or (folder.default_storage() if folder.db_path.is_file() else None)
    if url is not None:
        opened = open_storage(url)
        study = find_study(opened, study_name(spec.name, fingerprint))
        states = cells_by_state(study) if study is not None else {}
        elsewhere = running_in_other_grids(opened, spec.name, fingerprint, str(folder.path.resolve()))
    status: dict[str, list[str]] = {"done": [], "running": [], "left": []}
    for cell in spec.cells():
        state = states.get(cell)
        key = ("done" if folder.is_finished(*cell) or state == TrialState.COMPLETE
               else "running" if state == TrialState.RUNNING or cell in elsewhere else "left")
        status[key].append(StudyFolder.label(*cell))
    return status


def build_study_report(spec: StudySpec | str | Path, study_dir: str | Path | None = None) -> Path:
    """The report of the finished cells (`studies/report.py`, imported only when asked for)."""
    spec = load_study(spec)
    folder = StudyFolder(study_dir if study_dir is not None else default_study_dir(spec))
    if not folder.finished_cells():
        raise UnetlabError(f"{folder.path}: no finished cell yet; run `unetlab study {spec.name}` first")
    try:
        from unetlab.studies.report import build_report
    except ImportError as exc:
        raise UnetlabError(f"the study report is not available in this unetlab ({exc})") from None
    result = build_report(spec, folder.path)
    return Path(result) if isinstance(result, (str, Path)) else folder.report_dir
