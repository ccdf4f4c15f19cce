"""Build optuna storages from a URL, with the engine settings that many workers need.

SQLite is the embedded default for one machine; PostgreSQL (psycopg 3) and MySQL/MariaDB
(pymysql) are for workers on many machines. Every storage built here:

- pre-pings pooled connections and recycles them, so a database restart costs a retry, not a crash;
- retries calls that fail on a lost connection with exponential backoff (``db_retry_seconds``);
- runs heartbeats for RDB storages, so a trial whose worker died is failed after ``grace_period``
  seconds and enqueued again with the same parameters (``RetryHeartbeatStaleTrialCallback``);
- serializes optuna's schema creation, which races when several workers start on a new database.

Passwords in URLs are never printed: use :func:`redact_url` for anything shown to a person.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import re
import sqlite3
import time
import zlib
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from hpo.errors import StorageError

if TYPE_CHECKING:
    import optuna

__all__ = ["StorageSettings", "build_storage", "redact_url", "redact_text", "sqlite_path"]

DEFAULT_STORAGE = "sqlite:///studies.db"
_LOG = logging.getLogger("hpo")
_T = TypeVar("_T")


@dataclass(frozen=True)
class StorageSettings:
    """How a worker talks to its storage."""

    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial; 0 disables them
    grace_period: int = 60  # seconds without a heartbeat after which a running trial is failed
    max_retry: int = 3  # times a trial whose worker died is enqueued again (0: never)
    db_retry_seconds: float = 300.0  # keep retrying a lost database connection this long


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    Example:
        >>> redact_url("postgresql+psycopg://bob:s3cret@db:5432/hpo")
        'postgresql+psycopg://bob:***@db:5432/hpo'
    """
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


def redact_text(text: str, url: str) -> str:
    """Remove the password of ``url`` (and any URL-shaped password) from ``text``."""
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def _password(url: str) -> str | None:
    match = re.search(r"://[^:/@\s]*:([^@\s]*)@", url)
    return match.group(1) if match and match.group(1) else None


def sqlite_path(url: str) -> Path | None:
    """The file behind an ``sqlite:///`` URL, or None for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _dialect(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def _engine_kwargs(url: str) -> dict[str, Any]:
    dialect = _dialect(url)
    if dialect == "sqlite":
        # A generous busy timeout: several local workers write to one file.
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {
        "pool_pre_ping": True,  # a restarted server leaves dead connections in the pool
        "pool_recycle": 1800,
        "pool_size": 2,  # the main thread and the heartbeat thread
        "max_overflow": 4,
        "pool_timeout": 30,
    }
    if dialect == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif dialect in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": 10, "read_timeout": 600, "write_timeout": 600}
    return kwargs


def _is_connection_error(exc: BaseException) -> bool:
    import optuna
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        cause = exc.__cause__
        return cause is not None and _is_connection_error(cause)
    return False


def _retrying(method: Callable[..., _T], budget: Callable[[], float]) -> Callable[..., _T]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        deadline = time.monotonic() + budget()
        delay = 0.5
        while True:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if not _is_connection_error(exc) or time.monotonic() + delay > deadline:
                    raise
                _LOG.warning(
                    "storage unreachable (%s); retrying in %.1f s",
                    type(exc.__cause__ or exc).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 15.0)

    return wrapper


def _make_retrying_class() -> type:
    """An RDBStorage whose calls survive a database restart (retry with backoff)."""
    import optuna

    base = optuna.storages.RDBStorage
    names = [
        name
        for name, value in vars(base).items()
        if callable(value) and not name.startswith("_") and name not in ("upgrade",)
    ] + ["_get_stale_trial_ids"]

    class _RetryingRDBStorage(base):  # type: ignore[misc, valid-type]
        _hpo_retry_seconds = 300.0

        def __init__(self, *args: Any, retry_seconds: float = 300.0, **kwargs: Any) -> None:
            self._hpo_retry_seconds = retry_seconds
            super().__init__(*args, **kwargs)

    for name in names:
        method = getattr(base, name)

        def make(m: Callable[..., Any]) -> Callable[..., Any]:
            def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                return _retrying(lambda: m(self, *args, **kwargs), lambda: self._hpo_retry_seconds)()

            return functools.wraps(m)(call)

        setattr(_RetryingRDBStorage, name, make(method))
    _RetryingRDBStorage.__name__ = "RDBStorage"
    return _RetryingRDBStorage


@functools.cache
def _retrying_class() -> type:
    return _make_retrying_class()


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Serialize optuna's table creation across processes that start at the same moment.

    SQLite: an ``fcntl`` lock on ``<file>.lock``. PostgreSQL: an advisory lock. MySQL: ``GET_LOCK``.
    """
    dialect = _dialect(url)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
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
                conn.execute(sqlalchemy.text("SELECT GET_LOCK('hpo_optuna_schema', 120)"))
            try:
                yield
            finally:
                if dialect == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                else:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK('hpo_optuna_schema')"))
    finally:
        engine.dispose()


def _connect_only(url: str) -> dict[str, Any]:
    kwargs = _engine_kwargs(url)
    return {"connect_args": kwargs["connect_args"]} if "connect_args" in kwargs else {}


def _enable_wal(path: Path) -> None:
    # WAL lets readers (reports, `hpo trials`) run while a worker writes; the mode persists in
    # the file, so setting it once at creation is enough.
    conn = sqlite3.connect(path, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def build_storage(
    url: str, settings: StorageSettings | None = None
) -> optuna.storages.BaseStorage:
    """Build the optuna storage for ``url``.

    Args:
        url: ``sqlite:///path.db``, ``postgresql+psycopg://user:pw@host/db``,
            ``mysql+pymysql://user:pw@host/db``, ``journal:///path.log`` (optuna's journal file)
            or ``inmemory`` (one process; tests).
        settings: heartbeat, retry and reconnection settings.

    Returns:
        An optuna storage; RDB storages come with heartbeats and stale-trial retries.

    Raises:
        StorageError: if the URL is malformed, its driver is missing or the database is
            unreachable. The message never contains the password.

    Example:
        >>> storage = build_storage("sqlite:///studies.db")
    """
    import optuna

    settings = settings or StorageSettings()
    if url == "inmemory":
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:///") :]))
    dialect = _dialect(url)
    if "://" not in url or dialect not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise StorageError(
            f"unsupported storage URL {redact_url(url)!r}: use sqlite:///FILE, "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB, mysql+pymysql://USER:PASSWORD@HOST/DB, "
            "journal:///FILE or inmemory"
        )
    heartbeat: dict[str, Any] = {}
    if settings.heartbeat_interval > 0:
        heartbeat = {
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=settings.max_retry
            ),
        }
    path = sqlite_path(url)
    if path is not None and path.parent and not path.parent.exists():
        raise StorageError(
            f"storage {redact_url(url)!r}: directory {str(path.parent)!r} does not exist"
        )
    cls = _retrying_class()
    last: Exception | None = None
    for attempt in range(5):
        try:
            with schema_lock(url):
                if path is not None and not path.exists():
                    _enable_wal(path)
                return cls(  # type: ignore[no-any-return]
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    retry_seconds=settings.db_retry_seconds,
                    **heartbeat,
                )
        except ModuleNotFoundError as exc:
            raise StorageError(
                f"storage {redact_url(url)!r} needs the Python package {exc.name!r}: "
                f"pip install {exc.name}"
            ) from None
        except Exception as exc:  # the storage's own errors wrap the driver's
            last = exc
            if _is_connection_error(exc):
                break
            # A table-creation race on a brand-new database loses once, then finds the tables.
            time.sleep(0.2 * (attempt + 1))
    detail = redact_text(str(getattr(last, "orig", None) or last).splitlines()[0], url)
    raise StorageError(f"cannot open storage {redact_url(url)!r}: {detail}") from None
