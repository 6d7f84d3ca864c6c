"""`studies/coordination.py`: claims are atomic across processes (SQLite and PostgreSQL), a cell enqueued twice
runs once, a cell without a live trial is queued again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from unetlab.errors import UnetlabError
from unetlab.studies.coordination import CellQueue, cells_by_state, create_or_load, open_storage, requeue_lost_cells

CELLS = [("a", 0), ("b", 0), ("a", 1), ("b", 1)]

# Each process claims trials as fast as it can until none waits, then prints the numbers it got.
CLAIMER = textwrap.dedent("""
    import sys, time
    import optuna
    from unetlab.studies.coordination import CellQueue, open_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(sys.argv[1])
    study = optuna.load_study(study_name="race", storage=storage)
    queue = CellQueue(storage, study)
    while time.time() < float(sys.argv[2]):
        time.sleep(0.002)
    got = []
    while (trial := queue.claim()) is not None:
        got.append(trial.number)
    print(" ".join(map(str, got)))
""")


def _race(url: str, trials: int = 60) -> tuple[set[int], set[int]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cells = [(f"v{k}", 0) for k in range(trials)]
    create_or_load(open_storage(url), "race", cells, {})
    start = str(time.time() + 6)  # both interpreters are up by then: they claim at the same moment
    workers = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, start], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers)
    first, second = ({int(n) for n in out.split()} for out in outputs)
    return first, second


def test_two_processes_never_claim_the_same_trial_sqlite(tmp_path):
    first, second = _race(f"sqlite:///{tmp_path / 'race.db'}")
    assert not first & second  # plain pysqlite transactions let both processes claim ~1 in 8 (BEGIN IMMEDIATE fixes it)
    assert first | second == set(range(60))


def test_two_processes_never_claim_the_same_trial_postgres(postgres_url):
    storage = open_storage(postgres_url)
    if "race" in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        optuna.delete_study(study_name="race", storage=storage)
    first, second = _race(postgres_url)
    assert not first & second and first | second == set(range(60))


def test_a_cell_queued_twice_runs_once_and_lost_cells_come_back(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(f"sqlite:///{tmp_path / 'q.db'}", heartbeat_s=1)
    study = create_or_load(storage, "t@x", CELLS, {"fingerprint": "x"})
    assert study.user_attrs["queued"] and len(study.get_trials(states=(TrialState.WAITING,))) == 4
    assert requeue_lost_cells(study, CELLS, finished=set()) == []
    study.enqueue_trial({"variant": "a", "seed": 0}, user_attrs={"variant": "a", "seed": 0})  # a racing repair
    queue = CellQueue(storage, study)
    claimed = [queue.claim() for _ in range(5)]
    assert [t.number for t in claimed] == [0, 1, 2, 3, 4] and queue.claim() is None
    assert queue.owner(claimed[0]) is None and queue.owner(claimed[4]).number == 0  # the later claim gives way
    study.tell(0, 0.5)
    assert queue.owner(claimed[4]).number == 0
    queue.release(claimed[1], "RuntimeError: boom", print)  # an error: failed, and queued again at once
    states = cells_by_state(study)
    assert states[("a", 0)] == TrialState.COMPLETE and states[("b", 0)] == TrialState.WAITING
    assert study.get_trials()[1].user_attrs["error"] == "RuntimeError: boom"
    study.tell(2, state=TrialState.FAIL)  # a worker died between failing a cell and queueing it again
    assert requeue_lost_cells(study, CELLS, finished={("b", 1)}) == [("a", 1)]


def test_a_bad_storage_url_is_one_line():

    with pytest.raises(UnetlabError, match=r"--storage nosuchdb://x: cannot open it"):
        open_storage("nosuchdb://x")


def test_a_storage_another_worker_is_creating_is_opened_on_a_second_try(tmp_path, monkeypatch):
    """Two workers starting at once both create a new SQLite database's tables; the loser sees a UNIQUE
    violation (alembic_version) and must simply open what the winner created."""
    from unetlab.studies import coordination

    real, calls = coordination._rdb_storage, []

    def racing(url, heartbeat_s):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num")
        return real(url, heartbeat_s)

    monkeypatch.setattr(coordination, "_rdb_storage", racing)
    storage = coordination.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2 and storage is not None
    calls.clear()
    monkeypatch.setattr(coordination, "_rdb_storage", lambda url, beat: (_ for _ in ()).throw(ValueError("bad URL")))
    with pytest.raises(UnetlabError, match="cannot open it"):
        coordination.open_storage("nonsense://")
