"""Build optuna storages from a URL, with the engine settings that many workers need.

SQLite is the embedded default for one machine; PostgreSQL (psycopg 3) and MySQL/MariaDB
(pymysql) are for workers on many machines. Every storage built here:

- pre-pings pooled connections that sat idle and recycles old ones, and retries calls that fail
  on a lost connection with exponential backoff (``db_retry_seconds``): a database restart
  costs a retry, not a crash;
- runs heartbeats for RDB storages, so a trial whose worker died is failed after ``grace_period``
  seconds and enqueued again with the same parameters (``RetryHeartbeatStaleTrialCallback``);
  a RUNNING trial that never got a heartbeat (its worker died between creating it and the first
  heartbeat) is treated as stale too, once it has been seen so for ``grace_period`` seconds;
- serializes optuna's schema creation, which races when several workers start on a new database;
- puts SQLite files in WAL mode with a busy timeout, warns when one lives on a network
  filesystem, and fails (exit 1) instead of losing results when the file is deleted or
  replaced while in use;
- writes what every trial writes (reports, new user attrs, heartbeats) in one statement each
  instead of optuna's transaction of several queries, and counts trials in one query
  (:func:`trial_counts`): storage round trips per trial stay few at thousands of trials (the
  RDB side lives in :mod:`hpo.rdb`).

Passwords in URLs are never printed: use :func:`redact_url` for anything shown to a person.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from hpo.errors import StorageError
from hpo.rdb import _RETRIED_METHODS  # noqa: F401  (re-exported for tests)
from hpo.rdb import is_connection_error
from hpo.rdb import rdb_backend
from hpo.rdb import retrying
from hpo.rdb import retrying_rdb_class
from hpo.rdb import trial_counts
from hpo.redact import redact_text
from hpo.redact import redact_url

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DEFAULT_STORAGE",
    "StorageSettings",
    "build_storage",
    "is_connection_error",
    "quiet_optuna_warnings",
    "rdb_backend",
    "redact_text",
    "redact_url",
    "retrying",
    "shared_lock",
    "set_heartbeat",
    "sqlite_path",
    "trial_counts",
]

DEFAULT_STORAGE = "sqlite:///studies.db"
_LOG = logging.getLogger("hpo")
# Filesystems on which SQLite's locking is unreliable (several machines see one file).
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "lustre", "gpfs",
               "beegfs", "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs", "afs", "fuse.s3fs")
# User attrs of one run of a trial: a retry of that trial must not inherit them.
RUN_ATTRS = ("worker", "started_at", "wall_seconds", "fail_reason", "resumed_from")

@dataclass(frozen=True)
class StorageSettings:
    """How a worker talks to its storage."""

    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial; 0 disables them
    grace_period: int = 60  # seconds without a heartbeat after which a running trial is failed
    max_retry: int = 3  # times a trial whose worker died is enqueued again (0: never)
    db_retry_seconds: float = 300.0  # keep retrying a lost database connection this long


def sqlite_path(url: str) -> Path | None:
    """The file behind an ``sqlite:///`` URL, or None for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _dialect(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


@contextlib.contextmanager
def quiet_optuna_warnings() -> Iterator[None]:
    """Silence the optuna warnings that hpo's worker loop triggers on purpose.

    Heartbeats, ``fail_stale_trials`` and the retry callback are experimental in optuna 5, and
    optuna expects heartbeats only inside ``Study.optimize`` (we run them around ask/tell).
    """
    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def _engine_kwargs(url: str) -> dict[str, Any]:
    dialect = _dialect(url)
    if dialect == "sqlite":
        # sqlite3's `timeout` is SQLite's busy timeout: wait this long for another process's
        # write lock instead of failing with "database is locked".
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {
        # A restarted server leaves dead connections in the pool. SQLAlchemy's pre-ping tests
        # one at every checkout: a round trip per storage call, ~20 per trial. hpo pings only
        # connections idle for over PING_IDLE_SECONDS (see _ping_idle_connections); a connection
        # that dies while in use costs a retry (`retrying`), not a crash.
        "pool_pre_ping": False,
        "pool_recycle": 1800,  # under the usual server/proxy idle limits
        # One worker uses at most three connections at once: the main thread, the heartbeat
        # thread and the budget lock. 16 workers then need <= 80, under PostgreSQL's default 100.
        "pool_size": 3,
        "max_overflow": 2,
        "pool_timeout": 30,
    }
    if dialect == "postgresql":
        kwargs["connect_args"] = {
            "connect_timeout": 10,
            # Client and server notice a dead peer in about a minute, not hours: the server then
            # ends the session and frees the budget lock a vanished worker held.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 "
            "-c tcp_keepalives_count=3",
        }
    elif dialect in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": 10, "read_timeout": 600, "write_timeout": 600}
    return kwargs


PING_IDLE_SECONDS = 5.0


def _ping_idle_connections(engine: Any) -> None:
    """Pre-ping pooled connections idle for ``PING_IDLE_SECONDS`` before handing them out.

    A dead one (server restarted, proxy timeout) is replaced by a fresh connection, as with
    ``pool_pre_ping``, without a round trip for each of the many short storage calls of a trial.
    """
    import sqlalchemy
    import sqlalchemy.exc

    @sqlalchemy.event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["hpo_idle_since"] = time.monotonic()

    @sqlalchemy.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("hpo_idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()  # leave no transaction open behind the ping
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another one.
            raise sqlalchemy.exc.DisconnectionError(str(exc)) from exc



class RetryStaleTrialCallback:
    """``RetryHeartbeatStaleTrialCallback`` whose retry leaves out the dead run's worker attrs.

    optuna's callback copies every user attr of the failed trial to its WAITING copy; the copy
    then claims the dead worker ran it until a live one picks it up. This drops the attrs in
    ``RUN_ATTRS`` and keeps the rest (e.g. attrs set when the trial was enqueued).
    """

    def __init__(self, max_retry: int | None) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with quiet_optuna_warnings():
            self._inner = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}
        self._inner(study, trial)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if missing), for processes of one machine."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Serialize optuna's table creation across processes that start at the same moment.

    SQLite: an ``fcntl`` lock on ``<file>.lock``. PostgreSQL: an advisory lock. MySQL: ``GET_LOCK``.
    """
    dialect = _dialect(url)
    path = sqlite_path(url)
    if path is not None:
        with file_lock(Path(f"{path}.lock")):
            yield
        return
    if dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **_connect_only(url))
    key = zlib.crc32(b"hpo-optuna-schema")
    try:
        with engine.connect() as conn:
            if dialect == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                while conn.execute(sqlalchemy.text("SELECT GET_LOCK('hpo_optuna_schema', 60)")).scalar() != 1:
                    pass
            conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a lost connection frees the lock anyway
                    if dialect == "postgresql":
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    else:
                        conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK('hpo_optuna_schema')"))
                    conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def shared_lock(storage: Any, url: str, name: str) -> Iterator[None]:
    """A lock named ``name`` shared by every process that uses ``url``.

    SQLite and journal files: an ``fcntl`` lock on ``<file>.lock`` (``<file>.hpo.lock`` for
    journals) that works on one machine only.
    PostgreSQL: a session advisory lock; MySQL/MariaDB: ``GET_LOCK``. Either is freed by the
    server when the holder's connection ends, so a killed worker never leaves it taken. Taking
    the lock survives a database outage (retry with backoff); losing the connection while
    holding it is logged, not raised (the server has freed it already). Other storages: a lock
    of this process.
    """
    path = sqlite_path(url)
    if path is not None:
        lock = Path(f"{path}.lock")
    elif url.startswith("journal:///"):
        # Not "<file>.lock": optuna's journal backend uses that name for its own lock.
        lock = Path(url[len("journal:///") :] + ".hpo.lock")
    if path is not None or url.startswith("journal:///"):
        with file_lock(lock):
            yield
        return
    backend = rdb_backend(storage)
    if backend is None or backend.engine.dialect.name not in ("postgresql", "mysql", "mariadb"):
        with _THREAD_LOCKS.setdefault(name, threading.Lock()):
            yield
        return
    import sqlalchemy

    postgres = backend.engine.dialect.name == "postgresql"
    key = zlib.crc32(name.encode())
    args = {"k": key} if postgres else {"k": f"hpo-{key}"}

    def acquire() -> Any:
        # Autocommit: the lock belongs to the session, so it needs no transaction around it.
        conn = backend.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            if postgres:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), args)
            else:  # GET_LOCK returns 0 when its wait times out: wait again
                get = sqlalchemy.text("SELECT GET_LOCK(:k, 30)")
                while conn.execute(get, args).scalar() != 1:
                    pass
        except BaseException:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()
            raise
        return conn

    conn = retrying(acquire, lambda: getattr(backend, "_hpo_retry_seconds", 300.0))()
    try:
        yield
    finally:
        release = "SELECT pg_advisory_unlock(:k)" if postgres else "SELECT RELEASE_LOCK(:k)"
        try:
            conn.execute(sqlalchemy.text(release), args)
            conn.close()
        except Exception as exc:
            # Never hand a connection that may still hold the lock back to the pool.
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()
            if not is_connection_error(exc):
                raise
            _LOG.warning("lost the database connection that held lock %r (the server freed it)", name)


_THREAD_LOCKS: dict[str, threading.Lock] = {}


def _connect_only(url: str) -> dict[str, Any]:
    kwargs = _engine_kwargs(url)
    return {"connect_args": kwargs["connect_args"]} if "connect_args" in kwargs else {}


def _enable_wal(path: Path) -> None:
    # WAL lets readers (reports, `hpo trials`) run while a worker writes, and writers block each
    # other less. The mode persists in the file; switching needs a moment without other writers,
    # so a busy file that is not in WAL mode yet stays as it is.
    conn = sqlite3.connect(path, timeout=5)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        _LOG.debug("could not switch %s to WAL mode: %s", path, exc)
    finally:
        conn.close()


def _sqlite_synchronous_normal(engine: Any) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection of a WAL-mode SQLite engine.

    SQLite's own advice for WAL mode: commits stop waiting for an fsync each (a trial makes a
    dozen), the file cannot be corrupted, and a killed process loses nothing; only a power loss
    or OS crash may roll back the last commits.
    """
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    engine.dispose()  # the connections opened while creating the tables predate the listener


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem that holds ``path`` (Linux ``/proc/mounts``), or None."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype


def _warn_network_fs(path: Path) -> None:
    fstype = filesystem_type(path.parent if not path.exists() else path)
    if fstype is not None and fstype.lower() in _NETWORK_FS:
        _LOG.warning(
            "the SQLite file %s is on a network filesystem (%s): SQLite's locks do not work there "
            "and the study can be corrupted; use PostgreSQL or MySQL for workers on several "
            "machines, or keep the file on a local disk", path, fstype,
        )


def set_heartbeat(storage: Any, settings: StorageSettings) -> None:
    """Give an RDB storage built by :func:`build_storage` the heartbeat settings ``settings``.

    For a storage opened before its study's settings were known (a worker reads them from
    the study): cheaper than opening a second engine.
    """
    backend = rdb_backend(storage)
    if backend is None:
        return
    on = settings.heartbeat_interval > 0
    backend.heartbeat_interval = settings.heartbeat_interval if on else None
    backend.grace_period = settings.grace_period if on else None
    callback = RetryStaleTrialCallback(settings.max_retry) if on else None
    backend.heartbeat_stale_trial_callback = backend.failed_trial_callback = callback
    backend._hpo_retry_seconds = settings.db_retry_seconds


def build_storage(
    url: str, settings: StorageSettings | None = None, *, create: bool = False
) -> optuna.storages.BaseStorage:
    """Build the optuna storage for ``url``.

    Args:
        url: ``sqlite:///path.db``, ``postgresql+psycopg://user:pw@host/db``,
            ``mysql+pymysql://user:pw@host/db``, ``journal:///path.log`` (optuna's journal file)
            or ``inmemory`` (one process; tests).
        settings: heartbeat, retry and reconnection settings.
        create: whether a missing SQLite or journal file may be created (``hpo run``,
            ``hpo create``). False for commands that only read or join a study: a mistyped
            path is then an error instead of a new, empty database.

    Returns:
        An optuna storage; RDB storages come with heartbeats and stale-trial retries.

    Raises:
        StorageError: if the URL is malformed, its driver is missing, the database is
            unreachable, or (without ``create``) its SQLite or journal file does not exist.
            The message never contains the password.

    Example:
        >>> storage = build_storage("sqlite:///studies.db", create=True)
    """
    import optuna

    settings = settings or StorageSettings()
    if url == "inmemory":
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        journal = Path(url[len("journal:///") :])
        _check_file(journal, url, create, "journal file")
        not_journal = f"{journal} is not an optuna journal file"
        hint = "give a journal written by optuna or hpo, or the name of a new file"
        if journal.exists() and not _journal_head_ok(journal):
            raise StorageError(f"{not_journal} (its first line is not a journal record); {hint}")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        except Exception as exc:  # optuna replays every record: any bad one lands here
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise StorageError(
                f"{not_journal} ({type(exc).__name__}: {reason}); {hint}"
            ) from None
    dialect = _dialect(url)
    if "://" not in url or dialect not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise StorageError(
            f"unsupported storage URL {redact_url(url)!r}: use sqlite:///FILE, "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB, mysql+pymysql://USER:PASSWORD@HOST/DB, "
            "journal:///FILE or inmemory"
        )
    if dialect == "sqlite":
        _check_sqlite_url(url)
    heartbeat: dict[str, Any] = {}
    if settings.heartbeat_interval > 0:
        heartbeat = {
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
            "heartbeat_stale_trial_callback": RetryStaleTrialCallback(settings.max_retry),
        }
    path = sqlite_path(url)
    if path is not None:
        _check_file(path, url, create, "SQLite database")
        _check_sqlite_header(path, url, create)
        _warn_network_fs(path)
    cls = retrying_rdb_class()
    last: Exception | None = None
    for attempt in range(5):
        try:
            with schema_lock(url), quiet_optuna_warnings():
                if path is not None:
                    _enable_wal(path)
                storage = cls(
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    retry_seconds=settings.db_retry_seconds,
                    **heartbeat,
                )
            if dialect == "sqlite":
                _sqlite_synchronous_normal(storage.engine)
                if path is not None:
                    storage.watch_file(str(path))
            else:
                _ping_idle_connections(storage.engine)
            return storage  # type: ignore[no-any-return]
        except ModuleNotFoundError as exc:
            raise StorageError(_missing_driver(url, exc.name or "")) from None
        except Exception as exc:  # the storage's own errors wrap the driver's
            last = exc
            if not _is_schema_race(exc):
                break  # unreachable, a bad URL or port, a file that is no database: say so now
            # A table-creation race with a process that is not hpo loses once, then finds the
            # tables (hpo's own processes are serialized by schema_lock).
            time.sleep(0.2 * (attempt + 1))
    detail = str(getattr(last, "orig", None) or last).strip().splitlines() or [type(last).__name__]
    raise StorageError(
        f"cannot open storage {redact_url(url)!r}: {redact_text(detail[0], url)}"
    ) from None


# The pip package of each database driver module SQLAlchemy may import, by top-level name.
_DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient", "pymysql": "pymysql", "mysql": "mysql-connector-python",
    "mariadb": "mariadb", "asyncmy": "asyncmy", "aiomysql": "aiomysql", "cymysql": "cymysql",
    "psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
    "asyncpg": "asyncpg", "psycopg2cffi": "psycopg2cffi",
}
# The drivers hpo installs, to name in the hint.
_BUNDLED = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://",
            "mariadb": "mysql+pymysql://"}


def _missing_driver(url: str, module: str) -> str:
    """One line: which pip package gives the missing driver ``module`` of ``url``, and the
    driver that hpo installs, when the URL named another (or none, SQLAlchemy's default)."""
    top = module.split(".")[0]
    package = _DRIVER_PACKAGES.get(top, top)
    scheme = url.split("://", 1)[0]
    line = (f"storage {redact_url(url)!r}: its database driver {scheme!r} needs the Python "
            f"module {module!r}: pip install '{package}'")
    bundled = _BUNDLED.get(_dialect(url))
    if bundled is not None and not url.startswith(bundled):
        line += f", or use {bundled}... (installed with hpo)"
    return line


def _check_sqlite_url(url: str) -> None:
    """An SQLite URL must name a file: in-memory SQLite keeps nothing, per connection.

    Each pooled connection (the main thread, heartbeats, the budget lock) would get a database
    of its own: a run stalled for ``db_retry_seconds`` on tables that are not there, and the
    results would be gone with the process anyway.
    """
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        raise StorageError(
            f"storage {redact_url(url)!r} is an in-memory SQLite database, which keeps nothing "
            "after the command; give a file, e.g. sqlite:///studies.db"
        )
    if not rest.startswith("/"):
        raise StorageError(
            f"storage {redact_url(url)!r}: an SQLite URL has three slashes before a relative "
            f"path (sqlite:///{rest}) and four before an absolute one"
        )


def _check_file(path: Path, url: str, create: bool, kind: str) -> None:
    """The file of an SQLite or journal storage must exist, unless it may be created here."""
    if path.is_dir():
        raise StorageError(f"storage {redact_url(url)!r}: {path} is a directory, not a {kind}")
    if path.exists():
        if not path.is_file():  # a FIFO or a device: opening it could block or do harm
            raise StorageError(f"storage {redact_url(url)!r}: {path} is not a regular file")
        return
    if not create:
        raise StorageError(
            f"no {kind} at {path}: check --storage (`hpo run` and `hpo create` make a new one)"
        )
    if path.parent and not path.parent.exists():
        raise StorageError(
            f"storage {redact_url(url)!r}: directory {str(path.parent)!r} does not exist"
        )


def _check_sqlite_header(path: Path, url: str, create: bool) -> None:
    """An existing file must be an SQLite database before anything (a lock file, tables) is
    made beside or in it; an empty one is a database only for commands that may create one."""
    if not path.exists():
        return
    if path.stat().st_size == 0:
        if not create:
            raise StorageError(f"no SQLite database at {path}: the file is empty; check --storage")
        return
    # Ask SQLite, never open() the file here: closing any descriptor of a file drops every POSIX
    # lock this process holds on it, SQLite's included. A process that already has the database
    # open (hpo run opens it again to launch its workers) would let another process checkpoint
    # and delete the WAL under it: stale reads, then "database disk image is malformed".
    # SQLite's own VFS shares its descriptors and locks between connections of one process.
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
        ok = True
    except sqlite3.DatabaseError as exc:
        ok = "not a database" not in str(exc)
    if not ok:
        raise StorageError(
            f"storage {redact_url(url)!r}: {path} is not an SQLite database, or a damaged one "
            "(SQLite: file is not a database); check --storage"
        )


def _journal_head_ok(path: Path) -> bool:
    """Whether the first line of ``path`` (if any) is an optuna journal record."""
    with open(path, "rb") as f:
        head = f.readline(1 << 20)
    if not head:
        return True  # an empty file is a new journal
    try:
        record = json.loads(head)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _is_schema_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already exists" in text or "duplicate" in text
