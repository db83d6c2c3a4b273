"""A real PostgreSQL server (Debian's package) on 127.0.0.1 for the tests, and the group's MLflow
server in front of it, started with ``python -m pipeline.tracking_server`` as docs/scaling-out.md
says. Both are this process's children, stopped by pid.

PostgreSQL refuses to run as root, so under root (CI's containers) the cluster belongs to the
``postgres`` user the package creates, in a folder of its own outside pytest's root-only tree.
Password authentication (scram-sha-256) on TCP, as a group server would use; no Unix socket.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from server_support import ManagedServer, free_port, stop, wait_for_health

PACKAGES = ("postgresql",)
DB_USER = "mlflow"
DB_NAME = "mlflow"
START_TIMEOUT_S = 60
SERVER_START_TIMEOUT_S = 120


def postgres_bin() -> Path | None:
    """Debian keeps initdb / postgres in /usr/lib/postgresql/<version>/bin, off the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The binaries' folder; skip without them locally, fail in CI (``CI`` set)."""
    bin_dir = postgres_bin()
    if bin_dir is not None:
        return bin_dir
    reason = f"PostgreSQL is not installed: apt-get install --no-install-recommends {' '.join(PACKAGES)}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run must install it")
    pytest.skip(reason)


class PostgresServer(ManagedServer):
    """initdb + postgres on a free port of 127.0.0.1 with one database; ``uri`` reaches it."""

    def __init__(self):
        self.bin = require_postgres()
        self.user = "postgres" if os.getuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="medgan-pg-"))
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.uri = f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"
        #: The same without the password, which libpq takes from PGPASSWORD (kept off command lines).
        self.public_uri = f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"
        self.proc: subprocess.Popen | None = None

    def _as_owner(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, user=self.user, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
                              env={**os.environ, "PGPASSWORD": self.password}, **kwargs)

    def _bring_up(self) -> None:
        if self.user:
            owner = pwd.getpwnam(self.user)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self.user:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        data = self.root / "data"
        done = self._as_owner([str(self.bin / "initdb"), "-D", str(data), "-U", DB_USER, "--auth=scram-sha-256",
                               f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"], cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        pwfile.unlink()
        self.log = self.root / "postgres.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port), "-k", ""],
                user=self.user, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._as_owner([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        done = self._as_owner([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER,
                               DB_NAME])
        if done.returncode != 0:
            raise RuntimeError(f"createdb failed:\n{done.stderr}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop(self.proc, sig=signal.SIGINT)  # the postmaster's "fast" shutdown: ends sessions, stops its children
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer(ManagedServer):
    """``python -m pipeline.tracking_server`` on a free port; ``uri`` is its http address. The
    database password goes through PGPASSWORD, as docs/scaling-out.md advises."""

    def __init__(self, postgres: PostgresServer, artifacts: Path, repo_root: Path):
        self.backend_store_uri, self.artifacts, self.repo_root = postgres.public_uri, artifacts, repo_root
        self.env = {**os.environ, "PGPASSWORD": postgres.password}
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = artifacts.parent / f"mlflow-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def _bring_up(self) -> None:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.tracking_server", "--backend-store-uri", self.backend_store_uri,
                 "--artifacts-destination", str(self.artifacts), "--port", str(self.port), "--workers", "1"],
                cwd=self.repo_root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_health(self.uri, self.proc, SERVER_START_TIMEOUT_S, self.log, "the MLflow server")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop(self.proc, group=True)  # the server and its workers, in the group it leads
