"""hpo.storage: URLs, engine settings, retries, locks, stale trials, schema races."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc
import yaml
from optuna.trial import TrialState

from hpo.errors import StorageError
from hpo.errors import StorageLostError
from hpo.storage import _RETRIED_METHODS
from hpo.storage import RetryStaleTrialCallback
from hpo.storage import StorageSettings
from hpo.storage import build_storage
from hpo.storage import filesystem_type
from hpo.storage import quiet_optuna_warnings
from hpo.storage import rdb_backend
from hpo.storage import redact_text
from hpo.storage import redact_url
from hpo.storage import retrying
from hpo.storage import shared_lock
from hpo.study import budget_state
from hpo.study import fail_stale
from hpo.worker import _Heartbeat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_servers import backend_url  # noqa: E402
from conftest_servers import delete_study  # noqa: E402
from conftest_servers import fresh_database  # noqa: E402
from conftest_servers import server_url  # noqa: E402
from conftest_servers import unique_name  # noqa: E402

HPO = str(Path(sys.executable).with_name("hpo"))
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def opened(url: str, settings: StorageSettings | None = None) -> Iterator[Any]:
    storage = build_storage(url, settings, create=True)
    try:
        yield storage
    finally:
        backend = rdb_backend(storage)
        if backend is not None:
            backend.engine.dispose()


# --- URLs and passwords ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://bob:s3cret@db:5432/hpo", "postgresql+psycopg://bob:***@db:5432/hpo"),
        ("mysql+pymysql://bob:p@ss:w@rd@db/hpo", "mysql+pymysql://bob:***@db/hpo"),
        ("postgresql+psycopg://bob@db/hpo", "postgresql+psycopg://bob@db/hpo"),
        ("sqlite:///studies.db", "sqlite:///studies.db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_removes_the_password_anywhere() -> None:
    url = "postgresql+psycopg://bob:s3cret@db/hpo"
    text = "failed: password s3cret rejected for postgresql+psycopg://bob:s3cret@db/hpo"
    assert "s3cret" not in redact_text(text, url)


# Storage URLs with a password in every form a user may write one, and the parts of it that
# must never be printed. The servers are unreachable (port 1) or the URL is malformed.
SECRET_URLS = {
    "userinfo": ("postgresql+psycopg://bob:Zq9sEcret@127.0.0.1:1/hpo", ["Zq9sEcret"]),
    "query": ("postgresql+psycopg://bob@127.0.0.1:1/hpo?password=Zq9sEcret", ["Zq9sEcret"]),
    "query, any case": ("postgresql+psycopg://bob@127.0.0.1:1/hpo?sslmode=disable&PassWord=Zq9sEcret",
                        ["Zq9sEcret"]),
    "passwd": ("mysql+pymysql://root@127.0.0.1:1/test?passwd=Zq9sEcret", ["Zq9sEcret"]),
    "pwd": ("mysql+pymysql://root@127.0.0.1:1/test?PWD=Zq9sEcret", ["Zq9sEcret"]),
    "both": ("postgresql+psycopg://bob:Zq9sEcret@127.0.0.1:1/hpo?password=Xy7oTher",
             ["Zq9sEcret", "Xy7oTher"]),
    "unescaped @": ("postgresql+psycopg://bob:Zq9s@Ecret@127.0.0.1:1/hpo", ["Zq9s", "Ecret"]),
    "unescaped @ and :": ("mysql+pymysql://root:Zq9s:Ec@ret@127.0.0.1:1/test", ["Zq9s", "Ec@ret"]),
    "slash and ?": ("postgresql+psycopg://bob:Zq9/sE?cret@127.0.0.1:1/hpo", ["Zq9/sE", "sE?cret"]),
    "percent-encoded": ("postgresql+psycopg://bob:Zq9%40sEcret@127.0.0.1:1/hpo",
                        ["Zq9%40sEcret", "Zq9@sEcret"]),
    "bad port": ("postgresql+psycopg://bob:Zq9sEcret@127.0.0.1:port/hpo", ["Zq9sEcret"]),
    "space": ("postgresql+psycopg://bob:Zq9 sEcret@127.0.0.1:1/hpo", ["Zq9 sEcret"]),
    "no colon after the scheme": ("postgresql+psycopg//bob:Zq9sEcret@127.0.0.1/hpo", ["Zq9sEcret"]),
    "unknown dialect": ("postgres://bob:Zq9sEcret@127.0.0.1:1/hpo", ["Zq9sEcret"]),
    "unknown driver": ("mysql+nodriver://bob:Zq9sEcret@127.0.0.1:1/hpo", ["Zq9sEcret"]),
    "bad IPv6 host": ("postgresql+psycopg://bob:Zq9sEcret@[::1/hpo", ["Zq9sEcret"]),
    "redis": ("redis://:Zq9sEcret@127.0.0.1:6379/0", ["Zq9sEcret"]),
}


@pytest.mark.filterwarnings("ignore:'passwd' is deprecated")
@pytest.mark.parametrize("case", list(SECRET_URLS))
def test_no_password_form_is_ever_printed(case: str) -> None:
    """redact_url and every line of a failing `hpo studies` (also -v, and --debug's traceback)
    hide the password, whatever form it takes in the URL."""
    import traceback

    from click.testing import CliRunner

    from hpo.cli import cli

    url, secrets = SECRET_URLS[case]
    shown = redact_url(url)
    assert not [s for s in secrets if s in shown], shown
    assert "***" in shown
    for flags in ([], ["-v"], ["--debug"]):
        result = CliRunner().invoke(cli, [*flags, "studies", "--storage", url])
        assert result.exit_code != 0
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += "".join(traceback.format_exception(result.exception))
        assert not [s for s in secrets if s in output], output
        if not flags:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in output


@pytest.mark.server
def test_report_and_commands_hide_a_query_password(tmp_path: Path) -> None:
    """A real study on PostgreSQL (trust auth ignores the password): the report's Storage row
    and the commands' output show the URL without its `?password=`."""
    from click.testing import CliRunner

    from hpo.cli import cli

    url = server_url("postgresql") + "?password=Zq9sEcret"
    name = unique_name("redact")
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "study": name, "objective": "toy", "sampler": "random", "pruner": "none", "n_trials": 2,
        "search_space": str(ROOT / "search_spaces" / "toy.yaml")}))
    try:
        runs = [CliRunner().invoke(cli, ["run", "--config", str(config), "--storage", url])]
        report = tmp_path / "r.html"
        runs.append(CliRunner().invoke(cli, ["report", "--storage", url, "--study", name,
                                             "-o", str(report)]))
        runs.append(CliRunner().invoke(cli, ["trials", "--storage", url, "--study", "nope"]))
        assert [r.exit_code for r in runs] == [0, 0, 2], [r.output for r in runs]
        assert "?password=***" in runs[2].stderr
        html = report.read_text()
        assert "?password=***" in html
        for text in [html, *(r.output for r in runs)]:
            assert "Zq9sEcret" not in text
    finally:
        delete_study(server_url("postgresql"), name)


def test_unreachable_server_fails_fast_without_password() -> None:
    url = "postgresql+psycopg://bob:s3cret@127.0.0.1:1/hpo"
    # It gives up (the retry budget's own test is below) with one message and no password.
    with pytest.raises(StorageError, match=r"^cannot open storage 'postgresql\+psycopg://bob:\*\*\*@") as info:
        build_storage(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.slow
def test_cli_never_prints_the_password(tmp_path: Path) -> None:
    for args in (["studies"], ["worker", "--study", "x"], ["-v", "--debug", "studies"]):
        proc = subprocess.run(
            [HPO, *args, "--storage", "postgresql+psycopg://bob:s3cret@127.0.0.1:1/hpo"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert proc.returncode != 0
        assert "s3cret" not in proc.stdout + proc.stderr
        assert "bob:***@127.0.0.1" in proc.stderr


@pytest.mark.parametrize(
    ("url", "module", "package"),
    [("mysql://root:Zq9sEcret@127.0.0.1/test", "MySQLdb", "mysqlclient"),
     ("mysql+mysqlconnector://root@127.0.0.1/test", "mysql", "mysql-connector-python"),
     ("mariadb+mariadbconnector://root@127.0.0.1/test", "mariadb", "mariadb"),
     ("postgresql+psycopg2://bob@127.0.0.1/hpo", "psycopg2", "psycopg2-binary"),
     ("postgresql+pg8000://bob@127.0.0.1/hpo", "pg8000", "pg8000")],
)
def test_a_missing_driver_names_its_pip_package(url: str, module: str, package: str) -> None:
    """'pip install MySQLdb' (the module's name) does not exist; mysqlclient does."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(StorageError) as info:
        build_storage(url)
    scheme = url.split("://")[0]
    bundled = "mysql+pymysql://" if scheme.startswith(("mysql", "mariadb")) else "postgresql+psycopg://"
    assert str(info.value) == (
        f"storage {redact_url(url)!r}: its database driver {scheme!r} needs the Python module "
        f"{module!r}: pip install '{package}', or use {bundled}... (installed with hpo)")


@pytest.mark.parametrize(
    ("url", "match"),
    [("postgresql+psycopg://bob@127.0.0.1:port/hpo", "invalid literal for int"),
     ("mysql+nodriver://bob@127.0.0.1/hpo", "Can't load plugin"),
     ("sqlite:///TMP/notes.txt", "is not an SQLite database, or a damaged one")],
)
def test_a_bad_url_or_file_fails_at_once(url: str, match: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a schema-creation race is worth another attempt: other errors are reported at once
    (they used to be tried five times, three seconds of waiting for the same error)."""
    sleeps: list[float] = []
    monkeypatch.setattr("hpo.storage.time.sleep", sleeps.append)
    (tmp_path / "notes.txt").write_text("not a database, but long enough to be read as one\n" * 20)
    url = url.replace("TMP", str(tmp_path)).replace("notes.txt", "notes.db")
    (tmp_path / "notes.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)  # damaged
    with pytest.raises(StorageError, match=match):
        build_storage(url)
    assert sleeps == []


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://localhost", "unsupported storage URL"),
        ("studies.db", "unsupported storage URL"),
        ("sqlite:////no/such/dir/x.db", "directory '/no/such/dir' does not exist"),
        ("sqlite://", "is an in-memory SQLite database, which keeps nothing after the command"),
        ("sqlite:///", "is an in-memory SQLite database"),
        ("sqlite:///:memory:", "is an in-memory SQLite database"),
        ("sqlite://studies.db", r"three slashes before a relative path \(sqlite:///studies.db\)"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        build_storage(url, create=True)


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_a_missing_file_is_created_only_when_asked(tmp_path: Path, scheme: str) -> None:
    """Commands that read a study (trials, report, worker...) on a mistyped path must not
    leave a new, empty database behind; `hpo run` and `hpo create` make one."""
    path = tmp_path / "typo.db"
    kind = "SQLite database" if scheme == "sqlite" else "journal file"
    with pytest.raises(StorageError, match=f"^no {kind} at {path}: check --storage"):
        build_storage(f"{scheme}:///{path}")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageError, match=f"{tmp_path} is a directory, not a {kind}"):
        build_storage(f"{scheme}:///{tmp_path}", create=True)
    with opened(f"{scheme}:///{path}"):
        assert path.exists()
    build_storage(f"{scheme}:///{path}")  # it exists now


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"hello\n", "its first line is not a journal record"),
     (b"text,label\nfine,1\n", "its first line is not a journal record"),
     (b'{"a": 1}\n', "its first line is not a journal record"),
     (b"SQLite format 3\x00\x10\x00\x01\x01", "its first line is not a journal record"),
     (b'{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}\nnot json\n{}\n',
      "JSONDecodeError")],
    ids=["word", "csv", "json", "sqlite", "bad record"],
)
def test_a_journal_url_on_a_file_that_is_not_a_journal(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    from click.testing import CliRunner

    from hpo.cli import cli

    path = tmp_path / "j.log"
    path.write_bytes(content)
    message = f"{path} is not an optuna journal file ({reason}"
    with pytest.raises(StorageError, match=re.escape(message)):
        build_storage(f"journal:///{path}", create=True)
    result = CliRunner().invoke(cli, ["studies", "--storage", f"journal:///{path}"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {message}") and line.endswith(
        "give a journal written by optuna or hpo, or the name of a new file")
    assert path.read_bytes() == content


@pytest.mark.parametrize("create", [False, True])
def test_a_file_that_is_not_sqlite_is_refused_before_anything_is_made(
    tmp_path: Path, create: bool
) -> None:
    """A CSV given as the SQLite file used to get a '.lock' file beside it (and a cryptic
    'file is not a database'); an empty file got optuna's tables from a read-only command."""
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood,1\n")
    with pytest.raises(StorageError, match=f"{data} is not an SQLite database, or a damaged one \\(SQLite: "):
        build_storage(f"sqlite:///{data}", create=create)
    empty = tmp_path / "empty.db"
    empty.touch()
    if create:
        with opened(f"sqlite:///{empty}"):
            pass
        assert empty.stat().st_size > 0
    else:
        with pytest.raises(StorageError, match=f"^no SQLite database at {empty}: the file is empty"):
            build_storage(f"sqlite:///{empty}")
        assert empty.stat().st_size == 0
    assert not (tmp_path / "reviews.csv.lock").exists()
    if not create:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "reviews.csv"]


def test_a_fifo_as_storage_file_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "s.db"
    os.mkfifo(fifo)
    for url in (f"sqlite:///{fifo}", f"journal:///{fifo}"):
        with pytest.raises(StorageError, match=f"{fifo} is not a regular file$"):
            build_storage(url, create=True)


@pytest.mark.server
@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_a_study_name_longer_than_the_column_is_one_line(tmp_path: Path, kind: str) -> None:
    """optuna's studies.study_name is VARCHAR(512): a longer name is refused before anything
    is written (PostgreSQL and MariaDB used to fail mid-creation with a traceback)."""
    from click.testing import CliRunner

    from hpo.cli import cli

    url = backend_url(kind, tmp_path)
    name = "x" * 600
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "study": name, "objective": "toy", "sampler": "random", "pruner": "none", "n_trials": 1,
        "search_space": str(ROOT / "search_spaces" / "toy.yaml")}))
    for args, where, n in ((["create", "--config", str(config)], f"{config}: study", 600),
                           (["run", "--config", str(config), "--study", name + "y"],
                            f"{config}: study", 601),
                           (["trials", "--study", name], "--study", 600),
                           (["worker", "--study", name], "--study", 600)):
        result = CliRunner().invoke(cli, [*args, "--storage", url])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [
            f"Error: {where}: study name is {n} characters; at most 512"]
    if kind == "sqlite":
        assert not (tmp_path / "studies.db").exists()
    else:
        assert not [s for s in optuna.get_all_study_names(url) if s.startswith("xxx")]


# --- SQLite ---------------------------------------------------------------------------------


def test_sqlite_is_wal_with_busy_timeout_and_heartbeats(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with opened(f"sqlite:///{path}", StorageSettings(heartbeat_interval=2, grace_period=7)) as storage:
        backend = rdb_backend(storage)
        assert backend is not None
        assert backend.engine_kwargs["connect_args"]["timeout"] >= 30
        assert backend.get_heartbeat_interval() == 2 and backend.grace_period == 7
        assert isinstance(backend.get_heartbeat_stale_trial_callback(), RetryStaleTrialCallback)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with opened(f"sqlite:///{path}") as storage, rdb_backend(storage).engine.connect() as conn:
        # WAL's own advice: no fsync per commit; a killed process still loses nothing.
        assert conn.execute(sqlalchemy.text("PRAGMA synchronous")).scalar() == 1


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_sqlite_file_deleted_or_replaced_in_use_is_an_error(tmp_path: Path, how: str) -> None:
    """SQLite's open connections go on writing to a deleted file: trials would be told complete
    and be gone. Every later call fails instead, saying why."""
    path = tmp_path / "s.db"
    with opened(f"sqlite:///{path}", StorageSettings(heartbeat_interval=0)) as storage:
        study = optuna.create_study(storage=storage, study_name="s")
        trial = study.ask()
        if how == "deleted":
            path.unlink()
        else:
            other = tmp_path / "other.db"
            sqlite3.connect(other).close()
            other.replace(path)
        message = (f"^the SQLite file {path} was deleted or replaced during the run; results of "
                   "this run could not be stored$")
        with pytest.raises(StorageLostError, match=message):
            study.tell(trial, 1.0)
        with pytest.raises(StorageLostError, match=message):
            study.ask()


def test_heartbeats_can_be_disabled(tmp_path: Path) -> None:
    with opened(f"sqlite:///{tmp_path / 's.db'}", StorageSettings(heartbeat_interval=0)) as storage:
        assert rdb_backend(storage).get_heartbeat_interval() is None


MOUNTS = """\
/dev/vda / ext4 rw 0 0
server:/export /shared nfs4 rw 0 0
/dev/vdb /shared/local ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [("/shared/studies.db", "nfs4"), ("/shared/local/x.db", "ext4"), ("/home/x.db", "ext4"),
     ("/sharedx/y.db", "ext4")],
)
def test_filesystem_type(path: str, fstype: str) -> None:
    assert filesystem_type(Path(path), MOUNTS) == fstype


def test_sqlite_on_nfs_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("hpo.storage.filesystem_type", lambda path, mounts=None: "nfs4")
    with caplog.at_level(logging.WARNING, logger="hpo"), opened(f"sqlite:///{tmp_path / 's.db'}"):
        pass
    assert "is on a network filesystem (nfs4)" in caplog.text


# --- servers: engine settings and locks -----------------------------------------------------


@pytest.fixture(params=["postgresql", "mysql"])
def server(request: pytest.FixtureRequest) -> str:
    return server_url(request.param)


@pytest.mark.server
def test_server_engine_settings(server: str) -> None:
    with opened(server) as storage:
        engine = rdb_backend(storage).engine
        assert engine.pool.size() == 3
        assert engine.pool._recycle == 1800
        assert optuna.get_all_study_summaries(storage) is not None


@pytest.mark.server
def test_idle_connection_killed_by_the_server_is_replaced(
    server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The pre-ping of idle pooled connections hands out a live one, with no retry needed."""
    monkeypatch.setattr("hpo.storage.PING_IDLE_SECONDS", 0.0)
    postgres = server.startswith("postgresql")
    with opened(server) as storage, opened(server) as other:
        study = optuna.create_study(storage=storage)
        try:
            backend = rdb_backend(storage)
            with backend.engine.connect() as conn:  # the connection that goes back to the pool
                me = conn.execute(sqlalchemy.text(
                    "SELECT pg_backend_pid()" if postgres else "SELECT CONNECTION_ID()")).scalar()
            with rdb_backend(other).engine.connect() as admin:
                admin.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(:id)" if postgres else "KILL :id"), {"id": me})
                admin.commit()
            time.sleep(0.2)
            with caplog.at_level(logging.WARNING, logger="hpo"):
                for _ in range(backend.engine.pool.size() + 1):
                    study.set_user_attr("k", 1)
            assert "storage unreachable" not in caplog.text
        finally:
            optuna.delete_study(study_name=study.study_name, storage=storage)


@pytest.mark.server
def test_shared_lock_excludes_other_connections(server: str) -> None:
    """Two storages (two engines: as two processes) never hold the lock at once."""
    name = unique_name("lock")
    events: list[str] = []
    inside = threading.Event()
    with opened(server) as a, opened(server) as b:

        def second() -> None:
            inside.wait()
            with shared_lock(b, server, name):
                events.append("b")

        thread = threading.Thread(target=second)
        thread.start()
        with shared_lock(a, server, name):
            inside.set()
            time.sleep(0.5)
            events.append("a")
        thread.join(timeout=30)
    assert events == ["a", "b"]


@pytest.mark.server
def test_shared_lock_survives_losing_its_connection(server: str, caplog: pytest.LogCaptureFixture) -> None:
    """The server frees the lock of a dropped connection; hpo logs it and carries on."""
    name = unique_name("lock")
    kill = {"postgresql": "SELECT pg_terminate_backend(:id)", "mysql": "KILL :id"}
    ident = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
    dialect = "postgresql" if server.startswith("postgresql") else "mysql"
    with opened(server) as storage, opened(server) as other:
        engine = rdb_backend(storage).engine
        admin = rdb_backend(other).engine
        key = zlib.crc32(name.encode())
        holder = (  # the one connection that holds this test's lock, and no other
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
            "AND objid::text::bigint = :key AND objsubid = 1" if dialect == "postgresql"
            else "SELECT IS_USED_LOCK(CONCAT('hpo-', :key))"
        )
        with caplog.at_level(logging.WARNING, logger="hpo"), shared_lock(storage, server, name):
            with admin.connect() as conn:
                (pid,) = [r[0] for r in conn.execute(sqlalchemy.text(holder), {"key": key})]
                assert pid is not None
                conn.execute(sqlalchemy.text(kill[dialect]), {"id": pid})
                conn.commit()
        assert "lost the database connection that held lock" in caplog.text
        with shared_lock(storage, server, name):  # free again, and the pool still works
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(ident[dialect]))


# --- retries --------------------------------------------------------------------------------


def _operational() -> Exception:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))


def test_retrying_retries_connection_errors_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    resets: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise _operational()
        if len(calls) == 2:
            raise optuna.exceptions.StorageInternalError("commit failed") from _operational()
        return "ok"

    with caplog.at_level(logging.WARNING, logger="hpo"):
        assert retrying(flaky, lambda: 30.0, on_retry=lambda: resets.append(1))() == "ok"
    assert len(calls) == 3 and len(resets) == 2
    assert caplog.text.count("storage unreachable") == 2


def test_retrying_gives_up_after_its_budget_and_raises_other_errors_at_once() -> None:
    def down() -> None:
        raise _operational()

    with pytest.raises(sqlalchemy.exc.OperationalError):  # it gives up: the budget is spent
        retrying(down, lambda: 1.0)()

    calls: list[int] = []

    def bug() -> None:
        calls.append(1)
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError):
        retrying(bug, lambda: 30.0)()
    assert calls == [1]


def test_retried_methods_exist_on_rdbstorage() -> None:
    """A newer optuna that renames these would silently lose the retries: fail here instead."""
    for name in _RETRIED_METHODS:
        assert callable(getattr(optuna.storages.RDBStorage, name)), name


def test_storage_methods_retry_on_lost_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with opened(f"sqlite:///{tmp_path / 's.db'}", StorageSettings(db_retry_seconds=30)) as storage:
        study = optuna.create_study(storage=storage, study_name="s")
        from optuna.storages._rdb import models

        real = models.StudyModel.find_or_raise_by_id
        failures = iter([True, True])

        def find(*args: Any, **kwargs: Any) -> Any:
            if next(failures, False):
                raise _operational()
            return real(*args, **kwargs)

        monkeypatch.setattr(models.StudyModel, "find_or_raise_by_id", find)
        study.set_user_attr("k", 1)  # two lost connections, then it goes through
        assert study.user_attrs["k"] == 1


def test_a_session_left_pending_rollback_by_a_restart_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a server restart a session whose connection died mid-transaction raises
    PendingRollbackError (optuna wraps it in StorageInternalError). The soak test saw trials
    failed by it; the storage call is retried on a new session instead."""
    with opened(f"sqlite:///{tmp_path / 's.db'}", StorageSettings(db_retry_seconds=30)) as storage:
        study = optuna.create_study(storage=storage, study_name="s")
        from optuna.storages._rdb import models

        real = models.StudyModel.find_or_raise_by_id
        failures = iter([True])

        def find(*args: Any, **kwargs: Any) -> Any:
            if next(failures, False):
                try:
                    raise _operational()
                except sqlalchemy.exc.OperationalError:
                    raise sqlalchemy.exc.PendingRollbackError(
                        "Can't reconnect until invalid transaction is rolled back.", None, None
                    ) from None
            return real(*args, **kwargs)

        monkeypatch.setattr(models.StudyModel, "find_or_raise_by_id", find)
        study.set_user_attr("k", 1)
        assert study.user_attrs["k"] == 1


@pytest.mark.slow
def test_heartbeat_thread_survives_storage_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = StorageSettings(heartbeat_interval=1, grace_period=3, db_retry_seconds=0)
    with opened(f"sqlite:///{tmp_path / 's.db'}", settings) as storage:
        study = optuna.create_study(storage=storage)
        with quiet_optuna_warnings():
            trial = study.ask()
        backend = rdb_backend(storage)
        beats: list[int] = []

        def record(trial_id: int) -> None:
            beats.append(trial_id)
            if len(beats) < 3:
                raise _operational()

        backend.record_heartbeat = record  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="hpo"), _Heartbeat(study, trial._trial_id):
            deadline = time.monotonic() + 10
            while len(beats) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert len(beats) >= 3
        assert "heartbeat of trial id" in caplog.text


# --- stale trials ---------------------------------------------------------------------------


def test_stale_trial_is_failed_and_retried_without_the_dead_run_attrs(tmp_path: Path) -> None:
    settings = StorageSettings(heartbeat_interval=1, grace_period=1)
    with opened(f"sqlite:///{tmp_path / 's.db'}", settings) as storage:
        study = optuna.create_study(storage=storage)
        with quiet_optuna_warnings():
            trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("worker", {"id": "dead"})
        trial.set_user_attr("enqueued_by", "user")
        rdb_backend(storage).record_heartbeat(trial._trial_id)
        assert fail_stale(study) == []
        time.sleep(2.5)
        assert fail_stale(study) == [trial.number]
        dead, retry = study.get_trials()
        assert dead.state == TrialState.FAIL
        assert dead.user_attrs["fail_reason"].startswith("no heartbeat for 1 s")
        assert retry.state == TrialState.WAITING and retry.params == dead.params
        assert retry.user_attrs == {"enqueued_by": "user"}
        assert retry.system_attrs["retry_history"] == [dead.number]
        assert budget_state(study) == {"counted": 1, "running": 0, "waiting": 1, "finished": 0,
                                       "total": 2}


def test_running_trial_without_any_heartbeat_is_stale_after_grace(tmp_path: Path) -> None:
    """A worker killed between creating a trial and its first heartbeat leaves an orphan."""
    settings = StorageSettings(heartbeat_interval=1, grace_period=1)
    with opened(f"sqlite:///{tmp_path / 's.db'}", settings) as storage:
        study = optuna.create_study(storage=storage)
        with quiet_optuna_warnings():
            orphan = study.ask()
        assert fail_stale(study) == []  # first seen now
        time.sleep(1.5)
        assert fail_stale(study) == [orphan.number]
        assert study.get_trials()[1].state == TrialState.WAITING


@pytest.mark.slow
def test_max_retry_bounds_retries(tmp_path: Path) -> None:
    settings = StorageSettings(heartbeat_interval=1, grace_period=1, max_retry=1)
    with opened(f"sqlite:///{tmp_path / 's.db'}", settings) as storage:
        study = optuna.create_study(storage=storage)
        for _ in range(2):
            with quiet_optuna_warnings():
                trial = study.ask()
            rdb_backend(storage).record_heartbeat(trial._trial_id)
            time.sleep(2.2)
            fail_stale(study)
        states = [t.state for t in study.get_trials()]
        assert states == [TrialState.FAIL, TrialState.FAIL]  # retried once, then not again
        assert budget_state(study)["counted"] == 1


# --- schema creation races ------------------------------------------------------------------


def _race_config(tmp_path: Path, study: str) -> Path:
    path = tmp_path / "race.yaml"
    path.write_text(yaml.safe_dump({
        "study": study, "objective": "toy", "n_steps": 2, "sampler": {"name": "random"},
        "pruner": {"name": "none"}, "search_space": str(ROOT / "search_spaces" / "toy.yaml"),
        "n_trials": 8, "heartbeat_interval": 1, "grace_period": 5,
    }))
    return path


def _race(tmp_path: Path, url: str, n: int) -> None:
    """``n`` ``hpo run`` processes start at once on a brand-new database."""
    study = unique_name("race")
    config = _race_config(tmp_path, study)
    procs = [
        subprocess.Popen([HPO, "-q", "run", "--config", str(config), "--storage", url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for _ in range(n)
    ]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err, err[-2000:]
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    finally:
        storage.engine.dispose()
        delete_study(url, study)


@pytest.mark.slow
def test_processes_start_together_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    _race(tmp_path, f"sqlite:///{tmp_path / 'fresh.db'}", 4)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_processes_start_together_on_a_fresh_database(tmp_path: Path, kind: str) -> None:
    with fresh_database(kind) as url:
        _race(tmp_path, url, 4)


# --- the one-statement writes match optuna's ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


@pytest.fixture
def fast_study(any_url: str) -> Iterator[tuple[optuna.Study, Any]]:
    """A study with heartbeats on ``any_url`` and its RDB backend; deleted afterwards."""
    with opened(any_url, StorageSettings(heartbeat_interval=5, grace_period=10)) as storage:
        study = optuna.create_study(storage=storage, study_name=unique_name("fast"))
        try:
            yield study, rdb_backend(storage)
        finally:
            optuna.delete_study(study_name=study.study_name, storage=storage)


@pytest.mark.server
def test_fast_writes_store_what_optuna_stores(fast_study: tuple[optuna.Study, Any]) -> None:
    study, backend = fast_study
    with quiet_optuna_warnings():
        trial = study.ask()
    tid = trial._trial_id
    for step, value in ((1, 0.5), (2, float("inf")), (3, float("-inf")), (4, float("nan"))):
        backend.set_trial_intermediate_value(tid, step, value)
    backend.set_trial_intermediate_value(tid, 1, 0.25)  # a step reported again: updated
    backend.set_trial_user_attr(tid, "a", {"x": [1, 2]})
    backend.set_trial_user_attr(tid, "a", "updated")
    backend.set_trial_user_attr(tid, "b", 3)
    backend.record_heartbeat(tid)
    backend.record_heartbeat(tid)
    # The trial as Trial() got it (remembered from its creation) is what is stored.
    read_back = optuna.storages.RDBStorage.get_trial(backend, tid)
    created = trial._cached_frozen_trial
    assert (created.number, created.state, created._trial_id, created.params) == (
        read_back.number, read_back.state, read_back._trial_id, read_back.params)
    # MySQL keeps whole seconds (as optuna's own cache of a new trial does not).
    assert abs((created.datetime_start - read_back.datetime_start).total_seconds()) < 1
    stored = backend.get_trial(tid)
    values = stored.intermediate_values
    assert values[1] == 0.25 and values[2] == float("inf") and values[3] == float("-inf")
    assert values[4] != values[4]  # nan
    assert stored.user_attrs == {"a": "updated", "b": 3}
    assert fail_stale(study) == []  # the heartbeat row exists and is fresh
    study.tell(trial, 1.0)
    for write in (lambda: backend.set_trial_intermediate_value(tid, 9, 1.0),
                  lambda: backend.set_trial_user_attr(tid, "c", 1)):
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            write()
    assert backend.get_trial(tid).user_attrs == {"a": "updated", "b": 3}


@pytest.fixture(params=["postgresql", "mysql"])
def server_only(request: pytest.FixtureRequest) -> str:
    return server_url(request.param)


@pytest.mark.slow
@pytest.mark.server
def test_take_counts_and_creates_in_one_transaction_within_the_budget(server_only: str) -> None:
    """8 threads, each on its own storage (its own connections), race for a budget of 20."""
    import threading

    from hpo._optuna import add_to_storage_cache

    name = unique_name("take")
    settings = StorageSettings(heartbeat_interval=5, grace_period=10)
    with opened(server_only, settings) as storage:
        optuna.create_study(storage=storage, study_name=name)
    budget, taken, errors = 20, [], []

    def allow(counts: dict[str, int], n_retries: int) -> bool:
        return sum(counts.values()) - n_retries < budget

    def worker() -> None:
        try:
            with opened(server_only, settings) as mine:
                study = optuna.load_study(study_name=name, storage=mine)
                backend = rdb_backend(mine)
                while True:
                    frozen, counts, _ = backend.create_trial_if(study._study_id, allow, True)
                    if frozen is None:
                        assert sum(counts.values()) == budget
                        return
                    assert frozen.number == sum(counts.values())  # numbered after the others
                    add_to_storage_cache(study._storage, study._study_id, frozen)
                    trial = optuna.Trial(study, frozen._trial_id)
                    trial.suggest_float("x", 0, 1)  # the cache knows the trial
                    study.tell(trial, 1.0)
                    taken.append(frozen.number)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert sorted(taken) == list(range(budget))
        with opened(server_only) as storage:
            trials = optuna.load_study(study_name=name, storage=storage).trials
            assert [t.number for t in trials] == list(range(budget))
            assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
            # The first heartbeat went in with the trial: none is stale or missing.
            with rdb_backend(storage).engine.connect() as conn:
                import sqlalchemy
                from optuna.storages._rdb import models
                ids = [t._trial_id for t in trials]
                beats = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
                    models.TrialHeartbeatModel).where(models.TrialHeartbeatModel.trial_id.in_(ids))).scalar()
            assert beats == budget
    finally:
        delete_study(server_only, name)


def test_take_in_one_transaction_is_for_servers_only(tmp_path: Path) -> None:
    with opened(f"sqlite:///{tmp_path / 's.db'}") as storage:
        study = optuna.create_study(storage=storage)
        assert rdb_backend(storage).create_trial_if(study._study_id, lambda c, r: True, True) is None


@pytest.mark.server
def test_fast_params_and_tell_store_what_optuna_stores(fast_study: tuple[optuna.Study, Any]) -> None:
    study, backend = fast_study
    with quiet_optuna_warnings():
        for value in (3.0, float("inf"), None):
            trial = study.ask()  # the second and third ask use the fast path
            x = trial.suggest_float("x", 0.0, 1.0)
            n = trial.suggest_int("n", 1, 8)
            c = trial.suggest_categorical("c", ["a", "b"])
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
            stored = optuna.storages.RDBStorage.get_trial(backend, trial._trial_id)
            assert stored.params == {"x": x, "n": n, "c": c}
            assert stored.distributions == trial.distributions
            assert stored.values == (None if value is None else [value])
            assert stored.state == (optuna.trial.TrialState.PRUNED if value is None
                                    else optuna.trial.TrialState.COMPLETE)
            assert stored.datetime_complete is not None
        trial = study.ask()
        with pytest.raises(ValueError, match="different distribution kind"):
            trial.suggest_int("x", 0, 5)  # another distribution for "x": refused
        study.tell(trial, 1.0)
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            backend.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [2.0])
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            backend._set_trial_param(trial._trial_id, "y", 0.5,
                                     optuna.distributions.FloatDistribution(0, 1),
                                     optuna.distributions.FloatDistribution(0, 1))
    assert optuna.storages.RDBStorage.get_trial(backend, trial._trial_id).values == [1.0]
    assert study.best_value == 1.0

