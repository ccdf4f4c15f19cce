"""Database servers for tests that need them (../shared/services.md), and a few helpers.

PostgreSQL and MariaDB run on loopback on development and CI machines. A test that needs one
calls :func:`server_url`: off CI it skips with the reason when the server is unreachable; with
``CI=true`` it fails instead, so CI can never pass by skipping. Override the URLs with
``HPO_TEST_POSTGRES_URL`` / ``HPO_TEST_MYSQL_URL``.

Import it from a test module with ``from conftest_servers import ...`` after putting ``tests/``
on ``sys.path`` (the test modules do that themselves).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

URLS = {
    "postgresql": os.environ.get(
        "HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("HPO_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
START = {
    "postgresql": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mysql": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}


def on_ci() -> bool:
    return os.environ.get("CI") == "true"


@functools.cache
def _unreachable(url: str) -> str | None:
    """Why ``url`` cannot be used right now, or None when a ``SELECT 1`` works."""
    try:
        import sqlalchemy

        args = {"connect_timeout": 3}
        engine = sqlalchemy.create_engine(url, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # driver missing, refused, auth, ...
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"{type(exc).__name__}: {first[0] if first else ''}"
    return None


def server_url(kind: str) -> str:
    """The URL of server ``kind`` ("postgresql" or "mysql"); skip (fail on CI) when it is down."""
    url = URLS[kind]
    problem = _unreachable(url)
    if problem is not None:
        message = f"{kind} server not reachable at {url} ({problem}); start it with: {START[kind]}"
        if on_ci():
            pytest.fail(f"CI=true requires it: {message}", pytrace=False)
        pytest.skip(message)
    return url


def backend_url(kind: str, tmp_path: Path) -> str:
    """A storage URL of ``kind``: "sqlite" (a file in ``tmp_path``), "postgresql" or "mysql"
    (the server's, see :func:`server_url`)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return server_url(kind)


def unique_name(prefix: str = "test") -> str:
    """A study or database name no other test run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def delete_study(url: str, name: str) -> None:
    """Delete study ``name`` if it exists (teardown; never raises)."""
    import optuna

    with contextlib.suppress(Exception):
        storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
        try:
            optuna.delete_study(study_name=name, storage=storage)
        finally:
            storage.engine.dispose()


def _with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


@contextlib.contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """Create an empty database on server ``kind`` and yield its URL; drop it afterwards."""
    import sqlalchemy

    url = server_url(kind)
    name = unique_name("hpo_fresh")
    admin_url = _with_database(url, "postgres") if kind == "postgresql" else url
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                      poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield _with_database(url, name)
    finally:
        drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(drop))
        engine.dispose()


def postgres_ready(timeout: float = 0.0) -> bool:
    """Whether the local PostgreSQL accepts connections (waiting up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        ok = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"],
                            check=False).returncode == 0
        if ok or time.monotonic() >= deadline:
            return ok
        time.sleep(0.5)


def _pg_ctlcluster(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True, capture_output=True, timeout=120,
    )


def can_restart_postgres() -> str | None:
    """Why this machine cannot restart its PostgreSQL in a test, or None when it can."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return "pg_ctlcluster or /etc/postgresql missing (not a Debian PostgreSQL cluster)"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    return None


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster (every connection to it is dropped)."""
    _pg_ctlcluster("restart")


def ensure_postgres_running() -> None:
    """Start the local PostgreSQL again if it is down (test teardown)."""
    if not postgres_ready(timeout=2):
        with contextlib.suppress(Exception):
            _pg_ctlcluster("start")
        postgres_ready(timeout=30)
