"""The worker loop of ``hpo run`` and ``hpo worker``: take a trial, run it, tell it, repeat.

A worker runs trials until the study's global budget (trials, wall time, training examples or
tokens: see :mod:`hpo.budget`) is used up. A worker that dies costs one retried trial: its trial's heartbeat stops, the
next worker fails it and enqueues the same parameters again, and the objective may resume from
the dead trial's last checkpoint. A worker stopped by SIGTERM/SIGINT hands its trial back at
once. Workers stay while a trial they might have to take over is running.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from hpo import _optuna
from hpo.config import StudyConfig
from hpo.search_space import SearchSpace
from hpo.storage import RetryStaleTrialCallback
from hpo.storage import quiet_optuna_warnings
from hpo.storage import rdb_backend
from hpo.storage import sqlite_path
from hpo.study import _heartbeats_on
from hpo.study import _now
from hpo.study import _quiet_optuna
from hpo.study import _state
from hpo.study import budget_lock
from hpo.study import budget_state
from hpo.study import fail_stale
from objectives import record
from objectives.record import TrialRecord

if TYPE_CHECKING:
    import optuna
    from optuna.trial import TrialState

    from objectives import ObjectiveSpec

__all__ = ["RunSummary", "WorkerInterrupted", "best_trial_info", "run_worker"]

_LOG = logging.getLogger("hpo")


class WorkerInterrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT: hand the running trial back and stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RunSummary:
    """What one worker did, and where the study stands."""

    study: str
    counts: dict[str, int] = field(default_factory=dict)  # study-wide trials by state
    ran: int = 0  # trials this worker finished
    interrupted: str | None = None  # signal name when stopped by SIGINT/SIGTERM
    best: dict[str, Any] | None = None  # number, value, params, user attrs of the best trial
    seconds: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)  # host, pid and id of this worker
    stopped: str | None = None  # why a stop rule stopped the study early


class _LocalWorkers:
    """Counts live hpo workers on this machine, so that they split its cores."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.gettempdir()) / f"hpo-workers-{os.getuid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.me = self.dir / str(os.getpid())
        self.me.touch()

    def count(self) -> int:
        live = 0
        for f in self.dir.iterdir():
            try:
                os.kill(int(f.name), 0)
                live += 1
            except (ValueError, ProcessLookupError):
                f.unlink(missing_ok=True)
            except PermissionError:
                live += 1
        return max(live, 1)

    def close(self) -> None:
        self.me.unlink(missing_ok=True)


def _set_threads(threads: int | None, workers: _LocalWorkers) -> int:
    n = threads or max(1, (os.cpu_count() or 1) // workers.count())
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # for a torch imported later in this process
    return n


def _counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def best_trial_info(study: optuna.Study) -> dict[str, Any] | None:
    """The best complete trial as a JSON-able dict (with several objectives: ``pareto``, the
    feasible Pareto front), or None if no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        return {"pareto": [{"number": t.number, "values": t.values, "params": t.params,
                            "user_attrs": {k: v for k, v in t.user_attrs.items()
                                           if k not in ("history", "intermediate")}}
                           for t in front]}
    t = study.best_trial
    attrs = {k: v for k, v in t.user_attrs.items() if k != "history"}
    return {"number": t.number, "value": t.value, "params": t.params, "user_attrs": attrs}


class _Signals:
    """SIGTERM/SIGINT handling: raise :class:`WorkerInterrupted` only where that is safe.

    Inside :meth:`interruptible` (the objective, an idle wait) a signal raises at once; elsewhere
    (the budget lock, taking or telling a trial) it is remembered and raised at the next
    interruptible point, so a signal never leaves a half-written trial or a held lock behind.
    A second signal (2 s or more after the first) stops the worker at once, wherever it is
    (its trial, if any, is then retried once its heartbeat is stale).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._first = 0.0
        self._interruptible = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            # Batch systems often signal the whole process group and the job script forwards
            # the signal too: only a signal that comes later is a second one.
            if time.monotonic() - self._first < 2.0:
                return
            _LOG.warning("second %s: stopping now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        self.received, self._first = signum, time.monotonic()
        if self._interruptible:
            self._interruptible = False
            raise WorkerInterrupted(signum)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def check(self) -> None:
        if self.received is not None:
            raise WorkerInterrupted(self.received)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a daemon thread.

    Unlike optuna's heartbeat thread it survives storage errors (a database outage longer than
    the storage's own retries): it logs them and keeps beating.
    """

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self._backend = rdb_backend(_optuna.storage_of(study))
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, interval: float) -> None:
        assert self._backend is not None
        while not self._stop.wait(interval):
            try:
                self._backend.record_heartbeat(self._trial_id)
            except Exception as exc:
                _LOG.warning("heartbeat of trial id %d failed: %s", self._trial_id,
                             str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def __enter__(self) -> _Heartbeat:
        interval = self._backend.get_heartbeat_interval() if self._backend is not None else None
        if interval:
            self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                            name=f"hpo-heartbeat-{self._trial_id}")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a beat stuck in a retry must not hold up the worker


def _hand_back(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Mark an interrupted trial failed and enqueue the same params for another worker.

    Best effort: if the storage cannot be reached, the trial's heartbeat stops and another
    worker retries it after the grace period.
    """
    import optuna
    from optuna.trial import TrialState

    storage = _optuna.storage_of(study)
    backend = rdb_backend(storage)
    try:
        if backend is not None:
            backend.scoped_session.remove()  # the interrupted call may have left it mid-commit
        if storage.get_trial(_optuna.trial_id(trial)).state != TrialState.RUNNING:
            return
        storage.set_trial_user_attr(_optuna.trial_id(trial), record.FAIL_REASON, reason)
        frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            RetryStaleTrialCallback(max_retry=None)(study, frozen)
            _LOG.warning("trial %d handed back to the study (%s)", frozen.number, reason)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        pass  # another worker failed it as stale in the meantime and retries it
    except Exception as exc:
        _LOG.warning("could not hand trial %d back (%s); it will be retried once its heartbeat "
                     "is stale", trial.number, exc)


class _SQLiteSharing:
    """Warns once when other processes (or machines) run trials on the same SQLite file."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self.warned = self.path is None

    def check(self, study: optuna.Study, mine: int, state: dict[str, int]) -> None:
        """Look at the running trials other than this worker's trial number ``mine``, when the
        count taken before this worker's trial (``state``) saw any."""
        from optuna.trial import TrialState

        if self.warned or state["running"] == 0:
            return
        others = [
            t.user_attrs.get("worker") or {}
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != mine
        ]
        if not others:
            return
        self.warned = True
        hosts = sorted({str(w.get("host")) for w in others if w.get("host")} - {socket.gethostname()})
        where = f"also on {', '.join(hosts)}: never do that" if hosts else "on this machine: fine"
        # Other hosts: a warning; workers of this machine only (e.g. --devices): for the record.
        (_LOG.warning if hosts else _LOG.info)(
            "several processes use the SQLite file %s (%s). SQLite is for one machine; never share "
            "it across machines or over NFS. Use PostgreSQL or MySQL for distributed workers.",
            self.path, where,
        )


def run_worker(
    study: optuna.Study,
    cfg: StudyConfig,
    space: SearchSpace,
    *,
    seed: int | None = None,
    threads: int | None = None,
    poll_interval: float | None = None,
    worker_id: str | None = None,
    device: str | None = None,
    failure_log: Path | None = None,
    ranks: Callable[[dict[str, Any]], None] | None = None,
    on_trial: Callable[[optuna.trial.FrozenTrial, float], None] | None = None,
    on_start: Callable[[dict[str, int]], None] | None = None,
) -> RunSummary:
    """Run trials until the study's budget (trials, time, examples or tokens) is used up.

    Each trial records the worker that ran it (``worker``: host, pid, id, device, started_at)
    and its wall time. A failing trial is recorded as failed with the first line of its error
    (its traceback goes to ``failure_log``) and the loop goes on; one that ran out of memory is
    also marked infeasible, so that the sampler avoids its region. After each trial what it held
    is released. SIGTERM/SIGINT hand the running trial back to the study (failed, and enqueued
    again with the same params) and return with ``interrupted`` set. While the budget is used up
    but trials are still running elsewhere, the worker waits, as it may have to take one over
    (their worker may die); it leaves once none is running or waiting, or at once when the
    storage has no heartbeats (nothing could be taken over then).

    Args:
        study: the study, opened with heartbeats where the storage supports them.
        cfg: its config (from the study for workers).
        space: its search space.
        seed: sampler seed for this process (None: the config's seed).
        threads: torch threads (None: the machine's cores split across its live hpo workers).
        poll_interval: seconds between checks while waiting for other workers' trials
            (None: the heartbeat interval, at most 2 s).
        worker_id: this worker's name in trial attrs (None: host-pid-random).
        device: train on this device instead of the config's (``--device``, or the GPU a
            launcher pinned this worker to).
        failure_log: file for the tracebacks of failed trials (None: the log at debug level).
        ranks: under torchrun, sends each trial's params to the other ranks (rank 0 only).
        on_trial: called with each finished trial and its wall seconds (progress output).
        on_start: called once with the budget state before the first trial.
    """
    from hpo.samplers import build_pruner
    from hpo.samplers import build_sampler
    from objectives import resolve_objective

    _quiet_optuna()
    spec = resolve_objective(cfg.objective)
    if device is not None:
        cfg = cfg.with_device(device)
    study.sampler = build_sampler(cfg.sampler, cfg.seed if seed is None else seed, space)
    study.pruner = build_pruner(cfg.pruner)
    host, pid = socket.gethostname(), os.getpid()
    worker: dict[str, Any] = {"host": host, "pid": pid,
                              "id": worker_id or f"{host}-{pid}-{uuid.uuid4().hex[:6]}"}
    if cfg.device is not None:
        worker["device"] = cfg.device
    summary = RunSummary(study=study.study_name, worker=worker)
    takes_over = _heartbeats_on(study)
    if poll_interval is None:
        poll_interval = min(2.0, float(cfg.storage_settings.heartbeat_interval or 2))
    t_start = time.monotonic()
    local = _LocalWorkers()
    sharing = _SQLiteSharing(cfg.storage)
    signals = _Signals()
    failures = _FailureLog(failure_log)
    signals.install()
    first = True
    try:
        while True:
            signals.check()
            trial, state = _take_trial(study, cfg)
            if first and on_start is not None:
                on_start(state)
            first = False
            if trial is None:
                if state["waiting"] == 0 and (state["running"] == 0 or not takes_over):
                    break
                with signals.interruptible():
                    time.sleep(poll_interval)  # another worker's trial may still need a retry
                continue
            sharing.check(study, trial.number, state)
            _set_threads(threads, local)
            result = _run_one(study, trial, spec, cfg, space, worker, signals, failures, ranks)
            if result is not None:
                summary.ran += 1
                if on_trial is not None:
                    on_trial(*result)
                if cfg.stop is not None:
                    _apply_stop_rule(study, cfg)
    except WorkerInterrupted as exc:
        summary.interrupted = str(exc)
    finally:
        signals.restore()
        local.close()
    summary.counts = _counts(study)
    summary.best = best_trial_info(study)
    summary.stopped = study.user_attrs.get("stopped")
    summary.seconds = time.monotonic() - t_start
    return summary


def _compute_used_up(study: optuna.Study, cfg: StudyConfig) -> bool:
    """Whether the study's time, example or token budget is used up (see :mod:`hpo.budget`),
    or a stop rule stopped it. Called where workers take trials one at a time, so it holds
    across workers."""
    from hpo.budget import STOPPED
    from hpo.budget import exhausted
    from hpo.budget import has_compute_budget
    from hpo.budget import usage

    if cfg.stop is not None and STOPPED in study.user_attrs:
        return True
    if not has_compute_budget(cfg):
        return False
    _optuna.forget_cached_trials(study)
    why = exhausted(cfg, usage(study.get_trials(deepcopy=False)))
    if why is not None:
        _LOG.info("budget used up (%s): no new trial starts", why)
    return why is not None


def _apply_stop_rule(study: optuna.Study, cfg: StudyConfig) -> None:
    """Stop the study early when its stop rule says so (``stop: {patience, min_delta}`` or
    ``{target}``): every worker then starts no new trial; the summary and report say why."""
    from hpo.budget import STOPPED
    from hpo.budget import stop_reason

    if STOPPED in study.user_attrs:
        return
    _optuna.forget_cached_trials(study)
    why = stop_reason(cfg, study.get_trials(deepcopy=False))
    if why is not None:
        study.set_user_attr(STOPPED, why)
        _LOG.warning("study stopped early: %s", why)


def _take_trial(
    study: optuna.Study, cfg: StudyConfig
) -> tuple[optuna.Trial | None, dict[str, int]]:
    """Fail stale trials, then, under the budget lock, count and take a waiting or a new trial
    if the budget allows.

    The lock covers only the count and the trial's creation (a few round trips), so that many
    workers do not queue behind it. Failing a stale trial needs no lock: only one worker can
    move it from RUNNING to FAIL, and the count stays the same while it is retried.
    """
    import optuna

    fail_stale(study)
    storage = _optuna.storage_of(study)
    backend = rdb_backend(storage)
    beats = backend is not None and backend.get_heartbeat_interval() is not None
    take = getattr(backend, "create_trial_if", None)
    if take is not None:
        # PostgreSQL/MySQL: count and create in one transaction under the study's row lock.
        def allow(by_state: dict[str, int], n_retries: int) -> bool:
            state = _state(by_state, n_retries)
            return (state["waiting"] == 0 and (cfg.n_trials is None or state["counted"] < cfg.n_trials)
                    and not _compute_used_up(study, cfg))

        taken = take(_optuna.study_id(study), allow, beats)
        if taken is not None:
            frozen, by_state, n_retries = taken
            state = _state(by_state, n_retries)
            if frozen is not None:
                _optuna.add_to_storage_cache(storage, _optuna.study_id(study), frozen)
                _optuna.forget_cached_trials(study)  # see below
                return optuna.Trial(study, _optuna.trial_id(frozen)), state
            if state["waiting"] == 0:
                return None, state
            # A waiting trial (a retry) to pop: study.ask() under the budget lock, below.
    trial = None
    with budget_lock(study, cfg.storage):
        state = budget_state(study)
        if state["waiting"] == 0 and (
            (cfg.n_trials is not None and state["counted"] >= cfg.n_trials)
            or _compute_used_up(study, cfg)
        ):
            return None, state
        if state["waiting"] > 0:
            with quiet_optuna_warnings():
                trial = study.ask()  # pops a waiting trial first: a retry keeps its params
        else:
            trial_id = storage.create_new_trial(_optuna.study_id(study))
    if trial is None:
        # What study.ask() does besides creating the trial, outside the lock: samplers then
        # see the trials as of now, not a list cached for the previous trial.
        _optuna.forget_cached_trials(study)
        trial = optuna.Trial(study, trial_id)
    if beats:
        # A worker killed before this line leaves a trial without heartbeat: the storage fails
        # those too, once seen so for a grace period.
        backend.record_heartbeat(_optuna.trial_id(trial))
    return trial, state


class _FailureLog:
    """The full tracebacks of a worker's failed trials, in one file (made at the first one)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, number: int, worker: str, text: str) -> Path | None:
        if self.path is None:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(f"--- {_now()} trial {number} (worker {worker}) failed:\n{text}\n")
        except OSError as exc:
            _LOG.warning("cannot write the failure log %s (%s)", self.path, exc.strerror)
            self.path = None
        return self.path


def _run_one(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: ObjectiveSpec,
    cfg: StudyConfig,
    space: SearchSpace,
    worker: dict[str, Any],
    signals: _Signals,
    failures: _FailureLog | None = None,
    ranks: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[optuna.trial.FrozenTrial, float] | None:
    """Run one trial and tell its result; None when it was taken from this worker.

    ``ranks``: under torchrun, called with the trial's params before training, to send them to
    the other ranks (see :mod:`hpo.ranks`).
    """
    import optuna
    from optuna.trial import TrialState

    from objectives.devices import is_out_of_memory
    from objectives.devices import release_memory

    t0 = time.perf_counter()
    value: float | None = None
    values: list[float] | None = None
    state = TrialState.COMPLETE
    try:
        with _Heartbeat(study, _optuna.trial_id(trial)):
            try:
                trial.set_user_attr(record.WORKER, {**worker, "started_at": _now()})
                params = space.sample(trial)
                kwargs: dict[str, Any] = {}
                if spec.resumes:
                    kwargs["resume"] = _optuna.retry_history(trial)
                if ranks is not None:
                    ranks({"number": trial.number, "params": params, **kwargs})
                seen = _MultiObjectiveTrial(trial, study, cfg) if cfg.multi_objective else trial
                with signals.interruptible():
                    value = float(spec.fn(seen, params, cfg.objective_config, **kwargs))
                if not math.isfinite(value):
                    trial.set_user_attr(record.FAIL_REASON, f"the objective returned {value}")
                    state = TrialState.FAIL
                else:
                    values, missing = _objective_values(trial, cfg, value)
                    if missing:
                        trial.set_user_attr(record.FAIL_REASON, f"the trial recorded no {missing}")
                        state = TrialState.FAIL
                _constrain(trial, cfg)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
                _constrain(trial, cfg)
            except WorkerInterrupted as exc:
                _hand_back(study, trial, f"interrupted by {exc}; handed back to the study")
                raise
            except optuna.exceptions.UpdateFinishedTrialError:
                return _taken_over(trial)
            except Exception as exc:  # one bad config must not end the study
                if _taken_from_us(study, trial):
                    return _taken_over(trial)
                reason = _reason(exc)
                trial.set_user_attr(record.FAIL_REASON, reason)
                if is_out_of_memory(exc) or type(exc).__name__ == "OutOfMemory":
                    # Infeasible: the sampler learns not to propose this region again.
                    trial.set_user_attr(record.INFEASIBLE, "out of memory")
                    trial.set_constraint("out_of_memory", 1.0)
                text = traceback.format_exc()
                if getattr(exc, "detail", ""):  # the error it replaced (e.g. the device's OOM)
                    text += f"\nwhich replaced:\n{exc.detail}"
                log = (failures or _FailureLog(None)).write(trial.number, worker["id"], text)
                _LOG.warning("trial %d failed: %s%s", trial.number, reason,
                             f" (traceback in {log})" if log else "")
                _LOG.debug("trial %d traceback:\n%s", trial.number, text)
                state = TrialState.FAIL
        seconds = time.perf_counter() - t0
        trial.set_user_attr(record.WALL_SECONDS, round(seconds, 3))
        frozen = _tell(study, trial, values if state == TrialState.COMPLETE else None, state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Either another worker failed it as stale (we lost the database for longer than the
        # grace period), or a retried tell had in fact been stored: the stored state decides.
        frozen = _optuna.storage_of(study).get_trial(_optuna.trial_id(trial))
        if frozen.state == TrialState.FAIL:
            return _taken_over(trial)
    finally:
        release_memory(worker.get("device"))  # nothing of a finished trial stays on the device
    return frozen, time.perf_counter() - t0


def _objective_values(trial: optuna.Trial, cfg: StudyConfig,
                      value: float) -> tuple[list[float], str | None]:
    """The value of each of the study's objectives: what the objective returned for the metric,
    the others (metrics at its best evaluation, costs) from what the trial recorded."""
    from hpo.pareto import objective_values

    if not cfg.multi_objective:
        return [value], None
    rec = TrialRecord.from_attrs(_optuna.frozen_of(trial).user_attrs)
    rest = objective_values(rec, cfg.metrics[1:])
    if rest is None:
        missing = next(n for n in cfg.metrics[1:] if rec.value(n) is None)
        return [], missing
    return [value, *rest], None


def _constrain(trial: optuna.Trial, cfg: StudyConfig) -> None:
    """The study's constraints as optuna constraints (a violation > 0 is infeasible), for the
    sampler to learn the feasible region; a trial that recorded no such value stays unmarked."""
    if not cfg.constraints:
        return
    rec = TrialRecord.from_attrs(_optuna.frozen_of(trial).user_attrs)
    broken = []
    for name, op, bound in cfg.constraints:
        value = rec.value(name)
        if value is None:
            continue
        violation = value - bound if op == "max" else bound - value
        trial.set_constraint(name, violation)
        if violation > 0:
            broken.append(f"{name} {value:g} {'>' if op == 'max' else '<'} {bound:g}")
    if broken:
        trial.set_user_attr(record.INFEASIBLE, "; ".join(broken))


class _MultiObjectiveTrial:
    """The trial an objective sees in a study of several objectives. optuna refuses
    ``report``/``should_prune`` there; this keeps each evaluation's metrics in the trial
    (``intermediate``) and asks hpo's pareto-halving rule (:mod:`hpo.pareto`) whether to stop.
    Everything else is the trial's own."""

    def __init__(self, trial: optuna.Trial, study: optuna.Study, cfg: StudyConfig) -> None:
        from hpo.pareto import ParetoHalving

        self._trial, self._study, self._cfg = trial, study, cfg
        self._seen: dict[str, dict[str, float]] = {}
        self._step: int | None = None
        rule = cfg.pruner.options if cfg.pruner.name == "pareto-halving" else None
        self._rule = ParetoHalving(**rule) if rule is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def report(self, value: float, step: int) -> None:
        self.report_point(step, {self._cfg.metric: float(value)})

    def report_point(self, step: int, metrics: dict[str, float]) -> None:
        from hpo.pareto import INTERMEDIATE

        self._seen[str(int(step))] = {k: float(v) for k, v in metrics.items()}
        self._step = int(step)
        self._trial.set_user_attr(INTERMEDIATE, dict(self._seen))

    def should_prune(self) -> bool:
        if self._rule is None or self._step is None:
            return False
        planned = TrialRecord.from_attrs(_optuna.frozen_of(self._trial).user_attrs).planned_examples
        if planned is not None and self._step >= planned:
            return False  # its last evaluation: stopping there saves nothing
        _optuna.forget_cached_trials(self._study)
        trials = self._study.get_trials(deepcopy=False)
        return self._rule.should_stop(trials, self._trial.number, self._step,
                                      list(self._cfg.metrics), list(self._cfg.directions))


def _reason(exc: BaseException) -> str:
    """The first line of an error, as a trial's ``fail_reason``."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"[:500]


def _tell(
    study: optuna.Study, trial: optuna.Trial, values: list[float] | None, state: TrialState
) -> optuna.trial.FrozenTrial:
    """``study.tell``, the way ``study.optimize`` does it, without reading the whole trial back
    from the storage before and after (six queries each): the trial object holds what this
    worker wrote to it. Finishing it still checks its stored state (UpdateFinishedTrialError
    when another worker failed it as stale)."""
    backend = rdb_backend(_optuna.storage_of(study))
    frozen = _optuna.frozen_of(trial)
    if backend is not None and hasattr(backend, "remember_trial"):
        backend.remember_trial(frozen)  # tell reads it back otherwise
    state, values = _optuna.tell(study, trial, values, state)
    frozen = copy.deepcopy(frozen)
    frozen.state = state
    frozen.values = values
    frozen.datetime_complete = datetime.datetime.now()
    return frozen


def _taken_from_us(study: optuna.Study, trial: optuna.Trial) -> bool:
    from optuna.trial import TrialState

    state = _optuna.storage_of(study).get_trial(_optuna.trial_id(trial)).state
    return state != TrialState.RUNNING


def _taken_over(trial: optuna.Trial) -> None:
    _LOG.warning("trial %d was failed as stale while this worker ran it (a database outage "
                 "longer than the grace period?); its retry runs on another worker", trial.number)
    return None
