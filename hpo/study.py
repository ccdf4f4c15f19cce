"""Create, load and run studies: one worker loop for ``hpo run`` and ``hpo worker``.

A study carries everything a worker needs in its user attrs: the resolved config
(``hpo_config``), the search space (``search_space``) and the data fingerprint
(``data_fingerprint``). The trial budget (``n_trials``) is global to the study: a worker asks
for a trial only while complete + pruned + running + waiting + failed-and-not-retried trials
are fewer than the budget, and checks that under a lock shared by all workers, so ten workers
stop at exactly the budget.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from hpo.config import StudyConfig
from hpo.config import config_from_dict
from hpo.errors import ConfigError
from hpo.errors import DataMismatchError
from hpo.errors import SearchSpaceError
from hpo.errors import StudyConfigConflictError
from hpo.errors import StudyNotFoundError
from hpo.search_space import SearchSpace
from hpo.search_space import load_search_space
from hpo.search_space import search_space_from_dict
from hpo.storage import StorageSettings
from hpo.storage import build_storage
from hpo.storage import redact_url
from hpo.storage import sqlite_path

if TYPE_CHECKING:
    import optuna

    from objectives import ObjectiveSpec

__all__ = [
    "RunSummary",
    "WorkerInterrupted",
    "create_study",
    "load_study",
    "open_study",
    "run_worker",
    "stored_config",
]

_LOG = logging.getLogger("hpo")
# Config keys that may change when a study is resumed: they steer this run, not the results.
_RESUMABLE_KEYS = ("n_trials", "timeout", "sampler", "pruner", "heartbeat_interval",
                   "grace_period", "max_retry")


class WorkerInterrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT: hand the running trial back and stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # fail_stale_trials and the retry callback are experimental in optuna 5; we rely on them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # We run heartbeats around ask/tell ourselves (optuna only expects them in optimize()).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def versions() -> dict[str, str]:
    """Versions of the libraries that shape results, stored with the study."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for name in ("hpo", "optuna", "torch", "transformers", "peft", "datasets", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# --- study creation -----------------------------------------------------------------------


def _load_space(cfg: StudyConfig, spec: ObjectiveSpec) -> SearchSpace:
    space = load_search_space(cfg.search_space)
    if spec.validate_space is not None:
        try:
            spec.validate_space(cfg.objective_config, space.distributions())
        except ValueError as exc:
            raise SearchSpaceError(f"{space.source}: {exc}") from None
    return space


def _prepare(cfg: StudyConfig, spec: ObjectiveSpec) -> dict[str, Any]:
    if spec.prepare is None:
        return {"data_fingerprint": None, "data": {}}
    try:
        return spec.prepare(cfg.objective_config)
    except ValueError as exc:
        raise ConfigError(f"dataset: {exc}") from None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUMABLE_KEYS and k != "study"}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


def create_study(cfg: StudyConfig, *, exist_ok: bool = True) -> optuna.Study:
    """Create the study of ``cfg`` (or load it, when it exists with the same config).

    Validates the search space (also against the model) and the data before anything is
    written, then stores the config, the search space, the data fingerprint and library
    versions in the study's user attrs.

    Raises:
        ConfigError, SearchSpaceError: bad input; nothing is written.
        StudyConfigConflictError: the study exists with another config, space or data.
    """
    import optuna

    from objectives import resolve_objective

    _quiet_optuna()
    spec = resolve_objective(cfg.objective)
    space = _load_space(cfg, spec)
    prepared = _prepare(cfg, spec)
    storage = build_storage(cfg.storage, cfg.storage_settings)
    config_dict = json.loads(json.dumps(cfg.to_dict()))
    existing = _find_study(storage, cfg.study)
    if existing is not None:
        attrs = existing.user_attrs
        if "hpo_config" not in attrs:
            raise StudyConfigConflictError(
                f"study {cfg.study!r} exists in {redact_url(cfg.storage)} but was not created "
                "by hpo; choose another study name"
            )
        changed = _diff(_comparable(attrs["hpo_config"]), _comparable(config_dict))
        if json.dumps(attrs.get("search_space"), sort_keys=True) != json.dumps(space.raw, sort_keys=True):
            changed.append("search space")
        if attrs.get("data_fingerprint") != prepared["data_fingerprint"]:
            changed.append("data (fingerprint)")
        if changed:
            raise StudyConfigConflictError(
                f"study {cfg.study!r} exists with a different {', '.join(changed)}; "
                "use a new study name, or the same config to resume it"
            )
        if not exist_ok:
            return existing
        # Budget, sampler and pruner may change on resume; workers read them from the study.
        existing.set_user_attr("hpo_config", {**attrs["hpo_config"], **{
            k: config_dict[k] for k in _RESUMABLE_KEYS if k in config_dict}})
        return existing
    study = optuna.create_study(
        study_name=cfg.study,
        storage=storage,
        direction=cfg.direction,
        load_if_exists=True,  # another worker may create it at the same moment
    )
    if "hpo_config" not in study.user_attrs:
        study.set_user_attr("search_space", space.raw)
        study.set_user_attr("data_fingerprint", prepared["data_fingerprint"])
        study.set_user_attr("data", prepared["data"])
        study.set_user_attr("versions", versions())
        study.set_user_attr("created_at", _now())
        study.set_user_attr("hpo_config", config_dict)  # last: its presence means "complete"
    return study


def _find_study(storage: Any, name: str) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def open_study(url: str, name: str, settings: StorageSettings | None = None) -> optuna.Study:
    """Load an existing study.

    Raises:
        StudyNotFoundError: no study of that name (the message lists the existing ones).
    """
    import optuna

    _quiet_optuna()
    storage = build_storage(url, settings)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        hint = f" (studies: {', '.join(names[:10])})" if names else " (it has no studies)"
        raise StudyNotFoundError(
            f"no study named {name!r} in {redact_url(url)}{hint}"
        ) from None


def stored_config(study: optuna.Study, storage_url: str) -> tuple[StudyConfig, SearchSpace]:
    """Rebuild the config and search space a worker needs from the study itself.

    Raises:
        ConfigError: the study was not created by hpo.
    """
    attrs = study.user_attrs
    if "hpo_config" not in attrs or "search_space" not in attrs:
        raise ConfigError(
            f"study {study.study_name!r} has no stored hpo config; create it with "
            "`hpo create --config FILE` or `hpo run --config FILE`"
        )
    cfg = config_from_dict(
        {**attrs["hpo_config"], "storage": storage_url}, f"study {study.study_name!r}"
    )
    space = search_space_from_dict(attrs["search_space"], f"study {study.study_name!r} search space")
    return cfg, space


def load_study(url: str, name: str) -> tuple[optuna.Study, StudyConfig, SearchSpace]:
    """Open a study for a worker: its stored config, with the storage settings it asks for,
    after checking that this machine's data has the study's fingerprint.

    Raises:
        StudyNotFoundError, ConfigError: as above.
        DataMismatchError: the worker's data differs from the study's.
    """
    from objectives import resolve_objective

    study = open_study(url, name)
    cfg, space = stored_config(study, url)
    study = open_study(url, name, cfg.storage_settings)
    spec = resolve_objective(cfg.objective)
    prepared = _prepare(cfg, spec)
    expected = study.user_attrs.get("data_fingerprint")
    if expected != prepared["data_fingerprint"]:
        raise DataMismatchError(
            f"this worker's data has fingerprint {prepared['data_fingerprint']} but study "
            f"{name!r} was created on data {expected}; give this machine the same data files"
        )
    return study, cfg, space


# --- the budget lock ----------------------------------------------------------------------


_THREAD_LOCKS: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def budget_lock(study: optuna.Study, url: str) -> Iterator[None]:
    """A lock shared by every worker of ``study``, held while it counts and asks for a trial."""
    import optuna

    name = study.study_name
    path = sqlite_path(url)
    if path is None and url.startswith("journal:///"):
        path = Path(url[len("journal:///") :])
    storage = study._storage
    if path is not None:
        with open(f"{path}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if isinstance(storage, optuna.storages.RDBStorage):
        import sqlalchemy

        dialect = storage.engine.dialect.name
        key = zlib.crc32(f"hpo-budget:{name}".encode())
        with storage.engine.connect() as conn:
            if dialect == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                release = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")
            else:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 120)"), {"k": f"hpo{key}"})
                release = sqlalchemy.text("SELECT RELEASE_LOCK(:k)")
            conn.commit()
            try:
                yield
            finally:
                conn.execute(release, {"k": key if dialect == "postgresql" else f"hpo{key}"})
                conn.commit()
        return
    lock = _THREAD_LOCKS.setdefault(name, threading.Lock())
    with lock:
        yield


def budget_state(study: optuna.Study) -> dict[str, int]:
    """Trials that count against the budget, and those a worker could still take over."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = set()
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            retried.add(history[-1])
    state = {"counted": 0, "running": 0, "waiting": 0, "finished": 0, "total": len(trials)}
    for t in trials:
        if t.state == TrialState.FAIL and t.number in retried:
            continue
        state["counted"] += 1
        if t.state == TrialState.RUNNING:
            state["running"] += 1
        elif t.state == TrialState.WAITING:
            state["waiting"] += 1
        else:
            state["finished"] += 1
    return state


def _fail_stale(study: optuna.Study) -> None:
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)


# --- workers ------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What one worker did, and where the study stands."""

    study: str
    counts: dict[str, int] = field(default_factory=dict)  # study-wide trials by state
    ran: int = 0  # trials this worker finished
    interrupted: str | None = None  # signal name when stopped by SIGINT/SIGTERM
    best: dict[str, Any] | None = None  # number, value, params, user attrs of the best trial
    seconds: float = 0.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


def _fmt_params(params: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={one(v)}" for k, v in params.items())


def _counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def best_trial_info(study: optuna.Study) -> dict[str, Any] | None:
    """The best complete trial as a JSON-able dict, or None if no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    t = study.best_trial
    attrs = {k: v for k, v in t.user_attrs.items() if k != "history"}
    return {"number": t.number, "value": t.value, "params": t.params, "user_attrs": attrs}


def _hand_back(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Mark an interrupted trial failed and enqueue the same params for another worker."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    trial.set_user_attr("fail_reason", reason)
    frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    if frozen.state == TrialState.FAIL:
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, frozen)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into WorkerInterrupted in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise WorkerInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _warn_shared_sqlite(study: optuna.Study, url: str) -> None:
    from optuna.trial import TrialState

    if sqlite_path(url) is None:
        return
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    hosts = {t.user_attrs.get("worker", {}).get("host") for t in running}
    if running:
        where = "on other machines too" if hosts - {socket.gethostname(), None} else "here"
        _LOG.warning(
            "several processes use the SQLite file %s (%s): fine on one machine, never over "
            "NFS or across machines; use PostgreSQL or MySQL for distributed workers",
            sqlite_path(url), where,
        )


def run_worker(
    study: optuna.Study,
    cfg: StudyConfig,
    space: SearchSpace,
    *,
    seed: int | None = None,
    threads: int | None = None,
    poll_interval: float = 2.0,
    on_trial: Callable[[optuna.trial.FrozenTrial, float], None] | None = None,
    on_start: Callable[[dict[str, int]], None] | None = None,
    enqueued: list[dict[str, Any]] | None = None,
) -> RunSummary:
    """Run trials until the study's global budget is used up or this worker's timeout passes.

    Each trial records the worker that ran it. A failing trial is recorded as failed with its
    reason and the loop goes on. SIGTERM/SIGINT hand the running trial back to the study (failed,
    and enqueued again with the same params) and return with ``interrupted`` set. The worker
    does not leave while trials that it might have to take over are running or waiting.

    Args:
        study: the study, opened with heartbeats where the storage supports them.
        cfg: its config (from the study for workers).
        space: its search space.
        seed: sampler seed for this process (None: derived from the config's seed and the pid).
        threads: torch threads (None: the machine's cores split across its live hpo workers).
        poll_interval: seconds between checks while waiting for other workers' trials.
        on_trial: called with each finished trial and its wall seconds (progress output).
        on_start: called once with the budget state before the first trial.
        enqueued: accepted for API symmetry; enqueue with ``study.enqueue_trial`` beforehand.
    """
    from optuna.storages._heartbeat import get_heartbeat_thread

    from hpo.samplers import build_pruner
    from hpo.samplers import build_sampler
    from objectives import resolve_objective

    _quiet_optuna()
    spec = resolve_objective(cfg.objective)
    study.sampler = build_sampler(cfg.sampler, cfg.seed if seed is None else seed, space)
    study.pruner = build_pruner(cfg.pruner)
    host, pid = socket.gethostname(), os.getpid()
    worker = {"host": host, "pid": pid, "id": f"{host}-{pid}-{uuid.uuid4().hex[:6]}"}
    summary = RunSummary(study=study.study_name)
    t_start = time.monotonic()
    deadline = t_start + cfg.timeout if cfg.timeout else math.inf
    local = _LocalWorkers()
    _warn_shared_sqlite(study, cfg.storage)
    first = True
    trial = None
    try:
        with _signals_raise():
            while True:
                if time.monotonic() >= deadline:
                    _LOG.info("timeout of %.0f s reached; this worker stops", cfg.timeout)
                    break
                with budget_lock(study, cfg.storage):
                    _fail_stale(study)
                    state = budget_state(study)
                    if first and on_start is not None:
                        on_start(state)
                    first = False
                    can_ask = (
                        state["waiting"] > 0
                        or cfg.n_trials is None
                        or state["counted"] < cfg.n_trials
                    )
                    trial = study.ask() if can_ask else None
                if trial is None:
                    if state["running"] == 0 and state["waiting"] == 0:
                        break
                    time.sleep(poll_interval)  # another worker's trial may still need a retry
                    continue
                _set_threads(threads, local)
                frozen, seconds = _run_one(
                    study, trial, spec, cfg, space, worker, get_heartbeat_thread
                )
                trial = None
                summary.ran += 1
                if on_trial is not None:
                    on_trial(frozen, seconds)
    except WorkerInterrupted as exc:
        summary.interrupted = str(exc)
        if trial is not None and _is_running(study, trial):
            _hand_back(study, trial, f"interrupted by {exc}; handed back to the study")
    finally:
        local.close()
    summary.counts = _counts(study)
    summary.best = best_trial_info(study)
    summary.seconds = time.monotonic() - t_start
    return summary


def _is_running(study: optuna.Study, trial: optuna.Trial) -> bool:
    from optuna.trial import TrialState

    return study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def _run_one(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: ObjectiveSpec,
    cfg: StudyConfig,
    space: SearchSpace,
    worker: dict[str, Any],
    get_heartbeat_thread: Callable[..., Any],
) -> tuple[optuna.trial.FrozenTrial, float]:
    import optuna
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    value: float | None = None
    state = TrialState.COMPLETE
    with get_heartbeat_thread(trial._trial_id, study._storage):
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("started_at", _now())
        params = space.sample(trial)
        try:
            value = float(spec.fn(trial, params, cfg.objective_config))
            if not math.isfinite(value):
                trial.set_user_attr("fail_reason", f"the objective returned {value}")
                state = TrialState.FAIL
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as exc:  # one bad config must not end the study
            message = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"{type(exc).__name__}: {message}"[:500]
            trial.set_user_attr("fail_reason", reason)
            _LOG.warning("trial %d failed: %s", trial.number, reason)
            state = TrialState.FAIL
    seconds = time.perf_counter() - t0
    trial.set_user_attr("wall_seconds", round(seconds, 3))
    if state == TrialState.COMPLETE:
        frozen = study.tell(trial, value)
    else:
        frozen = study.tell(trial, state=state)
    return frozen, seconds
