"""The rows of the report's tables: top trials, other trials and the search space."""

from __future__ import annotations

import json
from typing import Any
from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.report._study import _best_trials
from hpo.report._study import _complete
from hpo.report._study import _examples_seen
from hpo.report._study import _metric_names
from hpo.report._study import _record
from hpo.report._study import _sort_key
from hpo.report._study import _worker
from hpo.report._study import _worker_label

# Rows of the top-trials table and of the table of the other (pruned, failed, ...) trials.
_N_TOP_TRIALS = 10
_MAX_OTHER_TRIALS = 50


class _TrialRow(NamedTuple):
    number: int
    state: str
    values: list[float] | None
    val_accuracy: float | None
    val_f1: float | None
    best_step: int | None
    examples_seen: int | None
    train_seconds: float | None
    trainable_params: int | None
    params: dict[str, Any]
    worker: str | None
    notes: list[str]  # warm start, retry, fail reason
    metrics: dict[str, float] = {}  # the validation metrics at the trial's best step


class _TrialsTableInfo(NamedTuple):
    metric_names: list[str]
    top: list[_TrialRow]  # best complete trials first (Pareto front for several objectives)
    others: list[_TrialRow]  # the most recent non-complete trials
    n_others: int  # how many non-complete trials there are in all
    extra_metrics: list[str] = ["val_accuracy", "val_f1"]  # shown beside the objective


def _extra_metrics(study: optuna.Study) -> list[str]:
    """The task's metrics to show beside the objective: accuracy and F1 for classification
    tasks (text, images, tokens), else what the trials recorded (regression: MSE, MAE, Spearman)."""
    names: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        names.update(dict.fromkeys(_record(t).best))
    if not names or "val_accuracy" in names:
        return ["val_accuracy", "val_f1"]
    shown = set(_metric_names(study)) | {"val_loss"}
    return [n for n in names if n not in shown]


def _trial_notes(trial: FrozenTrial) -> list[str]:
    notes = []
    worker = _worker(trial)
    if worker.warm_start_from is not None:
        notes.append(f"warm start from study {worker.warm_start_from}")
    if trial.system_attrs.get("failed_trial") is not None:
        retries = trial.system_attrs.get("retry_history") or []
        notes.append(
            f"retry of trial {trial.system_attrs['failed_trial']} (attempt {len(retries) + 1})"
        )
    if trial.state == TrialState.FAIL and worker.fail_reason is not None:
        notes.append(f"failed: {worker.fail_reason}")
    if worker.infeasible is not None:
        notes.append(f"infeasible: {worker.infeasible}")
    return notes


def _trial_row(trial: FrozenTrial) -> _TrialRow:
    record = _record(trial)
    return _TrialRow(
        number=trial.number,
        state=trial.state.name,
        values=list(trial.values) if trial.values is not None else None,
        val_accuracy=record.metric("val_accuracy"),
        val_f1=record.metric("val_f1"),
        best_step=record.best_step,
        examples_seen=_examples_seen(trial),
        train_seconds=record.train_seconds,
        trainable_params=record.trainable_params,
        params=dict(trial.params),
        worker=_worker_label(trial),
        notes=_trial_notes(trial),
        metrics=dict(record.best),
    )


def _get_trials_table_info(study: optuna.Study, n_top: int = _N_TOP_TRIALS) -> _TrialsTableInfo:
    """Rows of the top-trials table and of the table of pruned, failed, running and waiting trials."""
    complete = _complete(study)
    if len(study.directions) == 1:
        top = sorted(complete, key=lambda t: (_sort_key(study.direction)(t), t.number))[:n_top]
    else:
        front = _best_trials(study)
        top = sorted(front, key=lambda t: (_sort_key(study.directions[0])(t), t.number))[:n_top]
    others = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.COMPLETE]
    recent = sorted(others, key=lambda t: -t.number)[:_MAX_OTHER_TRIALS]
    return _TrialsTableInfo(
        _metric_names(study),
        [_trial_row(t) for t in top],
        [_trial_row(t) for t in recent],
        len(others),
        _extra_metrics(study),
    )


class _SearchSpaceRow(NamedTuple):
    name: str
    kind: str  # float, int, categorical
    domain: str  # "[low, high]", "log [low, high]", "{a, b}"
    condition: str | None


def _get_search_space_info(study: optuna.Study) -> list[_SearchSpaceRow]:
    """The study's search space: the stored YAML space, else the trials' distributions."""
    space = study.user_attrs.get("search_space")
    rows: list[_SearchSpaceRow] = []
    if isinstance(space, dict) and space:
        for name, spec in space.items():
            spec = spec if isinstance(spec, dict) else {"type": "?", "value": spec}
            kind = str(spec.get("type", "?"))
            if "choices" in spec:
                domain = "{" + ", ".join(repr(c) for c in spec["choices"]) + "}"
            elif "low" in spec or "high" in spec:
                domain = f"[{spec.get('low')}, {spec.get('high')}]"
                domain = ("log " if spec.get("log") else "") + domain
                if spec.get("step") is not None:
                    domain += f" step {spec['step']}"
            else:
                domain = json.dumps(
                    {k: v for k, v in spec.items() if k not in ("type", "condition")}, default=str
                )
            condition = spec.get("condition")
            cond = None
            if isinstance(condition, dict):
                cond = ", ".join(f"{k} = {v!r}" for k, v in condition.items())
            elif condition is not None:
                cond = str(condition)
            rows.append(_SearchSpaceRow(str(name), kind, domain, cond))
        return rows
    seen: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            seen.setdefault(name, dist)
    for name in sorted(seen):
        rows.append(
            _SearchSpaceRow(
                name,
                type(seen[name]).__name__.replace("Distribution", "").lower(),
                repr(seen[name]),
                None,
            )
        )
    return rows
