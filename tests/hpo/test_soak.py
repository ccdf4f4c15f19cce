"""Soak test of "nothing lost": 8 real workers on PostgreSQL, killed at random, one restart.

8 ``hpo worker`` processes share a budget of 250 toy trials; workers are killed with SIGKILL
at seeded-random moments (mostly while they run a trial) and replaced at once, so 8 keep
running; the PostgreSQL server is restarted once a third of the way in. At the end every
trial is accounted for: exactly 250 finished as the budget counts them, nothing running or
waiting, every killed trial failed and retried with its parameters, and no parameter set
finished twice. Its figures are in BENCHMARKS.md ("Soak test"):

    CI=true .venv/bin/python -m pytest -s -m slow tests/hpo/test_soak.py

It prints one line of figures (``soak: ...``). Slow (well under a minute of wall time on 2
cores), and it restarts the local PostgreSQL: it needs root and a Debian cluster (see
conftest_servers), and skips where it cannot restart PostgreSQL.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_workers import Proc
from test_workers import Runner
from test_workers import assert_clean
from test_workers import load
from test_workers import study_in
from test_workers import write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_servers import can_restart_postgres  # noqa: E402
from conftest_servers import ensure_postgres_running  # noqa: E402
from conftest_servers import postgres_ready  # noqa: E402
from conftest_servers import restart_postgres  # noqa: E402
from conftest_servers import server_url  # noqa: E402

BUDGET = 250
N_WORKERS = 8
N_KILLS = 12
SEED = 15
WAIT = 600  # seconds the whole soak may take before the test gives up


def _finished(url: str, name: str) -> tuple[int, list] | None:
    """Finished trials as the budget counts them, and all trials; None while unreachable."""
    try:
        trials = load(url, name).trials
    except Exception:  # the server is restarting
        return None
    retries = sum(1 for t in trials if t.system_attrs.get("retry_history"))
    open_ = sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING))
    return len(trials) - retries - open_, trials


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.serial
def test_soak_nothing_lost(tmp_path: Path) -> None:
    import optuna

    from hpo.storage import build_storage
    from hpo.storage import rdb_backend
    from hpo.study import budget_state

    url = server_url("postgresql")
    reason = can_restart_postgres()
    if reason is not None:
        pytest.skip(reason)
    rng = random.Random(SEED)
    runner = Runner(tmp_path)
    with study_in(url) as name:
        try:
            config = write_config(
                tmp_path, name, n_trials=BUDGET, n_steps=6, sleep=0.2,
                pruner={"name": "median", "n_startup_trials": 10, "warmup": 0.5},
                heartbeat_interval=1, grace_period=5, max_retry=50,
            )
            assert_clean(runner.run("create", "--config", str(config), "--storage", url))
            t0 = time.monotonic()
            live: list[Proc] = runner.workers(N_WORKERS, url, name)
            kills: list[tuple[int, int | None]] = []  # (pid, the trial it was running, if any)
            restarted = False
            while True:
                assert time.monotonic() - t0 < WAIT, "the soak did not finish in time"
                time.sleep(rng.uniform(0.2, 1.0))  # a random moment
                seen = _finished(url, name)
                if seen is None:
                    continue
                finished, trials = seen
                if finished >= BUDGET or all(w.popen.poll() is not None for w in live):
                    break
                pids = {w.pid: w for w in live if w.popen.poll() is None}
                if not restarted and finished >= BUDGET // 3:
                    # Once every live worker has taken a trial: a worker still starting up
                    # would meet the restart while it opens the storage, and exit 2 (a worker
                    # that cannot reach its database at start says so and stops).
                    if pids.keys() - {t.user_attrs.get("worker", {}).get("pid") for t in trials}:
                        continue
                    restart_postgres()
                    assert postgres_ready(timeout=60)
                    restarted = True
                    continue
                if len(kills) >= N_KILLS or rng.random() > 0.6:  # kills spread over the run
                    continue
                busy = sorted((t.number, t.user_attrs["worker"]["pid"]) for t in trials
                              if t.state == TrialState.RUNNING and "worker" in t.user_attrs
                              and t.user_attrs["worker"]["pid"] in pids)
                if busy and rng.random() < 0.8:  # mostly mid-trial, sometimes anywhere
                    number, pid = rng.choice(busy)
                elif pids:
                    number, pid = None, rng.choice(sorted(pids))
                else:
                    continue
                os.kill(pid, signal.SIGKILL)
                assert pids[pid].wait() == -signal.SIGKILL
                kills.append((pid, number))
                live[live.index(pids[pid])] = runner.workers(1, url, name)[0]
            for w in live:
                assert_clean(w)
            wall = time.monotonic() - t0
            assert restarted, "the budget was used up before the restart"
        finally:
            runner.close()
            ensure_postgres_running()

        trials = load(url, name).trials
        states = collections.Counter(t.state for t in trials)
        # The trial each retry repeats is the last of its retry_history ("failed_trial" is the
        # first of a chain: a retry that failed again is retried with that same number).
        retry_of = {t.system_attrs["retry_history"][-1]: t for t in trials
                    if t.system_attrs.get("retry_history")}
        # Exactly the budget, as hpo counts it (one query), and nothing left running/waiting.
        storage = build_storage(url)
        try:
            counted = budget_state(optuna.load_study(study_name=name, storage=storage))
        finally:
            rdb_backend(storage).engine.dispose()
        assert counted["finished"] == BUDGET and counted["running"] == counted["waiting"] == 0
        assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], states
        # Every failed trial was retried with its parameters: the toy objective never fails by
        # itself, so failures are trials of killed workers (or failed as stale over the restart).
        failed = [t for t in trials if t.state == TrialState.FAIL]
        not_retried = [(t.number, t.user_attrs.get("fail_reason")) for t in failed
                       if t.number not in retry_of]
        assert not not_retried, not_retried
        for t in failed:
            assert t.params.items() <= retry_of[t.number].params.items(), t.number
        assert len(trials) - len(retry_of) == BUDGET
        killed_pids = {pid for pid, _ in kills}
        killed = [t for t in failed if t.user_attrs.get("worker", {}).get("pid") in killed_pids]
        assert killed, "no kill hit a running trial: the soak tested nothing"
        # Each parameter set finished exactly once: retries repeat it, nothing else does.
        done = [t for t in trials if t.state != TrialState.FAIL]
        params = collections.Counter(tuple(sorted(t.params.items())) for t in done)
        assert max(params.values()) == 1, [p for p, n in params.items() if n > 1]
        print(f"\nsoak: {BUDGET} trials counted ({states[TrialState.COMPLETE]} complete, "
              f"{states[TrialState.PRUNED]} pruned), {len(trials)} trial rows; "
              f"{len(kills)} SIGKILLs, {len(killed)} of them mid-trial; {len(failed)} trials "
              f"failed (killed or stale) and retried; 1 PostgreSQL restart; "
              f"{N_WORKERS + len(kills)} worker processes; wall {wall:.0f} s")
