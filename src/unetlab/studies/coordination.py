"""Who runs which cell: an Optuna storage (SQLite by default, any SQLAlchemy URL such as PostgreSQL) is
the study's shared queue. No lock files and no home-made locking: only the database's transactions.

* The Optuna study is named `<study name>@<fingerprint>`. `create_study` (no `load_if_exists`) succeeds
  in exactly one process: that worker enqueues one WAITING trial per cell (user attributes `variant`
  and `seed`) and then marks the study `queued`; the others load it and wait for that mark.
* A worker claims a cell by moving the oldest WAITING trial to RUNNING with
  `storage.set_trial_state_values`, which succeeds for one process only: the row is read with
  `SELECT ... FOR UPDATE` (PostgreSQL, MySQL) or, for SQLite, inside a `BEGIN IMMEDIATE`
  transaction that this module switches on (pysqlite's default begins transactions lazily, after
  the read, and two processes can then both claim the same trial: measured, 26 of 200).
* While a cell runs, a thread records the trial's heartbeat. A worker killed mid-cell stops beating;
  after the grace period any worker's `fail_stale_trials` fails that trial (again one process wins)
  and `RetryHeartbeatStaleTrialCallback` enqueues a WAITING copy (same `variant` and `seed`), which
  the next free worker claims and resumes from the cell's last checkpoint.
* A cell never has two live claims: after claiming trial T of a cell, a worker gives T up (PRUNED)
  if the cell already has a COMPLETE trial or a RUNNING one with a smaller number (claims of one
  cell happen in trial-number order, oldest WAITING first), so a cell enqueued twice (a repair
  racing another, see `requeue_lost_cells`) still runs once.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from unetlab.errors import UnetlabError

#: Seconds between heartbeats, and how many may be missed before a cell is taken over.
HEARTBEAT_S = 20
GRACE_BEATS = 6
_QUEUED = "queued"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna flags heartbeats and stale-trial handling as experimental: say nothing about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _retry_callback() -> tuple[str, Any]:
    """Optuna >= 4.9 renamed RetryFailedTrialCallback / failed_trial_callback; support both."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    parameters = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    name = "heartbeat_stale_trial_callback"
    if name not in parameters:
        name = "failed_trial_callback"
    return name, cls(max_retry=None)


def _serialise_sqlite(engine: Any) -> None:
    """Every SQLite transaction takes the write lock when it begins (`BEGIN IMMEDIATE`), so a read-then-update
    such as claiming a trial is atomic across processes (SQLAlchemy's documented pysqlite recipe)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are closed; new ones get them


def _rdb_storage(url: str, heartbeat_s: int, attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage(url), tried again when workers starting together race to create the tables of a new database
    (the loser sees "table ... already exists"; on its next try the tables are there)."""
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with _quiet():
                callback_name, callback = _retry_callback()
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                                  grace_period=GRACE_BEATS * heartbeat_s,
                                                  **{callback_name: callback})
        except Exception as exc:
            racing = "already exists" in str(exc) or "duplicate" in str(exc).lower()
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S) -> optuna.storages.RDBStorage:
    """The RDB storage at `url` with heartbeats every `heartbeat_s` seconds and stale-trial retries."""
    try:
        storage = _created_once(url, heartbeat_s)
    except ImportError as exc:
        raise UnetlabError(f"--storage {url}: no database driver for it ({exc}); for PostgreSQL install "
                           "unetlab[postgres] (psycopg) and use postgresql+psycopg://...") from None
    except Exception as exc:  # SQLAlchemy's errors: a bad URL, a server that does not answer
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UnetlabError(f"--storage {url}: cannot open it ({type(exc).__name__}: {first})") from None
    if url.startswith("sqlite"):
        _serialise_sqlite(storage.engine)
    return storage


def _created_once(url: str, heartbeat_s: int, tries: int = 5) -> optuna.storages.RDBStorage:
    """`_rdb_storage`, tried again when another worker was creating the same new database's tables at that
    moment (SQLAlchemy then reports a UNIQUE or "already exists" violation; the second try finds them)."""
    for attempt in range(tries):
        try:
            return _rdb_storage(url, heartbeat_s)
        except Exception as exc:
            racing = "UNIQUE constraint" in str(exc) or "already exists" in str(exc) or "IntegrityError" in repr(exc)
            if not racing or attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def cell_of(trial: FrozenTrial) -> tuple[str, int] | None:
    """(variant, seed) of a study trial; None for a trial the study did not enqueue."""
    attrs = trial.user_attrs
    return (str(attrs["variant"]), int(attrs["seed"])) if "variant" in attrs and "seed" in attrs else None


def study_name(name: str, fingerprint: str) -> str:
    return f"{name}@{fingerprint}"


def other_grids(storage: optuna.storages.RDBStorage, name: str, fingerprint: str
                ) -> dict[str, tuple[int, int, str | None]]:
    """Fingerprint -> (COMPLETE trials, RUNNING trials with a live heartbeat, its study folder) of every
    other grid of study `name` in the storage."""
    found = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        stored, _, other = summary.study_name.rpartition("@")
        if stored == name and other != fingerprint:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            with _quiet():
                optuna.storages.fail_stale_trials(study)
            counts = [len(study.get_trials(deepcopy=False, states=(state,)))
                      for state in (TrialState.COMPLETE, TrialState.RUNNING)]
            found[other] = (counts[0], counts[1], study.user_attrs.get("folder"))
    return found


def running_in_other_grids(storage: optuna.storages.RDBStorage, name: str, fingerprint: str,
                           folder: str) -> set[tuple[str, int]]:
    """Cells of study `name` that a worker of another grid of the same study folder is running (a live
    heartbeat): a worker started before unetlab gained config keys still runs under its old fingerprint."""
    running: set[tuple[str, int]] = set()
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        stored, _, other = summary.study_name.rpartition("@")
        if stored != name or other == fingerprint:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if study.user_attrs.get("folder") not in (None, folder):
            continue
        with _quiet():
            optuna.storages.fail_stale_trials(study)
        running |= {cell for cell, state in cells_by_state(study).items() if state == TrialState.RUNNING}
    return running


def find_study(storage: optuna.storages.RDBStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def create_or_load(storage: optuna.storages.RDBStorage, name: str, cells: list[tuple[str, int]],
                   attrs: dict[str, Any], wait_s: float = 60.0) -> optuna.Study:
    """The Optuna study `name`: created and filled with one WAITING trial per cell by exactly one worker,
    loaded by the others once it is filled (or repaired by them if its creator died half-way)."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        deadline = time.monotonic() + wait_s
        while not study.user_attrs.get(_QUEUED) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not study.user_attrs.get(_QUEUED):
            requeue_lost_cells(study, cells, finished=set())
        return study
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for variant, seed in cells:
        study.enqueue_trial({"variant": variant, "seed": seed}, user_attrs={"variant": variant, "seed": seed})
    study.set_user_attr(_QUEUED, True)
    return study


def requeue_lost_cells(study: optuna.Study, cells: Iterable[tuple[str, int]], finished: set[tuple[str, int]]
                       ) -> list[tuple[str, int]]:
    """Enqueue every cell that is neither finished on disk nor WAITING, RUNNING or COMPLETE in the storage
    (a worker died between failing a cell and enqueueing it again). Two workers repairing at once may
    enqueue a cell twice: the claim rule runs it once all the same."""
    active = {cell_of(t) for t in study.get_trials(deepcopy=False) if t.state in
              (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)}
    lost = [cell for cell in cells if cell not in active and cell not in finished]
    for variant, seed in lost:
        study.enqueue_trial({"variant": variant, "seed": seed}, user_attrs={"variant": variant, "seed": seed})
    return lost


class CellQueue:
    """The claimed-trial operations of one worker on one Optuna study (storage kept beside it)."""

    def __init__(self, storage: optuna.storages.RDBStorage, study: optuna.Study):
        self.storage, self.study = storage, study
        self.study_id = storage.get_study_id_from_name(study.study_name)

    def trial_id(self, trial: FrozenTrial) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)

    def fail_stale(self) -> None:
        """Fail trials whose worker stopped beating; the retry callback enqueues each one again."""
        with _quiet():
            optuna.storages.fail_stale_trials(self.study)

    def claim(self) -> FrozenTrial | None:
        """Claim the oldest WAITING trial (this process only), or None when nothing waits."""
        self.fail_stale()
        for trial in sorted(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                            key=lambda t: t.number):
            trial_id = self.trial_id(trial)
            # Beat before claiming: a worker killed right after the claim still leaves a trial that goes stale.
            self.storage.record_heartbeat(trial_id)
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return self.storage.get_trial(trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def owner(self, trial: FrozenTrial) -> FrozenTrial | None:
        """The trial that already owns `trial`'s cell (COMPLETE, or RUNNING with a smaller number), if any."""
        cell = cell_of(trial)
        for other in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if other.number != trial.number and cell_of(other) == cell and (
                    other.state == TrialState.COMPLETE or other.number < trial.number):
                return other
        return None

    def record_params(self, trial: FrozenTrial, variants: list[str], seeds: list[int]) -> None:
        """Record the cell as the trial's parameters too (optuna-dashboard, `trials_dataframe`); a retried
        trial already has them."""
        if "variant" not in trial.params:
            live = optuna.trial.Trial(self.study, self.trial_id(trial))
            live.suggest_categorical("variant", variants)  # the enqueued (fixed) values
            live.suggest_categorical("seed", seeds)

    def set_attr(self, trial: FrozenTrial, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(trial), key, value)

    def heartbeat(self, trial: FrozenTrial, interval: float) -> "Heartbeat":
        return Heartbeat(self.storage, self.trial_id(trial), interval, trial.number)

    def release(self, trial: FrozenTrial, error: str, log: Callable[[str], None]) -> None:
        """A cell stopped by an error or an interrupt: fail its trial and enqueue the cell again at once, so
        the next run resumes it from its last checkpoint without waiting for the grace period."""
        variant, seed = cell_of(trial)  # type: ignore[misc]
        try:
            self.set_attr(trial, "error", error)
            self.study.tell(trial.number, state=TrialState.FAIL)
            self.study.enqueue_trial({"variant": variant, "seed": seed}, user_attrs={"variant": variant, "seed": seed})
        except Exception as exc:  # the storage is gone too: the grace period frees the cell instead
            log(f"could not release cell {variant}/seed-{seed} in the storage ({type(exc).__name__}); another "
                "worker takes it over once its heartbeat is stale")


def cells_by_state(study: optuna.Study) -> dict[tuple[str, int], TrialState]:
    """The state that counts for each cell: COMPLETE over RUNNING over WAITING over anything else."""
    rank = {TrialState.COMPLETE: 3, TrialState.RUNNING: 2, TrialState.WAITING: 1}
    states: dict[tuple[str, int], TrialState] = {}
    for trial in study.get_trials(deepcopy=False):
        cell = cell_of(trial)
        if cell is not None and (cell not in states or rank.get(trial.state, 0) > rank.get(states[cell], 0)):
            states[cell] = trial.state
    return states


class Heartbeat:
    """Records a claimed trial's heartbeat every `interval` seconds in a thread; `lost` turns true when the
    trial is no longer RUNNING (another worker judged this one dead and took the cell over)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float, number: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-trial-{number}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
                    self.lost = True
                    return
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a database hiccup: try again at the next beat
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
