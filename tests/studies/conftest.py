"""Fixtures of the study tests (their helpers are in study_fixtures.py).

* `postgres_url` (session) runs `initdb` into a temporary folder and starts `postgres` on a free port
  (TCP on 127.0.0.1, its unix socket in the same folder) as the `postgres` user when the tests run as
  root (initdb refuses root), creates a database and yields `postgresql+psycopg://...`; the server
  is stopped and its folder removed afterwards. Without PostgreSQL the test is skipped, unless the
  environment variable CI is set: then it fails (`.ci/run` installs the Debian package).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# ----------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The folder of initdb / pg_ctl: Debian's /usr/lib/postgresql/<version>/bin (newest), else PATH."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in
                         Path(p).parent.name.split(".") if x.isdigit()], reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], as_postgres: bool) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    done = subprocess.run(prefix + command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = postgres_bin()
    if bindir is None:
        reason = ("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH); "
                  "`.ci/run` installs it with apt-get install postgresql")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    as_postgres = os.geteuid() == 0  # initdb refuses root: run the server as the Debian package's user
    root = Path(tempfile.mkdtemp(prefix="unetlab-postgres-"))  # /tmp/x, not pytest's 0700 tree: postgres must enter it
    data, sockets, port = root / "data", root / "sockets", _free_port()
    sockets.mkdir()
    if as_postgres:
        for path in (root, sockets):
            shutil.chown(path, "postgres", "postgres")
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "unetlab", "--auth=trust", "--no-locale",
              "-E", "UTF8", "--no-sync"], as_postgres)
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
              f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], as_postgres)
        try:
            _run([str(bindir / "createdb"), "-h", str(sockets), "-p", str(port), "-U", "unetlab", "studies"],
                 as_postgres)
            yield f"postgresql+psycopg://unetlab@127.0.0.1:{port}/studies"
        finally:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], as_postgres)
    finally:
        shutil.rmtree(root, ignore_errors=True)
