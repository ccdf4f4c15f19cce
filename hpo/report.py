"""Write a study's report: one self-contained HTML file that opens offline from disk.

The report answers at a glance: did the search converge, what mattered, what did pruning save,
what is the best configuration, and who ran what. Each figure has two halves, as in
``optuna.visualization``: ``_get_<plot>_info(study) -> NamedTuple`` computes the numbers (tested
on their own) and ``_<plot>_figure(info)`` draws them with plotly.

Everything is computed from one snapshot of the study's trials (:func:`_snapshot`), so a report
of a running study is consistent with itself and the storage is read only once.

plotly and ``optuna.visualization`` are imported inside functions: ``import hpo.report`` stays cheap.

Example:
    .. code-block:: python

        import optuna
        from hpo.report import write_report

        study = optuna.load_study(study_name="sst2", storage="sqlite:///studies.db")
        write_report(study, "report.html", storage_label="sqlite:///studies.db")
"""

from __future__ import annotations

import datetime
import html
import json
import logging
import math
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["build_report_html", "write_report"]

# Trials kept in the parallel-coordinate plot: optuna draws one SVG trace per trial, which a
# browser renders slowly past a few hundred; the best ones are the ones worth reading.
_MAX_PARALLEL_TRIALS = 300
# Parameters shown in the slice and parallel-coordinate plots, most important first.
_MAX_PLOT_PARAMS = 8
# Fewer complete trials than this and importances are noise; PED-ANOVA warns below it anyway.
_MIN_IMPORTANCE_TRIALS = 4
# Rows of the top-trials table and of the table of the other (pruned, failed, ...) trials.
_N_TOP_TRIALS = 10
_MAX_OTHER_TRIALS = 50

_STATE_ORDER = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.FAIL,
    TrialState.RUNNING,
    TrialState.WAITING,
)
_STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#2ca02c",
    "WAITING": "#7f7f7f",
}
_BEST_COLOR = "#9467bd"
_STATE_WORDS = {"FAIL": "failed"}  # how the summary names a state, where not its lowercase


# --------------------------------------------------------------------------------------------
# Snapshot and small readers of our conventions (every attribute may be missing).
# --------------------------------------------------------------------------------------------


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


def _worker_label(trial: FrozenTrial) -> str | None:
    worker = trial.user_attrs.get("worker")
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
    history = trial.user_attrs.get("history")
    if isinstance(history, list):
        steps += [
            s["step"] for s in history if isinstance(s, dict) and _int(s.get("step")) is not None
        ]
    return max(steps) if steps else None


def _examples_seen(trial: FrozenTrial) -> int | None:
    seen = _int(trial.user_attrs.get("examples_seen"))
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


# --------------------------------------------------------------------------------------------
# Summary header.
# --------------------------------------------------------------------------------------------


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
        estimated |= _int(trial.user_attrs.get("examples_seen")) is None
        trained += seen
        if trial.state != TrialState.PRUNED:
            continue
        planned = _int(trial.user_attrs.get("planned_examples"))
        if planned is None:
            estimated = True
            planned = full_run
        if planned is None:
            continue
        planned_total += planned
        saved += max(planned - seen, 0)
        seconds = _num(trial.user_attrs.get("train_seconds"))
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
            The study (a snapshot, see :func:`_snapshot`).
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
        best_val_accuracy=_num(top.user_attrs.get("val_accuracy")) if top else None,
        best_val_f1=_num(top.user_attrs.get("val_f1")) if top else None,
        best_params=dict(top.params) if top is not None else {},
        budget=_get_budget_info(study),
        wall_seconds=wall,
        n_workers=len(workers) or None,
        max_concurrent=_max_concurrent(intervals),
        is_running=by_state["RUNNING"] > 0 or by_state["WAITING"] > 0,
        snapshot_at=now,
        created_at=None if created is None else str(created),
    )


# --------------------------------------------------------------------------------------------
# Figure data: one NamedTuple per figure.
# --------------------------------------------------------------------------------------------


class _HistoryInfo(NamedTuple):
    metric_name: str
    direction: str
    numbers: list[int]  # complete trials, in trial order
    values: list[float]
    best_so_far: list[float]
    best_number: int | None
    n_since_best: int  # complete trials after the one that set the best value


def _get_history_info(study: optuna.Study) -> _HistoryInfo | None:
    """Objective value of each complete trial and the best value so far (single objective).

    Returns:
        None for a multi-objective study (its Pareto front answers instead).
    """
    if len(study.directions) > 1:
        return None
    trials = sorted(_complete(study), key=lambda t: t.number)
    minimize = study.direction == StudyDirection.MINIMIZE
    best_so_far: list[float] = []
    best_index = 0
    for i, trial in enumerate(trials):
        value = trial.values[0]
        if not best_so_far or (value < best_so_far[-1] if minimize else value > best_so_far[-1]):
            best_index = i
            best_so_far.append(value)
        else:
            best_so_far.append(best_so_far[-1])
    return _HistoryInfo(
        metric_name=_metric_names(study)[0],
        direction=study.direction.name.lower(),
        numbers=[t.number for t in trials],
        values=[t.values[0] for t in trials],
        best_so_far=best_so_far,
        best_number=trials[best_index].number if trials else None,
        n_since_best=len(trials) - 1 - best_index if trials else 0,
    )


class _CurveInfo(NamedTuple):
    number: int
    state: str
    steps: list[int]
    values: list[float]


class _LearningCurvesInfo(NamedTuple):
    metric_name: str  # "val_loss" from the trials' history, else the reported metric
    source: str  # "history" or "intermediate_values"
    curves: list[_CurveInfo]
    best_numbers: list[int]


def _history_curve(trial: FrozenTrial) -> tuple[list[int], list[float]] | None:
    history = trial.user_attrs.get("history")
    if not isinstance(history, list):
        return None
    points = sorted(
        (int(p["step"]), float(p["val_loss"]))
        for p in history
        if isinstance(p, dict)
        and _int(p.get("step")) is not None
        and _num(p.get("val_loss")) is not None
    )
    if not points:
        return None
    return [s for s, _ in points], [v for _, v in points]


def _intermediate_curve(trial: FrozenTrial) -> tuple[list[int], list[float]] | None:
    points = sorted((s, v) for s, v in trial.intermediate_values.items() if _num(v) is not None)
    if not points:
        return None
    return [s for s, _ in points], [v for _, v in points]


def _get_learning_curves_info(study: optuna.Study) -> _LearningCurvesInfo:
    """Validation loss against examples seen for every trial that has a curve.

    The curve comes from ``user_attrs["history"]`` (``val_loss`` per ``step``) when any trial has
    one, else from the reported intermediate values (the study's metric at examples seen). A
    trial without a history yet (a running one) shows its intermediate values when the study's
    metric is ``val_loss`` too.
    """
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    metric = _metric_names(study)[0]
    from_history = {t.number: c for t in trials if (c := _history_curve(t)) is not None}
    source = "history" if from_history else "intermediate_values"
    curves: list[_CurveInfo] = []
    for trial in trials:
        curve = from_history.get(trial.number)
        if curve is None and (not from_history or metric == "val_loss"):
            curve = _intermediate_curve(trial)
        if curve is not None:
            curves.append(_CurveInfo(trial.number, trial.state.name, *curve))
    best = [t.number for t in _best_trials(study)]
    return _LearningCurvesInfo("val_loss" if from_history else metric, source, curves, best)


class _ImportancesInfo(NamedTuple):
    param_names: list[str]  # most important first
    importances: list[float]  # normalized to sum to 1
    evaluator: str
    n_trials: int  # complete trials they were computed on
    notes: list[str]  # why there are none, or what the evaluator warned about
    seconds: float


def _get_importances_info(study: optuna.Study) -> _ImportancesInfo:
    """Hyperparameter importances by optuna's default evaluator (PED-ANOVA), never raising.

    PED-ANOVA assesses conditional parameters too and stays fast on thousands of trials (about
    0.1 s for 2,000 trials of 4 parameters here), so no sampling is needed. Its warnings (too few
    trials, too few trials in a regime) become notes in the report.
    """
    start = time.perf_counter()
    evaluator = "PED-ANOVA"
    n = len(_complete(study))
    params = sorted({p for t in _complete(study) for p in t.params})
    why = None
    if n < _MIN_IMPORTANCE_TRIALS:
        why = f"{n} complete trial(s); importances need at least {_MIN_IMPORTANCE_TRIALS}."
    elif not params:
        why = "The complete trials have no parameters."
    if why is not None:
        return _ImportancesInfo([], [], evaluator, n, [why], time.perf_counter() - start)
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # optuna reports weak estimates as UserWarnings: show them, don't raise them.
            warnings.simplefilter("always", UserWarning)
            importances = optuna.importance.get_param_importances(study)
        notes += sorted({str(w.message) for w in caught})
    except Exception as e:  # noqa: BLE001 - a report must render even when an estimate fails
        notes.append(f"Importances could not be computed: {type(e).__name__}: {e}")
        importances = {}
    return _ImportancesInfo(
        list(importances),
        list(importances.values()),
        evaluator,
        n,
        notes,
        time.perf_counter() - start,
    )


def _ranked_params(study: optuna.Study, importances: _ImportancesInfo | None) -> list[str]:
    """Parameters of complete trials, most important first, then by how often they were set."""
    counts: dict[str, int] = {}
    for trial in _complete(study):
        for name in trial.params:
            counts[name] = counts.get(name, 0) + 1
    ranked = [p for p in (importances.param_names if importances else []) if p in counts]
    rest = sorted((p for p in counts if p not in ranked), key=lambda p: (-counts[p], p))
    return ranked + rest


class _ContourInfo(NamedTuple):
    params: list[str]  # the two most important parameters set together in >= 2 trials
    n_trials: int  # complete trials that set both
    note: str | None


def _get_contour_info(
    study: optuna.Study, importances: _ImportancesInfo | None = None
) -> _ContourInfo:
    """Pick the two most important parameters that vary and are set together in >= 2 trials."""
    complete = _complete(study)
    varying = [
        p
        for p in _ranked_params(study, importances)
        if len({repr(t.params.get(p)) for t in complete if p in t.params}) > 1
    ]
    for i, first in enumerate(varying):
        for second in varying[i + 1 :]:
            n = sum(1 for t in complete if first in t.params and second in t.params)
            if n >= 2:
                return _ContourInfo([first, second], n, None)
    return _ContourInfo(
        [],
        0,
        "A contour needs two parameters that vary, set together in at least two complete trials.",
    )


class _TimelineBar(NamedTuple):
    number: int
    worker: str
    state: str
    start: datetime.datetime
    end: datetime.datetime


class _TimelineInfo(NamedTuple):
    workers: list[str]  # in order of first start
    bars: list[_TimelineBar]
    workers_recorded: bool


def _get_timeline_info(study: optuna.Study, now: datetime.datetime | None = None) -> _TimelineInfo:
    """Start and end of every started trial, by worker; running trials end at ``now``."""
    now = now or datetime.datetime.now()
    bars: list[_TimelineBar] = []
    recorded = False
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        end = _end_time(trial, now)
        if trial.datetime_start is None or end is None:
            continue
        worker = _worker_label(trial)
        recorded |= worker is not None
        bars.append(
            _TimelineBar(
                trial.number,
                worker or "(not recorded)",
                trial.state.name,
                trial.datetime_start,
                end,
            )
        )
    order: list[str] = []
    for bar in sorted(bars, key=lambda b: b.start):
        if bar.worker not in order:
            order.append(bar.worker)
    return _TimelineInfo(order, bars, recorded)


class _EfficiencyPoint(NamedTuple):
    number: int
    state: str
    score: float
    trainable_params: int | None
    seconds: float | None


class _EfficiencyInfo(NamedTuple):
    score_name: str  # "val_accuracy", else the objective's name
    points: list[_EfficiencyPoint]  # complete and pruned trials with a score
    seconds_source: str  # "train_seconds" or "trial duration"


def _get_efficiency_info(study: optuna.Study) -> _EfficiencyInfo:
    """Validation accuracy against trainable parameters and against training time.

    Falls back to the objective value (single objective) when no trial recorded
    ``val_accuracy``, and to the trial's duration when it recorded no ``train_seconds``.
    """
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.datetime_start is not None
    ]
    use_accuracy = any(_num(t.user_attrs.get("val_accuracy")) is not None for t in trials)
    use_train_seconds = any(_num(t.user_attrs.get("train_seconds")) is not None for t in trials)
    points: list[_EfficiencyPoint] = []
    for trial in trials:
        if use_accuracy:
            score = _num(trial.user_attrs.get("val_accuracy"))
        elif len(study.directions) == 1 and trial.state == TrialState.COMPLETE:
            score = _num(trial.values[0])
        else:
            score = None
        if score is None:
            continue
        if use_train_seconds:
            seconds = _num(trial.user_attrs.get("train_seconds"))
        elif trial.duration is not None:
            seconds = trial.duration.total_seconds()
        else:
            seconds = None
        params = _int(trial.user_attrs.get("trainable_params"))
        points.append(_EfficiencyPoint(trial.number, trial.state.name, score, params, seconds))
    name = "val_accuracy" if use_accuracy else _metric_names(study)[0]
    return _EfficiencyInfo(name, points, "train_seconds" if use_train_seconds else "trial duration")


class _ParetoFrontInfo(NamedTuple):
    metric_names: list[str]
    directions: list[str]
    front_numbers: list[int]
    n_complete: int


def _get_pareto_front_info(study: optuna.Study) -> _ParetoFrontInfo | None:
    """The trials on the Pareto front; None for a single-objective study."""
    if len(study.directions) == 1:
        return None
    return _ParetoFrontInfo(
        metric_names=_metric_names(study),
        directions=[d.name.lower() for d in study.directions],
        front_numbers=[t.number for t in _best_trials(study)],
        n_complete=len(_complete(study)),
    )


# --------------------------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------------------------


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


class _TrialsTableInfo(NamedTuple):
    metric_names: list[str]
    top: list[_TrialRow]  # best complete trials first (Pareto front for several objectives)
    others: list[_TrialRow]  # the most recent non-complete trials
    n_others: int  # how many non-complete trials there are in all


def _trial_notes(trial: FrozenTrial) -> list[str]:
    notes = []
    if trial.user_attrs.get("warm_start_from") is not None:
        notes.append(f"warm start from study {trial.user_attrs['warm_start_from']}")
    if trial.system_attrs.get("failed_trial") is not None:
        retries = trial.system_attrs.get("retry_history") or []
        notes.append(
            f"retry of trial {trial.system_attrs['failed_trial']} (attempt {len(retries) + 1})"
        )
    if trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") is not None:
        notes.append(f"failed: {trial.user_attrs['fail_reason']}")
    return notes


def _trial_row(trial: FrozenTrial) -> _TrialRow:
    attrs = trial.user_attrs
    return _TrialRow(
        number=trial.number,
        state=trial.state.name,
        values=list(trial.values) if trial.values is not None else None,
        val_accuracy=_num(attrs.get("val_accuracy")),
        val_f1=_num(attrs.get("val_f1")),
        best_step=_int(attrs.get("best_step")),
        examples_seen=_examples_seen(trial),
        train_seconds=_num(attrs.get("train_seconds")),
        trainable_params=_int(attrs.get("trainable_params")),
        params=dict(trial.params),
        worker=_worker_label(trial),
        notes=_trial_notes(trial),
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


# --------------------------------------------------------------------------------------------
# Figures: plotly, imported here only.
# --------------------------------------------------------------------------------------------


def _t(text: Any) -> str:
    """Escape a user string for plotly text, which reads a subset of HTML in labels.

    Quotes are kept: plotly decodes ``&lt;``, ``&gt;`` and ``&amp;`` but shows ``&quot;`` as typed.
    """
    return html.escape(str(text), quote=False)


def _layout(fig: go.Figure, height: int, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        height=height,
        margin={"l": 60, "r": 30, "t": 40, "b": 50},
        template="plotly_white",
        title=None,
        **kwargs,
    )
    return fig


def _history_figure(info: _HistoryInfo) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(
        x=info.numbers,
        y=info.values,
        mode="markers",
        name=_t(info.metric_name),
        marker={"color": _STATE_COLORS["COMPLETE"], "size": 6, "opacity": 0.7},
    )
    fig.add_scatter(
        x=info.numbers,
        y=info.best_so_far,
        mode="lines",
        name="best so far",
        line={"color": "#d62728", "shape": "hv"},
    )
    return _layout(fig, 400, xaxis_title="trial", yaxis_title=_t(info.metric_name))


def _learning_curves_figure(info: _LearningCurvesInfo) -> go.Figure:
    import plotly.graph_objects as go

    # One trace per state with gaps (None) between trials: thousands of curves stay light.
    styles = {
        "COMPLETE": {"color": _STATE_COLORS["COMPLETE"], "width": 1},
        "PRUNED": {"color": _STATE_COLORS["PRUNED"], "width": 1, "dash": "dot"},
        "FAIL": {"color": _STATE_COLORS["FAIL"], "width": 1, "dash": "dash"},
        "RUNNING": {"color": _STATE_COLORS["RUNNING"], "width": 2},
    }
    fig = go.Figure()
    best = set(info.best_numbers)
    for state, line in styles.items():
        xs: list[int | None] = []
        ys: list[float | None] = []
        text: list[str | None] = []
        for curve in info.curves:
            if curve.state == state:
                xs += [*curve.steps, None]
                ys += [*curve.values, None]
                text += [f"trial {curve.number}"] * len(curve.steps) + [None]
        if xs:
            fig.add_scatter(
                x=xs,
                y=ys,
                text=text,
                mode="lines+markers",
                name=state.lower(),
                line=line,
                marker={"size": 3},
                opacity=0.6,
                hovertemplate="%{text}<br>%{x}: %{y:.4g}<extra></extra>",
            )
    for curve in info.curves:
        if curve.number in best:
            fig.add_scatter(
                x=curve.steps,
                y=curve.values,
                mode="lines+markers",
                name=f"best: trial {curve.number}",
                line={"color": _BEST_COLOR, "width": 3},
            )
    return _layout(fig, 420, xaxis_title="examples seen", yaxis_title=_t(info.metric_name))


def _importances_figure(info: _ImportancesInfo) -> go.Figure:
    import plotly.graph_objects as go

    names = [_t(p) for p in reversed(info.param_names)]
    values = list(reversed(info.importances))
    fig = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker_color=_STATE_COLORS["COMPLETE"],
            text=[f"{v:.2f}" if v >= 0.01 else "<0.01" for v in values],
            textposition="outside",
        )
    )
    return _layout(
        fig,
        120 + 32 * len(names),
        xaxis_title=f"importance ({info.evaluator})",
        xaxis_range=[0, 1.1 * max(values + [0.01])],
    )


def _objective_target(study: optuna.Study) -> dict[str, Any]:
    """optuna plot arguments that pick the first objective of a multi-objective study."""
    if len(study.directions) == 1:
        return {"target_name": _t(_metric_names(study)[0])}
    return {"target": lambda t: t.values[0], "target_name": _t(_metric_names(study)[0])}


def _escape_choice(choice: Any) -> Any:
    return _t(choice) if isinstance(choice, str) else choice


def _escaped_for_plotly(study: optuna.Study) -> optuna.Study:
    """The same study with parameter names and string choices escaped, for optuna's figures.

    optuna puts them into plotly labels and hover text as they are, and plotly reads a subset of
    HTML there: escaped, a name like ``<b>x</b>`` shows as typed.
    """
    trials = study.get_trials(deepcopy=False)
    texts = {p for t in trials for p in t.params} | {
        c
        for t in trials
        for d in t.distributions.values()
        if isinstance(d, CategoricalDistribution)
        for c in d.choices
        if isinstance(c, str)
    }
    if all(_t(x) == x for x in texts):
        return study

    def escape_dist(dist: BaseDistribution) -> BaseDistribution:
        if isinstance(dist, CategoricalDistribution):
            return CategoricalDistribution([_escape_choice(c) for c in dist.choices])
        return dist

    def escape_params(trial: FrozenTrial) -> dict[str, Any]:
        return {
            _t(k): _escape_choice(v)
            if isinstance(trial.distributions[k], CategoricalDistribution)
            else v
            for k, v in trial.params.items()
        }

    escaped = [
        FrozenTrial(
            number=t.number,
            state=t.state,
            value=None,
            values=t.values,
            datetime_start=t.datetime_start,
            datetime_complete=t.datetime_complete,
            params=escape_params(t),
            distributions={_t(k): escape_dist(d) for k, d in t.distributions.items()},
            user_attrs={},
            system_attrs={},
            intermediate_values=t.intermediate_values,
            trial_id=t._trial_id,
        )
        for t in trials
    ]
    return _study_of(study, escaped)


def _parallel_figure(study: optuna.Study, params: list[str]) -> go.Figure:
    from optuna.visualization import plot_parallel_coordinate

    target = _objective_target(study)  # before subsampling: the copy has no metric names
    complete = _complete(study)
    if len(complete) > _MAX_PARALLEL_TRIALS:
        best = sorted(complete, key=_sort_key(study.directions[0]))[:_MAX_PARALLEL_TRIALS]
        study = _study_of(study, best)
        params = [p for p in params if any(p in t.params for t in best)]
    fig = plot_parallel_coordinate(
        _escaped_for_plotly(study), params=[_t(p) for p in params], **target
    )
    return _layout(fig, 460)


def _slice_figure(study: optuna.Study, params: list[str]) -> go.Figure:
    from optuna.visualization import plot_slice

    fig = plot_slice(
        _escaped_for_plotly(study), params=[_t(p) for p in params], **_objective_target(study)
    )
    return _layout(fig, 380, width=None)


def _contour_figure(study: optuna.Study, info: _ContourInfo) -> go.Figure:
    from optuna.visualization import plot_contour

    fig = plot_contour(
        _escaped_for_plotly(study), params=[_t(p) for p in info.params], **_objective_target(study)
    )
    return _layout(fig, 480)


def _timeline_figure(info: _TimelineInfo) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for state in (s.name for s in _STATE_ORDER):
        bars = [b for b in info.bars if b.state == state]
        if not bars:
            continue
        fig.add_bar(
            name=state.lower(),
            orientation="h",
            marker={"color": _STATE_COLORS[state], "line": {"width": 0}},
            base=[b.start.isoformat() for b in bars],
            x=[max((b.end - b.start).total_seconds() * 1000, 1.0) for b in bars],
            y=[_t(b.worker) for b in bars],
            text=[f"trial {b.number}" for b in bars],
            textposition="none",
            hovertemplate="%{text}<br>%{y}<br>%{base} → %{x:.0f} ms<extra>"
            + state.lower()
            + "</extra>",
        )
    fig.update_xaxes(type="date")
    fig.update_yaxes(categoryorder="array", categoryarray=[_t(w) for w in reversed(info.workers)])
    return _layout(
        fig,
        160 + 40 * len(info.workers),
        barmode="overlay",
        xaxis_title="time",
        yaxis_title="worker",
    )


def _efficiency_figure(info: _EfficiencyInfo) -> go.Figure:
    from plotly.subplots import make_subplots

    with_params = any(p.trainable_params is not None for p in info.points)
    panels = [("trainable_params", "trainable parameters")] if with_params else []
    panels.append(("seconds", f"training time, s ({info.seconds_source})"))
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.06)
    for col, (field, title) in enumerate(panels, start=1):
        for state in ("COMPLETE", "PRUNED"):
            points = [p for p in info.points if p.state == state and getattr(p, field) is not None]
            if not points:
                continue
            fig.add_scatter(
                x=[getattr(p, field) for p in points],
                y=[p.score for p in points],
                text=[f"trial {p.number}" for p in points],
                mode="markers",
                name=state.lower(),
                legendgroup=state,
                showlegend=col == 1,
                marker={
                    "color": _STATE_COLORS[state],
                    "symbol": "circle" if state == "COMPLETE" else "x",
                    "size": 7,
                    "opacity": 0.75,
                },
                hovertemplate="%{text}<br>%{x:.4g}: %{y:.4g}<extra></extra>",
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text=title,
            type="log" if field == "trainable_params" else "linear",
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text=_t(info.score_name), row=1, col=1)
    return _layout(fig, 420)


def _pareto_figure(study: optuna.Study, info: _ParetoFrontInfo) -> go.Figure:
    from optuna.visualization import plot_pareto_front

    fig = plot_pareto_front(
        _escaped_for_plotly(study), target_names=[_t(n) for n in info.metric_names]
    )
    return _layout(fig, 480)


# --------------------------------------------------------------------------------------------
# HTML.
# --------------------------------------------------------------------------------------------


class _Section(NamedTuple):
    key: str  # id of the figure's div: "hpo-fig-<key>"
    title: str
    caption: str  # HTML, already escaped
    figure: go.Figure | None
    note: str | None  # shown instead of (or under) the figure; plain text


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element: no ``</``, ``<!--`` or ``]]>``."""
    text = json.dumps(obj, default=str, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}"


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())


def _sections(study: optuna.Study, now: datetime.datetime) -> list[_Section]:
    """Compute every figure's info and figure, with a note where a figure can't be drawn."""
    sections: list[_Section] = []
    n_complete = len(_complete(study))
    none_yet = "No trial has completed yet." if n_complete == 0 else None

    history = _get_history_info(study)
    if history is not None:
        caption = ""
        if history.best_number is not None:
            caption = (
                f"Best {_e(history.metric_name)} ({_e(history.direction)}) found at trial "
                f"{history.best_number}; {history.n_since_best} complete trial(s) since without improvement."
            )
        sections.append(
            _Section(
                "history",
                "Optimization history",
                caption,
                _history_figure(history) if history.numbers else None,
                none_yet,
            )
        )

    curves = _get_learning_curves_info(study)
    caption = (
        f"{_e(curves.metric_name)} against examples seen ({_e(curves.source)}); pruned trials dotted, "
        "the best trial bold."
    )
    sections.append(
        _Section(
            "learning_curves",
            "Learning curves",
            caption,
            _learning_curves_figure(curves) if curves.curves else None,
            None if curves.curves else "No trial has reported a validation value yet.",
        )
    )

    importances = _get_importances_info(study)
    caption = f"{_e(importances.evaluator)} on {importances.n_trials} complete trial(s), in {importances.seconds:.2f} s."
    sections.append(
        _Section(
            "importances",
            "Hyperparameter importances",
            caption,
            _importances_figure(importances) if importances.param_names else None,
            " ".join(importances.notes) or None,
        )
    )

    params = _ranked_params(study, importances)[:_MAX_PLOT_PARAMS]
    shown = min(n_complete, _MAX_PARALLEL_TRIALS)
    first = _e(_metric_names(study)[0])
    no_params = none_yet or (None if params else "The complete trials have no parameters.")
    sections.append(
        _Section(
            "parallel",
            "Parallel coordinates",
            f"The {shown} best of {n_complete} complete trial(s), by {first}; up to {_MAX_PLOT_PARAMS} most important parameters.",
            _parallel_figure(study, params) if params and n_complete else None,
            no_params,
        )
    )
    sections.append(
        _Section(
            "slice",
            "Slice plots",
            f"{first} against each parameter; colour is the trial number.",
            _slice_figure(study, params) if params and n_complete else None,
            no_params,
        )
    )

    contour = _get_contour_info(study, importances)
    sections.append(
        _Section(
            "contour",
            "Contour of the two most important parameters",
            f"{first} over {', '.join(_e(p) for p in contour.params) or '–'} ({contour.n_trials} trials).",
            _contour_figure(study, contour) if contour.params else None,
            none_yet or contour.note,
        )
    )

    timeline = _get_timeline_info(study, now)
    caption = "Each bar is a trial, by worker (host:pid)."
    if not timeline.workers_recorded and timeline.bars:
        caption += " The trials recorded no worker."
    sections.append(
        _Section(
            "timeline",
            "Timeline of trials by worker",
            caption,
            _timeline_figure(timeline) if timeline.bars else None,
            None if timeline.bars else "No trial has started yet.",
        )
    )

    efficiency = _get_efficiency_info(study)
    sections.append(
        _Section(
            "efficiency",
            "Efficiency",
            f"{_e(efficiency.score_name)} against trainable parameters and training time; pruned trials at their best step.",
            _efficiency_figure(efficiency) if efficiency.points else None,
            None if efficiency.points else "No complete or pruned trial has a score yet.",
        )
    )

    pareto = _get_pareto_front_info(study)
    if pareto is not None:
        can_plot = len(pareto.directions) in (2, 3) and pareto.n_complete > 0
        note = none_yet or (None if can_plot else "A Pareto-front figure needs 2 or 3 objectives.")
        sections.append(
            _Section(
                "pareto",
                "Pareto front",
                f"{len(pareto.front_numbers)} trial(s) on the front of {pareto.n_complete} complete.",
                _pareto_figure(study, pareto) if can_plot else None,
                note,
            )
        )
    return sections


def _figure_html(section: _Section) -> str:
    parts = [
        f'<section class="figure" id="{_e(section.key)}" data-figure="{_e(section.key)}">',
        f"<h2>{_e(section.title)}</h2>",
    ]
    if section.figure is not None:
        # The caption describes the figure; without one, the note says why there is none.
        if section.caption:
            parts.append(f'<p class="caption">{section.caption}</p>')
        height = section.figure.layout.height or 450
        parts.append(
            section.figure.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"hpo-fig-{section.key}",
                default_height=f"{height}px",
                config={"displaylogo": False, "responsive": True},
            )
        )
    if section.note:
        parts.append(f'<p class="note">{_e(section.note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _summary_html(info: _SummaryInfo) -> str:
    by_state = info.n_trials_by_state
    total = sum(by_state.values())
    states = ", ".join(f"{n} {_STATE_WORDS.get(s, s.lower())}" for s, n in by_state.items())
    rows: list[tuple[str, str]] = [
        ("Study", f"<code>{_e(info.study_name)}</code>"),
        ("Storage", f"<code>{_e(info.storage)}</code>"),
        ("Objective", _e(info.objective or "not recorded")),
        ("Model", _e(info.model or "not recorded")),
        (
            "Dataset",
            _e(info.dataset or "not recorded")
            + (
                f" (fingerprint <code>{_e(info.data_fingerprint)}</code>)"
                if info.data_fingerprint
                else ""
            )
            + (
                " · " + _e(", ".join(f"{k} {v}" for k, v in info.data_sizes.items()))
                if info.data_sizes
                else ""
            ),
        ),
        (
            "Metric",
            _e(
                ", ".join(
                    f"{m} ({d})" for m, d in zip(info.metric_names, info.directions, strict=True)
                )
            ),
        ),
        ("Sampler", _e(info.sampler or "not recorded")),
        ("Pruner", _e(info.pruner or "not recorded")),
        ("Trials", f"{total}: {_e(states)}"),
    ]
    if info.best_values is not None:
        best = (
            f"<strong>{_e(_fmt(info.best_values[0], 6))}</strong> (trial {info.best_numbers[0]})"
            f" · val_accuracy {_e(_fmt(info.best_val_accuracy))} · val_f1 {_e(_fmt(info.best_val_f1))}"
            f"<br><code>{_e(_fmt_params(info.best_params))}</code>"
        )
    elif info.best_numbers:
        best = f"{len(info.best_numbers)} trial(s) on the Pareto front: {_e(', '.join(map(str, info.best_numbers)))}"
    else:
        best = "No trial has completed yet."
    rows.append(("Best", best))
    b = info.budget
    full = b.examples_trained + b.examples_saved
    saved = f"{_fmt_int(b.examples_saved)} examples"
    if full:
        saved += f" ({b.examples_saved / full:.0%} of the {_fmt_int(full)} that running every trial to the end would take)"
    if b.seconds_saved is not None:
        saved += f", about {_fmt_seconds(b.seconds_saved)} of training"
    rows.append(
        (
            "Training budget",
            f"{_fmt_int(b.examples_trained)} examples trained over all trials"
            + (" (partly estimated from reported steps)" if b.estimated else ""),
        )
    )
    rows.append(("Saved by pruning", _e(saved)))
    workers = f"{info.n_workers} worker(s)" if info.n_workers else "workers not recorded"
    wall = "no trial has started yet"
    if info.wall_seconds is not None:
        wall = f"{_fmt_seconds(info.wall_seconds)} · {workers} · at most {info.max_concurrent} trial(s) at once"
    rows.append(("Wall time", wall))
    if info.created_at:
        rows.append(("Created", _e(info.created_at)))
    body = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    snapshot = ""
    if info.is_running:
        snapshot = (
            f'<p class="snapshot">Snapshot of a running study at {_e(info.snapshot_at.isoformat(timespec="seconds"))}: '
            f"{by_state['RUNNING']} running, {by_state['WAITING']} waiting.</p>"
        )
    return f'<section id="summary"><h2>Summary</h2>{snapshot}<table class="kv">{body}</table></section>'


def _rows_html(rows: list[_TrialRow], metric_names: list[str], rank: bool) -> str:
    head = (["#"] if rank else []) + [
        "trial",
        "state",
        *metric_names,
        "val_accuracy",
        "val_f1",
        "best step",
        "examples seen",
        "train time",
        "trainable params",
        "worker",
        "parameters",
        "notes",
    ]
    out = [
        "<table class='trials'><thead><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    for i, row in enumerate(rows, start=1):
        values = row.values if row.values is not None else [None] * len(metric_names)
        cells = ([str(i)] if rank else []) + [
            str(row.number),
            row.state.lower(),
            *(_fmt(v, 6) for v in values),
            _fmt(row.val_accuracy),
            _fmt(row.val_f1),
            _fmt_int(row.best_step),
            _fmt_int(row.examples_seen),
            _fmt_seconds(row.train_seconds),
            _fmt_int(row.trainable_params),
            row.worker or "–",
            _fmt_params(row.params),
            "; ".join(row.notes),
        ]
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _tables_html(info: _TrialsTableInfo) -> str:
    parts = ['<section id="trials"><h2>Top trials</h2>']
    parts.append(
        _rows_html(info.top, info.metric_names, rank=True)
        if info.top
        else '<p class="note">No trial has completed yet.</p>'
    )
    if info.n_others:
        parts.append(
            f"<h3>Pruned, failed, running and waiting trials ({len(info.others)} most recent of {info.n_others})</h3>"
        )
        parts.append(_rows_html(info.others, info.metric_names, rank=False))
    parts.append("</section>")
    return "\n".join(parts)


def _config_html(study: optuna.Study, storage_label: str) -> str:
    space = _get_search_space_info(study)
    parts = ['<section id="config"><h2>Search space</h2>']
    if space:
        parts.append(
            "<table class='trials'><thead><tr><th>parameter</th><th>type</th><th>domain</th><th>condition</th></tr></thead><tbody>"
        )
        parts += [
            f"<tr><td><code>{_e(r.name)}</code></td><td>{_e(r.kind)}</td><td>{_e(r.domain)}</td><td>{_e(r.condition or '–')}</td></tr>"
            for r in space
        ]
        parts.append("</tbody></table>")
    else:
        parts.append(
            '<p class="note">No search space recorded and no trial has parameters yet.</p>'
        )
    parts.append("<h2>Configuration</h2>")
    for key in ("hpo_config", "data", "versions"):
        if key in study.user_attrs:
            value = study.user_attrs[key]
            if isinstance(value, dict) and "storage" in value:
                # A config that kept its storage URL must not show the password in it.
                value = {**value, "storage": storage_label}
            text = json.dumps(value, indent=2, sort_keys=True, default=str)
            parts.append(f"<h3><code>{_e(key)}</code></h3><pre>{_e(text)}</pre>")
    if not any(k in study.user_attrs for k in ("hpo_config", "data", "versions")):
        parts.append('<p class="note">No configuration recorded (not an hpo study).</p>')
    parts.append("</section>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin:1.6rem 0 .3rem;border-bottom:1px solid #ddd}
h3{font-size:1rem}nav a{margin-right:.8rem}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto}.caption{color:#555;margin:.2rem 0}.note{color:#8a5a00;background:#fff8e1;padding:.5rem}
.snapshot{background:#e8f5e9;padding:.5rem}table{border-collapse:collapse;font-size:.85rem}
table.kv th{text-align:left;padding:.25rem 1rem .25rem 0;vertical-align:top;white-space:nowrap}
table.trials{display:block;overflow-x:auto}table.trials th,table.trials td{border:1px solid #ddd;padding:.2rem .4rem;vertical-align:top}
table.trials th{background:#f6f8fa}footer{color:#777;font-size:.8rem;margin-top:2rem}
"""


def build_report_html(study: optuna.Study, storage_label: str) -> str:
    """Render a study's report as one self-contained HTML document.

    plotly.js is inlined exactly once, so the file opens offline from disk. Every user-provided
    string is escaped.

    Args:
        study:
            The study to report on, in any storage; it may still be running.
        storage_label:
            The storage URL to show, with its password already redacted.

    Returns:
        The HTML document.

    Example:
        .. code-block:: python

            study = optuna.create_study()
            study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=20)
            html_text = build_report_html(study, storage_label="in-memory")
    """
    from plotly import __version__ as plotly_version
    from plotly.offline import get_plotlyjs

    start = time.perf_counter()
    now = datetime.datetime.now()
    snap = _snapshot(study)
    summary = _get_summary_info(snap, storage_label, now)
    sections = _sections(snap, now)
    figures = "\n".join(_figure_html(s) for s in sections)
    nav = " ".join(
        f'<a href="#{_e(k)}">{_e(t)}</a>'
        for k, t in [
            ("summary", "Summary"),
            *((s.key, s.title.split(" of ")[0]) for s in sections),
            ("trials", "Top trials"),
            ("config", "Config"),
        ]
    )
    meta = {
        "study": snap.study_name,
        "figures": [s.key for s in sections if s.figure is not None],
        "n_trials": len(snap.trials),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hpo report: {_e(snap.study_name)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
<script type="application/json" id="hpo-report-meta">{_json_for_script(meta)}</script>
</head>
<body>
<h1>Study <code>{_e(snap.study_name)}</code></h1>
<nav>{nav}</nav>
{_summary_html(summary)}
{figures}
{_tables_html(_get_trials_table_info(snap))}
{_config_html(snap, storage_label)}
<footer>Generated by hpo at {_e(now.isoformat(timespec="seconds"))} with optuna {_e(optuna.__version__)} and plotly {_e(plotly_version)}.</footer>
</body>
</html>
"""


def write_report(
    study: optuna.Study, path: str | os.PathLike[str], storage_label: str
) -> pathlib.Path:
    """Write a study's report to ``path`` atomically, so a browser never reads half a file.

    Args:
        study:
            The study to report on.
        path:
            Where to write the HTML file; missing parent folders are created.
        storage_label:
            The storage URL to show, with its password already redacted.

    Returns:
        The path written.

    Example:
        .. code-block:: python

            write_report(study, "report.html", storage_label="sqlite:///studies.db")
    """
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = build_report_html(study, storage_label)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return out
