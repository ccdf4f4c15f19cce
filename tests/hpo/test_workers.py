"""Distributed workers: real ``hpo create`` / ``hpo worker`` processes on one study.

They run the installed ``hpo`` script in subprocesses with the toy objective (the same worker
code path as training), on SQLite and, where the servers run, PostgreSQL and MariaDB
(``tests/conftest_servers.py``: skipped off CI when a server is down, failed on CI).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_servers import backend_url  # noqa: E402
from conftest_servers import can_restart_postgres  # noqa: E402
from conftest_servers import delete_study  # noqa: E402
from conftest_servers import ensure_postgres_running  # noqa: E402
from conftest_servers import postgres_ready  # noqa: E402
from conftest_servers import restart_postgres  # noqa: E402
from conftest_servers import server_url  # noqa: E402
from conftest_servers import unique_name  # noqa: E402

HPO = str(Path(sys.executable).with_name("hpo"))
ROOT = Path(__file__).resolve().parents[2]
SPACE = str(ROOT / "search_spaces" / "toy.yaml")
# Several worker processes per test, kills, server restarts: part of `make test`, not test-fast.
pytestmark = pytest.mark.slow
WAIT = 120  # seconds any group of workers may take before the test gives up


@dataclass
class Proc:
    """One ``hpo`` process with its output files."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = WAIT) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout)


class Runner:
    """Starts ``hpo`` processes in ``tmp_path`` and kills any left at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.procs: list[Proc] = []
        self.env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}

    def start(self, *args: str) -> Proc:
        n = len(self.procs)
        out, err = self.dir / f"proc{n}.out", self.dir / f"proc{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen([HPO, *args], stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                     cwd=self.dir, env=self.env)
        proc = Proc(popen, out, err)
        self.procs.append(proc)
        return proc

    def run(self, *args: str) -> Proc:
        proc = self.start(*args)
        proc.wait()
        return proc

    def workers(self, n: int, url: str, study: str) -> list[Proc]:
        return [self.start("worker", "--storage", url, "--study", study, "--format", "json")
                for _ in range(n)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait()


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


@contextlib.contextmanager
def study_in(url: str) -> Iterator[str]:
    """A unique study name, deleted from ``url`` afterwards."""
    name = unique_name("workers")
    try:
        yield name
    finally:
        delete_study(url, name)


def write_config(tmp_path: Path, study: str, **keys: Any) -> Path:
    config = {
        "study": study,
        "objective": "toy",
        "n_steps": 4,
        "sleep": 0.02,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},  # every trial completes: counts are exact
        "search_space": SPACE,
        "n_trials": 12,
        "heartbeat_interval": 1,
        "grace_period": 3,
        "max_retry": 3,
        **keys,
    }
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Snapshot:
    """A study as a plain optuna client sees it, read at one moment."""

    trials: list[optuna.trial.FrozenTrial]
    user_attrs: dict[str, Any]

    def get_trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.trials if states is None or t.state in states]


def load(url: str, name: str) -> Snapshot:
    """Read study ``name`` with a plain optuna storage (closed again at once)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return Snapshot(study.get_trials(), study.user_attrs)
    finally:
        storage.engine.dispose()


def assert_clean(proc: Proc, rc: int = 0) -> None:
    assert proc.wait() == rc, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def assert_budget_reached(study: Snapshot, budget: int, workers: list[Proc]) -> None:
    """Exactly ``budget`` trials counted, each run by one worker, failures only if retried.

    ``workers``: the processes that ran the study; those killed have no summary to check.
    """
    trials = study.get_trials()
    states = collections.Counter(t.state for t in trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert states[TrialState.COMPLETE] == budget, states
    assert set(states) <= {TrialState.COMPLETE, TrialState.FAIL}, states
    # A failed trial is there only because its worker died or stopped: it was retried.
    for t in failed:
        assert any(t.number in r.system_attrs.get("retry_history", []) for r in trials), t.number
    assert len(trials) == budget + len(failed)
    for t in trials:
        worker = t.user_attrs["worker"]  # every trial that ran says who ran it, and when
        assert set(worker) == {"host", "pid", "id", "started_at"}
    if all(w.popen.returncode == 0 for w in workers):
        ids = {w.summary()["worker"]["id"] for w in workers}
        assert {t.user_attrs["worker"]["id"] for t in trials} <= ids
        # Every finished trial was told by exactly one worker.
        assert sum(w.summary()["ran"] for w in workers) == budget


def running_trial(
    url: str, name: str, min_steps: int, all_taken: int = 0, timeout: float = 60
) -> optuna.trial.FrozenTrial:
    """Wait for a RUNNING trial that has reported at least ``min_steps`` steps (and, with
    ``all_taken``, for that many trials to exist: the whole budget is taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):
            trials = load(url, name).trials
            if len(trials) >= all_taken:
                for t in trials:
                    if (t.state == TrialState.RUNNING and len(t.intermediate_values) >= min_steps
                            and "worker" in t.user_attrs):
                        return t
        time.sleep(0.05)
    raise AssertionError(f"no running trial with {min_steps} steps within {timeout} s")


# --- create ---------------------------------------------------------------------------------


def test_create_stores_config_and_is_idempotent(runner: Runner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    config = write_config(tmp_path, "created")
    first = runner.run("create", "--config", str(config), "--storage", url)
    assert_clean(first)
    assert first.stdout.strip() == "created"
    study = load(url, "created")
    assert study.trials == []
    assert study.user_attrs["hpo_config"]["n_trials"] == 12
    assert set(study.user_attrs) >= {"search_space", "data_fingerprint", "versions", "created_at"}
    before = study.user_attrs

    again = runner.run("create", "--config", str(config), "--storage", url)
    assert_clean(again)
    assert load(url, "created").user_attrs == before

    changed = runner.run("create", "--config", str(config), "--storage", url, "--n-trials", "99")
    assert changed.wait() == 2
    assert "exists with a different n_trials" in changed.stderr
    assert load(url, "created").user_attrs == before
    assert load(url, "created").trials == []


def test_worker_on_missing_study_is_refused(runner: Runner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="other", storage=url)  # the database exists; the study not
    proc = runner.run("worker", "--storage", url, "--study", "nope")
    assert proc.wait() == 2
    assert "no study named 'nope'" in proc.stderr


def test_worker_with_other_data_is_refused(runner: Runner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    data = tmp_path / "data.txt"
    data.write_text("the study's data\n")
    config = write_config(tmp_path, "data", data_file=str(data))
    assert_clean(runner.run("create", "--config", str(config), "--storage", url))
    before = load(url, "data")
    expected = before.user_attrs["data_fingerprint"]

    data.write_text("this machine's data differs\n")
    proc = runner.run("worker", "--storage", url, "--study", "data")
    assert proc.wait() == 2
    assert f"was created on data {expected}" in proc.stderr
    ours = proc.stderr.split("this worker's data has fingerprint ")[1].split()[0]
    assert ours != expected and len(ours) == len(expected)
    after = load(url, "data")
    assert after.trials == [] and after.user_attrs == before.user_attrs


# --- many workers, one budget ---------------------------------------------------------------


@pytest.mark.server
def test_workers_share_one_budget(runner: Runner, tmp_path: Path, storage_url: str) -> None:
    """4 workers (2 on SQLite) on one study with a budget of 40: exactly 40 trials, each told
    by exactly one worker, and every worker leaves cleanly.

    Not asked: that every worker ran a trial. On a loaded machine one worker started after
    the others had used the 40 short trials up (it ran none, correctly), and this test failed
    on MariaDB. Workers racing for the budget at the same instant is the job of
    test_budget_is_exact_under_contention, whose processes start together on a go file.
    """
    n_workers = 2 if storage_url.startswith("sqlite") else 4
    with study_in(storage_url) as name:
        config = write_config(tmp_path, name, n_trials=40, n_steps=3, sleep=0.01)
        assert_clean(runner.run("create", "--config", str(config), "--storage", storage_url))
        workers = runner.workers(n_workers, storage_url, name)
        for w in workers:
            assert_clean(w)  # also a worker that found the budget used up: exit 0
        study = load(storage_url, name)
        assert_budget_reached(study, 40, workers)
        assert len(study.trials) == 40  # nothing failed, nothing retried
        summaries = [w.summary() for w in workers]
        assert all(s["counts"] == {"complete": 40} for s in summaries)
        # Each trial was run and told by the one worker it names, and no trial twice.
        told = collections.Counter(t.user_attrs["worker"]["id"] for t in study.trials)
        assert told == {s["worker"]["id"]: s["ran"] for s in summaries if s["ran"]}
        assert len({tuple(t.params.values()) for t in study.trials}) == 40  # seeds differ
        for w in workers:
            assert "database is locked" not in w.stderr


def test_a_second_process_on_one_sqlite_file_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What SQLite is (and is not) for, told once another process runs a trial on the file:
    fine on this machine, never across machines. (Deterministic: the trials of the others
    are made here, not raced for by real workers.)"""
    import logging
    import socket

    from hpo.worker import _SQLiteSharing

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    other = study.ask()
    other.set_user_attr("worker", {"host": socket.gethostname(), "pid": 1, "id": "other"})
    mine = study.ask()

    def warnings_of(check: Callable[[], None]) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hpo"):
            check()
        # Other processes of this machine are fine (info); another machine is a warning.
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name == "hpo"]

    sharing = _SQLiteSharing(url)
    # Nothing else ran when this worker took its trial: no warning.
    assert warnings_of(lambda: sharing.check(study, mine.number, {"running": 0})) == []
    (line,) = warnings_of(lambda: [sharing.check(study, mine.number, {"running": 1})
                                   for _ in range(2)])  # told once only
    assert "several processes use the SQLite file" in line and "(on this machine: fine)" in line
    assert line.startswith("INFO ")
    other.set_user_attr("worker", {"host": "node-7", "pid": 1, "id": "far"})
    (line,) = warnings_of(lambda: _SQLiteSharing(url).check(study, mine.number, {"running": 1}))
    assert "(also on node-7: never do that)" in line and line.startswith("WARNING ")


_TAKE_LOOP = """
import os, sys, time
from pathlib import Path
from hpo.study import load_study
from hpo.worker import _take_trial
url, name, sync = sys.argv[1:4]
study, cfg, _ = load_study(url, name)
Path(f"{sync}.{os.getpid()}.ready").touch()
while not Path(f"{sync}.go").exists():
    time.sleep(0.002)
n = 0
while True:
    trial, _ = _take_trial(study, cfg)
    if trial is None:
        break
    study.tell(trial, 0.0)
    n += 1
print(n)
"""


@pytest.mark.server
def test_budget_is_exact_under_contention(runner: Runner, tmp_path: Path, storage_url: str) -> None:
    """4 processes that only take and tell trials, released at the same instant: the budget
    lock alone keeps them at the budget (without it they overshoot)."""
    with study_in(storage_url) as name:
        config = write_config(tmp_path, name, n_trials=40)
        assert_clean(runner.run("create", "--config", str(config), "--storage", storage_url))
        sync = str(tmp_path / "sync")
        procs = [
            subprocess.Popen([sys.executable, "-c", _TAKE_LOOP, storage_url, name, sync],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
            for _ in range(4)
        ]
        try:
            deadline = time.monotonic() + WAIT
            while len(list(tmp_path.glob("sync.*.ready"))) < len(procs):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
                time.sleep(0.05)
            Path(f"{sync}.go").touch()
            outputs = [p.communicate(timeout=WAIT) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err[-2000:]
        assert sum(int(out) for out, _ in outputs) == 40
        states = collections.Counter(t.state for t in load(storage_url, name).trials)
        assert states == {TrialState.COMPLETE: 40}


# --- workers that die or are stopped --------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_worker_trial_is_retried_from_checkpoint(
    runner: Runner, tmp_path: Path, backend: str
) -> None:
    """SIGKILL one of 3 workers mid-trial once the whole budget is taken: its trial fails, the
    survivors wait for it (they must not leave), retry it from its checkpoint, and the study
    still reaches its budget."""
    url = backend_url(backend, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    with study_in(url) as name:
        # Trials of 40 steps: seconds left after the 2nd step for the kill to land mid-trial,
        # also on a loaded machine.
        config = write_config(tmp_path, name, n_trials=3, n_steps=40, sleep=0.1,
                              checkpoint_dir=str(checkpoints))
        assert_clean(runner.run("create", "--config", str(config), "--storage", url))
        workers = runner.workers(3, url, name)
        victim_trial = running_trial(url, name, min_steps=2, all_taken=3)
        victim = next(w for w in workers if w.pid == victim_trial.user_attrs["worker"]["pid"])
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
        survivors = [w for w in workers if w is not victim]
        for w in survivors:
            assert_clean(w)

        study = load(url, name)
        assert_budget_reached(study, 3, workers)
        dead = study.trials[victim_trial.number]
        assert dead.state == TrialState.FAIL
        assert dead.user_attrs["fail_reason"].startswith("no heartbeat for 3 s")
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
        assert retry.state == TrialState.COMPLETE
        assert retry.params == dead.params
        assert retry.user_attrs["worker"]["pid"] != victim.pid
        # It resumed from the dead trial's last checkpoint, not from scratch.
        resumed = retry.user_attrs["resumed_from"]
        assert resumed["trial"] == dead.number and resumed["step"] >= 2
        assert len(study.trials) == 4


@pytest.mark.server
@pytest.mark.parametrize(("backend", "signum"), [("sqlite", signal.SIGINT),
                                                 ("postgresql", signal.SIGTERM)],
                         ids=["sqlite-SIGINT", "postgresql-SIGTERM"])
def test_sigterm_hands_trial_back(
    runner: Runner, tmp_path: Path, backend: str, signum: signal.Signals
) -> None:
    """SIGTERM (or SIGINT) a worker mid-trial: it exits cleanly (143 or 130: 128 + the signal)
    and another worker finishes its trial."""
    url = backend_url(backend, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    with study_in(url) as name:
        # Trials of 40 steps: seconds left after the 2nd step for the signal to land mid-trial,
        # also on a loaded machine.
        config = write_config(tmp_path, name, n_trials=3, n_steps=40, sleep=0.06,
                              checkpoint_dir=str(checkpoints))
        assert_clean(runner.run("create", "--config", str(config), "--storage", url))
        workers = runner.workers(2, url, name)
        trial = running_trial(url, name, min_steps=2)
        stopped = next(w for w in workers if w.pid == trial.user_attrs["worker"]["pid"])
        other = next(w for w in workers if w is not stopped)
        os.kill(stopped.pid, signum)
        assert_clean(stopped, rc=128 + signum)
        assert stopped.summary()["interrupted"] == signum.name
        assert_clean(other)

        study = load(url, name)
        assert_budget_reached(study, 3, workers)
        handed = study.trials[trial.number]
        assert handed.state == TrialState.FAIL
        assert handed.user_attrs["fail_reason"].startswith(f"interrupted by {signum.name}")
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert retry.state == TrialState.COMPLETE and retry.params == handed.params
        assert retry.user_attrs["worker"]["id"] == other.summary()["worker"]["id"]
        assert retry.user_attrs["resumed_from"]["trial"] == trial.number
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]


# --- the database goes away for a while -----------------------------------------------------


@pytest.mark.server
@pytest.mark.serial
def test_postgres_restart_mid_study(runner: Runner, tmp_path: Path) -> None:
    """Restart the real PostgreSQL while 3 workers run: they retry, carry on, and finish."""
    url = server_url("postgresql")
    reason = can_restart_postgres()
    if reason is not None:
        pytest.skip(reason)
    with study_in(url) as name:
        try:
            config = write_config(tmp_path, name, n_trials=24, n_steps=5, sleep=0.06)
            assert_clean(runner.run("create", "--config", str(config), "--storage", url))
            workers = runner.workers(3, url, name)
            deadline = time.monotonic() + 60
            while len(load(url, name).get_trials(states=(TrialState.COMPLETE,))) < 4:
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.1)
            restart_postgres()
            assert postgres_ready(timeout=30)
            for w in workers:
                assert_clean(w)
            assert any("storage unreachable" in w.stderr for w in workers)
            study = load(url, name)
            assert_budget_reached(study, 24, workers)
        finally:
            ensure_postgres_running()


def test_trial_failed_as_stale_under_a_live_worker_is_let_go(tmp_path: Path) -> None:
    """After an outage longer than the grace period another worker may fail a trial that is in
    fact alive; its worker then drops it (the retry runs elsewhere) instead of crashing."""
    from hpo.config import config_from_dict
    from hpo.search_space import search_space_from_dict
    from hpo.study import create_study
    from hpo.worker import _run_one
    from hpo.worker import _Signals
    from hpo.worker import _take_trial
    from objectives import ObjectiveSpec

    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg = config_from_dict(yaml.safe_load(write_config(tmp_path, "stale").read_text()) | {"storage": url})
    study = create_study(cfg)
    space = search_space_from_dict(study.user_attrs["search_space"])
    trial, _ = _take_trial(study, cfg)

    def objective(trial: optuna.Trial, params: dict[str, Any], config: Any) -> float:
        trial.report(1.0, 1)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # "another worker"
        trial.report(0.5, 2)  # raises UpdateFinishedTrialError: the trial is not ours any more
        return 0.5

    spec = ObjectiveSpec(fn=objective, config_from_dict=dict, config_to_dict=dict, metrics={})
    worker = {"host": "h", "pid": 1, "id": "w"}
    assert _run_one(study, trial, spec, cfg, space, worker, _Signals()) is None
    assert study.trials[0].state == TrialState.FAIL
