"""The numbers of the summary header: what ran, what is best, what pruning saved."""

from __future__ import annotations

import datetime
import json
from typing import Any
from typing import NamedTuple

import optuna
from optuna.trial import TrialState

from hpo.report._study import _STATE_ORDER
from hpo.report._study import _best_trials
from hpo.report._study import _config
from hpo.report._study import _end_time
from hpo.report._study import _examples_seen
from hpo.report._study import _metric_names
from hpo.report._study import _record
from hpo.report._study import _worker_label
from hpo.report._tables import _extra_metrics


class _BudgetInfo(NamedTuple):
    examples_trained: int  # summed over all trials (pruned and running included)
    examples_saved: int  # by pruned trials: planned - seen
    examples_pruned_planned: int  # what the pruned trials would have trained run to the end
    seconds_saved: float | None  # examples_saved at each pruned trial's own speed, if recorded
    estimated: bool  # True when some counts came from intermediate steps, not our attributes


class _SummaryInfo(NamedTuple):
    study_name: str
    storage: str
    objective: str | None
    model: str | None
    dataset: str | None
    data_fingerprint: str | None
    data_sizes: dict[str, Any]
    metric_names: list[str]
    directions: list[str]
    sampler: str | None
    pruner: str | None
    n_trials_by_state: dict[str, int]
    best_numbers: list[int]
    best_values: list[float] | None  # the best trial's values (single objective only)
    best_val_accuracy: float | None
    best_val_f1: float | None
    best_params: dict[str, Any]
    budget: _BudgetInfo
    wall_seconds: float | None
    n_workers: int | None  # distinct workers recorded on trials
    max_concurrent: int  # most trials running at the same moment
    is_running: bool
    snapshot_at: datetime.datetime
    created_at: str | None
    stopped: str | None = None  # why a stop rule stopped the study early
    defaults: dict[str, str] | None = None  # what hpo chose for the user, and why
    best_extra: dict[str, float | None] = {}  # the task's other metrics of the best trial


def _describe(spec: Any) -> str | None:
    """Render a ``{name: ..., **options}`` config entry as ``name(key=value, ...)``."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return str(spec)
    options = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "name")
    name = str(spec.get("name", "?"))
    return f"{name}({options})" if options else name


def _dataset_label(dataset: Any) -> str | None:
    if not isinstance(dataset, dict):
        return None if dataset is None else str(dataset)
    for key in ("name", "path", "train_path"):
        if dataset.get(key):
            return str(dataset[key])
    return json.dumps(dataset, default=str, sort_keys=True)


def _get_budget_info(study: optuna.Study) -> _BudgetInfo:
    """Count examples trained over all trials and those that pruning saved.

    Compute saved = sum over pruned trials of (``planned_examples`` - ``examples_seen``). A trial
    without ``planned_examples`` is taken to plan as many examples as the longest complete trial.
    """
    trials = study.get_trials(deepcopy=False)
    complete_ends = [
        s for t in trials if t.state == TrialState.COMPLETE for s in [_examples_seen(t)]
    ]
    full_run = max((s for s in complete_ends if s is not None), default=None)
    estimated = False
    trained = saved = planned_total = 0
    seconds_saved: float | None = None
    for trial in trials:
        seen = _examples_seen(trial)
        if seen is None:
            continue
        record = _record(trial)
        estimated |= record.examples_seen is None
        trained += seen
        if trial.state != TrialState.PRUNED:
            continue
        planned = record.planned_examples
        if planned is None:
            estimated = True
            planned = full_run
        if planned is None:
            continue
        planned_total += planned
        saved += max(planned - seen, 0)
        seconds = record.train_seconds
        if seconds is not None and seen > 0:
            seconds_saved = (seconds_saved or 0.0) + seconds / seen * max(planned - seen, 0)
    return _BudgetInfo(trained, saved, planned_total, seconds_saved, estimated)


def _max_concurrent(intervals: list[tuple[datetime.datetime, datetime.datetime]]) -> int:
    """The most intervals open at one moment."""
    # At equal times starts (0) sort before ends (1): a zero-length trial still counts.
    events = sorted([(s, 0) for s, _ in intervals] + [(e, 1) for _, e in intervals])
    running = best = 0
    for _, is_end in events:
        running += -1 if is_end else 1
        best = max(best, running)
    return best


def _get_summary_info(
    study: optuna.Study, storage_label: str, now: datetime.datetime | None = None
) -> _SummaryInfo:
    """Collect the numbers of the summary header.

    Args:
        study:
            The study (a snapshot, see :func:`hpo.report._study._snapshot`).
        storage_label:
            The storage URL with its password already redacted.
        now:
            The snapshot time: running trials end there. Defaults to the current local time,
            which is what optuna stores.

    Returns:
        A :class:`_SummaryInfo`.
    """
    now = now or datetime.datetime.now()
    cfg = _config(study)
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name: 0 for s in _STATE_ORDER}
    for trial in trials:
        by_state[trial.state.name] = by_state.get(trial.state.name, 0) + 1

    best = _best_trials(study)
    single = len(study.directions) == 1
    top = best[0] if single and best else None

    intervals = [(t.datetime_start, _end_time(t, now)) for t in trials if t.datetime_start]
    intervals = [(s, e) for s, e in intervals if e is not None]
    wall = None
    if intervals:
        wall = (max(e for _, e in intervals) - min(s for s, _ in intervals)).total_seconds()
    workers = {w for t in trials if (w := _worker_label(t)) is not None}
    data = study.user_attrs.get("data")
    sizes = data.get("sizes", {}) if isinstance(data, dict) else {}
    fingerprint = study.user_attrs.get("data_fingerprint")
    created = study.user_attrs.get("created_at")
    return _SummaryInfo(
        study_name=study.study_name,
        storage=storage_label,
        objective=None if cfg.get("objective") is None else str(cfg["objective"]),
        model=None if cfg.get("model") is None else str(cfg["model"]),
        dataset=_dataset_label(cfg.get("dataset")),
        data_fingerprint=None if fingerprint is None else str(fingerprint),
        data_sizes=sizes if isinstance(sizes, dict) else {},
        metric_names=_metric_names(study),
        directions=[d.name.lower() for d in study.directions],
        sampler=_describe(cfg.get("sampler")),
        pruner=_describe(cfg.get("pruner")),
        n_trials_by_state=by_state,
        best_numbers=[t.number for t in best],
        best_values=list(top.values) if top is not None else None,
        best_val_accuracy=_record(top).metric("val_accuracy") if top else None,
        best_val_f1=_record(top).metric("val_f1") if top else None,
        best_params=dict(top.params) if top is not None else {},
        budget=_get_budget_info(study),
        wall_seconds=wall,
        n_workers=len(workers) or None,
        max_concurrent=_max_concurrent(intervals),
        is_running=by_state["RUNNING"] > 0 or by_state["WAITING"] > 0,
        snapshot_at=now,
        created_at=None if created is None else str(created),
        stopped=str(study.user_attrs["stopped"]) if study.user_attrs.get("stopped") else None,
        defaults={str(k): str(v) for k, v in study.user_attrs.get("defaults", {}).items()}
        if isinstance(study.user_attrs.get("defaults"), dict) else None,
        best_extra={k: _record(top).metric(k) for k in _extra_metrics(study)} if top else {},
    )
