"""Create and load studies, and the study-wide budget that every worker checks.

A study carries everything a worker needs in its user attrs: the resolved config
(``hpo_config``), the search space (``search_space``) and the data fingerprint
(``data_fingerprint``). The trial budget (``n_trials``) is global to the study: a worker takes a
trial only while complete + pruned + running + waiting + failed-and-not-retried trials are fewer
than the budget, and checks that atomically with all other workers (one transaction under the
study's row lock on PostgreSQL/MySQL, :func:`budget_lock` elsewhere), so ten workers stop at
exactly the budget. A worker's trial whose heartbeat stopped is failed by the next worker
(:func:`fail_stale`) and its parameters are enqueued again. The worker loop is in
:mod:`hpo.worker`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import sys
import time
from typing import TYPE_CHECKING
from typing import Any

from hpo import _optuna
from hpo.config import StudyConfig
from hpo.config import check_study_name
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
from hpo.storage import rdb_backend
from hpo.storage import redact_url
from hpo.storage import set_heartbeat
from hpo.storage import shared_lock
from hpo.storage import trial_counts
from objectives.record import WorkerRecord

if TYPE_CHECKING:
    import optuna

    from objectives import ObjectiveSpec

__all__ = [
    "budget_lock",
    "budget_state",
    "create_study",
    "fail_stale",
    "load_study",
    "open_study",
    "stored_config",
    "versions",
]

_LOG = logging.getLogger("hpo")
# Config keys that may change when a study is resumed with `hpo run`: they steer this run, not
# the results. `hpo create` refuses any change.
_RESUMABLE_KEYS = ("n_trials", "timeout", "sampler", "pruner", "heartbeat_interval",
                   "grace_period", "max_retry", "device", "devices_per_trial")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


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


def _load_space(cfg: StudyConfig, spec: ObjectiveSpec,
                data: dict[str, Any] | None = None) -> SearchSpace:
    from hpo.defaults import AUTO

    if cfg.search_space == AUTO:
        if spec.default_space is None:
            raise SearchSpaceError(
                f"search_space: objective {cfg.objective!r} has no automatic search space; give "
                "the path of a YAML file")
        space = search_space_from_dict(spec.default_space(cfg.objective_config, data or {}),
                                       "auto search space")
    else:
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


def _comparable(config: dict[str, Any], resumable: bool = True) -> dict[str, Any]:
    skip = (*_RESUMABLE_KEYS, "study") if resumable else ("study",)
    return {k: v for k, v in config.items() if k not in skip}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


def create_study(cfg: StudyConfig, *, exist_ok: bool = True,
                 defaults: dict[str, str] | None = None) -> optuna.Study:
    """Create the study of ``cfg`` (or load it, when it exists with the same config).

    Validates the search space (also against the model) and the data before anything is
    written, then stores the config, the search space, the data fingerprint and library
    versions in the study's user attrs.

    Args:
        cfg: the study's config.
        exist_ok: True (``hpo run``): an existing study with the same config, space and data
            is resumed, with the budget, timeout, sampler, pruner and heartbeat settings of
            ``cfg``. False (``hpo create``): an existing study is left as it is when ``cfg`` is
            exactly its config, and refused otherwise.

    Raises:
        ConfigError, SearchSpaceError: bad input; nothing is written.
        StudyConfigConflictError: the study exists with another config, space or data.
    """

    from hpo.samplers import build_pruner
    from hpo.samplers import build_sampler
    from objectives import resolve_objective

    _quiet_optuna()
    spec = resolve_objective(cfg.objective)
    prepared = _prepare(cfg, spec)
    space = _load_space(cfg, spec, prepared["data"])
    build_sampler(cfg.sampler, cfg.seed, space)  # their options: ConfigError before any write
    build_pruner(cfg.pruner)
    storage = build_storage(cfg.storage, cfg.storage_settings, create=True)
    config_dict = json.loads(json.dumps(cfg.to_dict()))
    # One creator at a time per study name: another `hpo run` of the same study never sees it
    # half-made (created, its hpo config not stored yet).
    with shared_lock(storage, cfg.storage, f"hpo-create:{cfg.study}"):
        existing = _find_study(storage, cfg.study)
        if existing is not None and _half_made(existing):
            _take_over_half_made(existing, storage, cfg)
            existing = None
        if existing is None:
            study = _new_study(storage, cfg, space, prepared, config_dict, defaults or {})
            _start_with_recipe(study, cfg, spec, space)
            return study
        return _resume(existing, cfg, space, prepared, config_dict, exist_ok)


def _resume(
    existing: optuna.Study,
    cfg: StudyConfig,
    space: SearchSpace,
    prepared: dict[str, Any],
    config_dict: dict[str, Any],
    exist_ok: bool,
) -> optuna.Study:
    """The existing study of ``cfg``, after checking that it is the same study."""
    attrs = existing.user_attrs
    if "hpo_config" not in attrs:
        raise StudyConfigConflictError(
            f"study {cfg.study!r} exists in {redact_url(cfg.storage)} but was not created "
            "by hpo; choose another study name"
        )
    changed = _diff(_comparable(attrs["hpo_config"], exist_ok),
                    _comparable(config_dict, exist_ok))
    if json.dumps(attrs.get("search_space"), sort_keys=True) != json.dumps(space.raw, sort_keys=True):
        changed.append("search space")
    if attrs.get("data_fingerprint") != prepared["data_fingerprint"]:
        changed.append("data (fingerprint)")
    if changed:
        hint = ("use a new study name, or the same config to resume it" if exist_ok else
                "use a new study name, or `hpo run` to resume it with a new budget")
        raise StudyConfigConflictError(
            f"study {cfg.study!r} exists with a different {', '.join(changed)}; {hint}"
        )
    if not exist_ok:
        return existing
    # Budget, sampler and pruner may change on resume; workers read them from the study.
    resumed = {**attrs["hpo_config"], **{k: config_dict[k] for k in _RESUMABLE_KEYS if k in config_dict}}
    if resumed != attrs["hpo_config"]:
        existing.set_user_attr("hpo_config", resumed)
    return existing


def _new_study(
    storage: Any,
    cfg: StudyConfig,
    space: SearchSpace,
    prepared: dict[str, Any],
    config_dict: dict[str, Any],
    defaults: dict[str, str],
) -> optuna.Study:
    """Create the study and store what a worker needs; an interrupted creation leaves nothing."""
    import optuna

    from hpo.defaults import describe

    study = optuna.create_study(
        study_name=cfg.study, storage=storage, directions=list(cfg.directions or [cfg.direction]),
        load_if_exists=True,
    )
    try:
        study.set_user_attr("defaults", defaults)  # what was chosen for the user, and why
        _store_attrs(study, space, prepared, config_dict)
    except BaseException:
        # Ctrl-C (or a lost database) between creating the study and storing its config: a
        # study without its config would be refused by every later run. Remove it if it is
        # still empty; if that fails too, the next run takes it over (_take_over_half_made).
        with contextlib.suppress(Exception):
            if "hpo_config" not in study.user_attrs and not study.get_trials(deepcopy=False):
                optuna.delete_study(study_name=cfg.study, storage=storage)
        raise
    describe(defaults)
    return study


def _start_with_recipe(study: optuna.Study, cfg: StudyConfig, spec: ObjectiveSpec,
                       space: SearchSpace) -> None:
    """Enqueue the task's usual recipe as a new study's first trial (fitted to the space)."""
    from hpo.defaults import fit_recipe
    from hpo.defaults import recipe_applies
    from objectives import record

    if not recipe_applies(cfg, spec):
        return
    params = fit_recipe(spec.recipe(cfg.objective_config, list(space.distributions())), space)
    if params:
        study.enqueue_trial(params, user_attrs={record.RECIPE: "the usual recipe"})
        _LOG.info("first trial: the usual recipe %s", ", ".join(f"{k}={v:g}" if isinstance(v, float)
                                                              else f"{k}={v}" for k, v in params.items()))


def _store_attrs(
    study: optuna.Study, space: SearchSpace, prepared: dict[str, Any], config_dict: dict[str, Any]
) -> None:
    study.set_user_attr("search_space", space.raw)
    study.set_user_attr("data_fingerprint", prepared["data_fingerprint"])
    study.set_user_attr("data", prepared["data"])
    study.set_user_attr("versions", versions())
    study.set_user_attr("created_at", _now())
    study.set_user_attr("hpo_config", config_dict)  # last: its presence means "complete"


def _half_made(study: optuna.Study) -> bool:
    """A study whose creation stopped before its config was stored: no config, no trials."""
    return "hpo_config" not in study.user_attrs and not study.get_trials(deepcopy=False)


def _take_over_half_made(study: optuna.Study, storage: Any, cfg: StudyConfig) -> None:
    """Make a half-made study ready for :func:`_new_study`, which stores its config: keep it
    when its direction is ``cfg``'s, else delete it (it holds no trial) to create it anew."""
    import optuna

    _LOG.warning("study %r has no stored config and no trials (its creation was interrupted?): "
                 "creating it again", cfg.study)
    if study.direction.name.lower() != cfg.direction:
        optuna.delete_study(study_name=cfg.study, storage=storage)


def _find_study(storage: Any, name: str) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def open_study(url: str, name: str, settings: StorageSettings | None = None) -> optuna.Study:
    """Load an existing study. A missing SQLite or journal file is an error, never created.

    Raises:
        ConfigError: the name is longer than any stored study name can be.
        StorageError: the storage cannot be opened, or its file does not exist.
        StudyNotFoundError: no study of that name (the message lists the existing ones).
    """
    import optuna

    _quiet_optuna()
    check_study_name(name)
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
        ConfigError: the study was not created by hpo, or its stored config or search space
            is not a mapping or not valid.
    """
    attrs = study.user_attrs
    if "hpo_config" not in attrs or "search_space" not in attrs:
        raise ConfigError(
            f"study {study.study_name!r} has no stored hpo config; create it with "
            "`hpo create --config FILE` or `hpo run --config FILE`"
        )
    for key in ("hpo_config", "search_space"):
        if not isinstance(attrs[key], dict):
            raise ConfigError(
                f"study {study.study_name!r}: its stored {key} is a {type(attrs[key]).__name__}, "
                "not a mapping (was the study made or edited by another tool?); create the "
                "study anew with `hpo run --config FILE` under another name"
            )
    cfg = config_from_dict(
        {**attrs["hpo_config"], "storage": storage_url}, f"study {study.study_name!r}"
    )
    space = search_space_from_dict(attrs["search_space"], f"study {study.study_name!r} search space")
    return cfg, space


def load_study(
    url: str, name: str, *, wait_for_config: float = 10.0,
    allowed_objectives: tuple[str, ...] = (),
) -> tuple[optuna.Study, StudyConfig, SearchSpace]:
    """Open a study for a worker: its stored config, with the storage settings it asks for,
    after checking that this machine's data has the study's fingerprint. Nothing is written.

    Args:
        url: storage URL.
        name: study name.
        wait_for_config: seconds to wait for the config of a study that another process is
            creating at this moment.

    Raises:
        StudyNotFoundError, ConfigError: as above.
        DataMismatchError: the worker's data differs from the study's.
        ConfigError: a ``module:function`` objective not in ``allowed_objectives``.
    """
    from objectives import check_allowed
    from objectives import resolve_objective

    # Read the config first, without heartbeats: they come with the study's own settings.
    study = open_study(url, name, StorageSettings(heartbeat_interval=0))
    deadline = time.monotonic() + wait_for_config
    while "hpo_config" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)
    stored = study.user_attrs.get("hpo_config")
    objective = stored.get("objective") if isinstance(stored, dict) else None
    if isinstance(objective, str):
        try:  # before anything imports it
            check_allowed(objective, allowed_objectives)
        except PermissionError as exc:
            raise ConfigError(str(exc)) from None
    cfg, space = stored_config(study, url)
    spec = resolve_objective(cfg.objective)
    prepared = _prepare(cfg, spec)
    expected = study.user_attrs.get("data_fingerprint")
    if expected != prepared["data_fingerprint"]:
        raise DataMismatchError(
            f"this worker's data has fingerprint {prepared['data_fingerprint']} but study "
            f"{name!r} was created on data {expected}; give this machine the same data files"
        )
    set_heartbeat(_optuna.storage_of(study), cfg.storage_settings)
    return study, cfg, space


# --- the budget ---------------------------------------------------------------------------


def budget_lock(study: optuna.Study, url: str) -> contextlib.AbstractContextManager[None]:
    """A lock shared by every worker of ``study``, held while it counts and takes a trial."""
    return shared_lock(_optuna.storage_of(study), url, f"hpo-budget:{study.study_name}")


def budget_state(study: optuna.Study) -> dict[str, int]:
    """Trials that count against the budget, and those a worker could still take over.

    ``counted``: complete, pruned, running, waiting and failed trials, leaving out failed trials
    that were retried (their retry counts instead). ``finished``: counted trials that are done.
    """
    from optuna.trial import TrialState

    counts = trial_counts(_optuna.storage_of(study), _optuna.study_id(study))
    if counts is not None:  # RDB storages: one query
        return _state(*counts)
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


def _state(by_state: dict[str, int], n_retries: int) -> dict[str, int]:
    """budget_state from trial counts by state name and the number of retries."""
    total = sum(by_state.values())
    running, waiting = by_state.get("RUNNING", 0), by_state.get("WAITING", 0)
    counted = total - n_retries
    return {"counted": counted, "running": running, "waiting": waiting,
            "finished": counted - running - waiting, "total": total}


def _heartbeats_on(study: optuna.Study) -> bool:
    backend = rdb_backend(_optuna.storage_of(study))
    return backend is not None and backend.get_heartbeat_interval() is not None


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the running trials whose worker stopped sending heartbeats, and retry them.

    optuna's ``fail_stale_trials``, plus a ``fail_reason`` on each failed trial. Returns the
    numbers of the trials failed here.
    """
    import optuna
    from optuna.trial import TrialState

    backend = rdb_backend(_optuna.storage_of(study))
    if backend is None or backend.get_heartbeat_interval() is None:
        return []
    storage = _optuna.storage_of(study)
    failed = []
    for trial_id in _optuna.stale_trial_ids(backend, _optuna.study_id(study)):
        try:
            storage.set_trial_user_attr(
                trial_id, "fail_reason",
                f"no heartbeat for {backend.grace_period} s: its worker died or lost the database",
            )
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # its worker finished it (or another worker failed it) just now
    callback = backend.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        frozen = copy.deepcopy(storage.get_trial(trial_id))
        numbers.append(frozen.number)
        worker = WorkerRecord.from_attrs(frozen.user_attrs).worker_id or "?"
        _LOG.warning("trial %d of worker %s is stale: failed%s", frozen.number, worker,
                     ", and enqueued again" if callback is not None else "")
        if callback is not None:
            callback(study, frozen)
    return numbers


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
