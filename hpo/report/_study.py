"""Snapshot a study once, and read our conventions off its trials (any attribute may be missing)."""

from __future__ import annotations

import datetime
import logging
import math
import warnings
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from objectives.record import TrialRecord
from objectives.record import WorkerRecord

_STATE_ORDER = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.FAIL,
    TrialState.RUNNING,
    TrialState.WAITING,
)


def _snapshot(study: optuna.Study) -> optuna.Study:
    """Copy a study's trials and attributes into an in-memory study, read from storage once.

    Trial numbers are kept: a study's numbers are 0..n-1 and are re-added in that order.

    Args:
        study:
            The study to copy, in any storage.

    Returns:
        An in-memory study with the same name, directions, user attributes and trials.
    """
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    snap = _study_of(study, trials, study.study_name)
    for key, value in study.user_attrs.items():
        snap.set_user_attr(key, value)
    if study.metric_names is not None:
        with warnings.catch_warnings():
            # set_metric_names is experimental since optuna 3.2; it only copies the names.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            snap.set_metric_names(study.metric_names)
    return snap


def _study_of(
    study: optuna.Study, trials: Sequence[FrozenTrial], name: str | None = None
) -> optuna.Study:
    """An in-memory study of ``trials``, with ``study``'s directions."""
    # The in-memory storage logs "A new study created in memory" at INFO: these studies are
    # internal to the report, so keep that line off the user's terminal.
    logger = logging.getLogger("optuna.storages._in_memory")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        sub = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), study_name=name, directions=study.directions
        )
    finally:
        logger.setLevel(level)
    sub.add_trials(trials)
    return sub


def _config(study: optuna.Study) -> dict[str, Any]:
    cfg = study.user_attrs.get("hpo_config")
    return cfg if isinstance(cfg, dict) else {}


def _num(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _metric_names(study: optuna.Study) -> list[str]:
    """Name each objective: optuna's metric names, else the config's metric, else "objective i"."""
    if study.metric_names is not None:
        return [str(n) for n in study.metric_names]
    metric = _config(study).get("metric")
    if len(study.directions) == 1 and isinstance(metric, str) and metric:
        return [metric]
    if isinstance(metric, list) and len(metric) == len(study.directions):
        return [str(m) for m in metric]
    if len(study.directions) == 1:
        return ["objective value"]
    return [f"objective {i}" for i in range(len(study.directions))]


def _record(trial: FrozenTrial) -> TrialRecord:
    """What the trial's training measured (the one schema: objectives.record)."""
    return TrialRecord.from_attrs(trial.user_attrs)


def _worker(trial: FrozenTrial) -> WorkerRecord:
    """What its worker recorded: who ran it, its wall time, why it failed."""
    return WorkerRecord.from_attrs(trial.user_attrs)


def _worker_label(trial: FrozenTrial) -> str | None:
    worker = _worker(trial).worker
    if worker is None:
        worker = trial.user_attrs.get("worker")  # a plain name, from another tool
    if isinstance(worker, dict):
        if worker.get("host") is not None or worker.get("pid") is not None:
            return f"{worker.get('host', '?')}:{worker.get('pid', '?')}"
        if worker.get("id") is not None:
            return str(worker["id"])
    elif isinstance(worker, str) and worker:
        return worker
    return None


def _last_step(trial: FrozenTrial) -> int | None:
    steps = [s for s in trial.intermediate_values]
    steps += [p.step for p in _record(trial).history]
    return max(steps) if steps else None


def _examples_seen(trial: FrozenTrial) -> int | None:
    seen = _record(trial).examples_seen
    return seen if seen is not None else _last_step(trial)


def _end_time(trial: FrozenTrial, now: datetime.datetime) -> datetime.datetime | None:
    if trial.datetime_start is None:
        return None
    return trial.datetime_complete or now


def _sort_key(direction: StudyDirection) -> Callable[[FrozenTrial], float]:
    sign = 1.0 if direction == StudyDirection.MINIMIZE else -1.0
    return lambda t: sign * t.values[0]


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials whose objective values are all finite."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and all(_num(v) is not None for v in t.values)
    ]


def _best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (several), empty when none."""
    complete = _complete(study)
    if not complete:
        return []
    if len(study.directions) == 1:
        return [min(complete, key=_sort_key(study.direction))]
    return sorted(study.best_trials, key=lambda t: t.number)
