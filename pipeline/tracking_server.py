"""A group's MLflow server: ``mlflow server`` on a PostgreSQL database, artifacts in a shared folder.

    python -m pipeline.tracking_server \\
        --backend-store-uri postgresql://mlflow@dbhost:5432/mlflow \\
        --artifacts-destination /shared/group/mlartifacts

then ``tracking.uri: http://127.0.0.1:5000`` in params.yaml (docs/scaling-out.md).

Why a server: jobs on many cluster nodes writing one SQLite file on a network file system is
unsafe (SQLite's locks are not reliable over NFS / Lustre); a database server takes concurrent
writers by design. The server also *serves* the artifacts (``--serve-artifacts``): jobs upload
figures and metrics.json over HTTP, so only the server's machine needs the artifact folder.
It binds to 127.0.0.1 by default (params.yaml ``tracking.server``), so nobody else on the
network reaches a server that has no authentication; colleagues and compute nodes reach it
through an SSH tunnel or a bind address the cluster's admins allow.

The database is checked before the server starts, so a wrong URI, password or missing
database is one clear error naming it (password hidden), not a stack trace per worker.
The password is best kept out of the command line: libpq reads ``~/.pgpass`` or PGPASSWORD.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import load_params
from pipeline.errors import ConfigError

#: Seconds the database check waits for PostgreSQL to answer.
CONNECT_TIMEOUT_S = 10
BACKEND_SCHEMES = ("postgresql", "postgresql+psycopg2")


def redacted(uri: str) -> str:
    """``uri`` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_database(uri: str) -> None:
    """Connect once to the PostgreSQL database of ``uri``; ConfigError naming it if that fails."""
    scheme = urlsplit(uri).scheme
    if scheme not in BACKEND_SCHEMES:
        raise ConfigError(f"--backend-store-uri {redacted(uri)}: expected a {' or '.join(BACKEND_SCHEMES)}:// "
                          "URI (a SQLite file is for one machine: see docs/scaling-out.md)")
    import psycopg2

    try:
        psycopg2.connect(uri.replace("postgresql+psycopg2://", "postgresql://", 1),
                         connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg2.OperationalError as err:
        reason = " ".join(str(err).split()).replace(urlsplit(uri).password or "\0", "***")
        raise ConfigError(f"--backend-store-uri {redacted(uri)}: cannot connect ({reason})") from err


def server_command(backend_store_uri: str, artifacts_destination: Path, host: str, port: int,
                   workers: int) -> list[str]:
    """The ``mlflow server`` command line (the mlflow beside this Python)."""
    mlflow = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                          os.environ.get("PATH", "")]))
    if mlflow is None:
        raise ConfigError("the mlflow command is not installed beside this Python (pip install -r requirements.txt)")
    return [mlflow, "server", "--backend-store-uri", backend_store_uri, "--serve-artifacts",
            "--artifacts-destination", str(artifacts_destination), "--host", host, "--port", str(port),
            "--workers", str(workers)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-store-uri", required=True,
                        help="postgresql://user@host:port/database (password: ~/.pgpass or PGPASSWORD)")
    parser.add_argument("--artifacts-destination", required=True, type=Path,
                        help="shared folder the server stores run artifacts in (created if missing)")
    parser.add_argument("--params", default="params.yaml", help="params.yaml holding tracking.server's defaults")
    parser.add_argument("--host", help="bind address (default: params.yaml tracking.server.host)")
    parser.add_argument("--port", type=int, help="port (default: params.yaml tracking.server.port)")
    parser.add_argument("--workers", type=int, help="workers (default: params.yaml tracking.server.workers)")
    args = parser.parse_args(argv)
    try:
        defaults = load_params(args.params)["tracking"].get("server", {})
        settings = {key: getattr(args, key) if getattr(args, key) is not None else defaults.get(key)
                    for key in ("host", "port", "workers")}
        missing = [key for key, value in settings.items() if value is None]
        if missing:
            raise ConfigError(f"{args.params}: tracking.server has no {', '.join(missing)} (and no --{missing[0]} given)")
        check_database(args.backend_store_uri)
        args.artifacts_destination.mkdir(parents=True, exist_ok=True)
        command = server_command(args.backend_store_uri, args.artifacts_destination.resolve(), **settings)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"MLflow server on http://{settings['host']}:{settings['port']} "
          f"(database {redacted(args.backend_store_uri)}, artifacts {args.artifacts_destination})", flush=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.execv(command[0], command)  # the server takes this process's pid: stop it with that pid


if __name__ == "__main__":
    sys.exit(main())
