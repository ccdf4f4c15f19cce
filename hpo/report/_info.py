"""The numbers behind each figure: ``_get_<plot>_info(study) -> NamedTuple``, tested on their own.

As in ``optuna.visualization``, each figure has two halves: these functions compute the numbers,
and :mod:`hpo.report._figures` draws them with plotly.
"""

from __future__ import annotations

import datetime
import time
import warnings
from typing import NamedTuple

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.report._study import _best_trials
from hpo.report._study import _complete
from hpo.report._study import _end_time
from hpo.report._study import _metric_names
from hpo.report._study import _num
from hpo.report._study import _record
from hpo.report._study import _worker_label

# Fewer complete trials than this and importances are noise; PED-ANOVA warns below it anyway.
_MIN_IMPORTANCE_TRIALS = 4


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
    points = sorted(
        (p.step, p.metrics["val_loss"]) for p in _record(trial).history if "val_loss" in p.metrics
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


class _LanguageCurvesInfo(NamedTuple):
    """Validation loss and perplexity against examples and tokens seen (language models)."""

    by_examples: dict[str, list[_CurveInfo]]  # metric -> curves, x: examples seen
    by_tokens: dict[str, list[_CurveInfo]]  # metric -> curves, x: training tokens seen
    best_numbers: list[int]


_LM_METRICS = ("val_loss", "val_perplexity")


def _get_language_curves_info(study: optuna.Study) -> _LanguageCurvesInfo | None:
    """The trials' ``val_loss`` and ``val_perplexity`` curves against examples and against
    tokens seen, from their histories; None when no trial recorded tokens with a perplexity
    (not a language-model study)."""
    by_examples: dict[str, list[_CurveInfo]] = {m: [] for m in _LM_METRICS}
    by_tokens: dict[str, list[_CurveInfo]] = {m: [] for m in _LM_METRICS}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        history = _record(trial).history
        for metric in _LM_METRICS:
            points = sorted((p.step, p.tokens, p.metrics[metric]) for p in history
                            if metric in p.metrics and _num(p.metrics[metric]) is not None)
            if not points:
                continue
            by_examples[metric].append(_CurveInfo(trial.number, trial.state.name,
                                                  [s for s, _, _ in points], [v for _, _, v in points]))
            with_tokens = [(t, v) for _, t, v in points if t]
            if with_tokens:
                by_tokens[metric].append(_CurveInfo(trial.number, trial.state.name,
                                                    [t for t, _ in with_tokens],
                                                    [v for _, v in with_tokens]))
    if not by_tokens["val_perplexity"]:
        return None
    return _LanguageCurvesInfo(by_examples, by_tokens, [t.number for t in _best_trials(study)])


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
    records = {t.number: _record(t) for t in trials}
    use_accuracy = any(r.metric("val_accuracy") is not None for r in records.values())
    use_train_seconds = any(r.train_seconds is not None for r in records.values())
    points: list[_EfficiencyPoint] = []
    for trial in trials:
        record = records[trial.number]
        if use_accuracy:
            score = record.metric("val_accuracy")
        elif len(study.directions) == 1 and trial.state == TrialState.COMPLETE:
            score = _num(trial.values[0])
        else:
            score = None
        if score is None:
            continue
        if use_train_seconds:
            seconds = record.train_seconds
        elif trial.duration is not None:
            seconds = trial.duration.total_seconds()
        else:
            seconds = None
        params = record.trainable_params
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


class _TradeoffPoint(NamedTuple):
    number: int
    state: str
    quality: float
    costs: dict[str, float]
    feasible: bool
    on_front: bool


class _TradeoffInfo(NamedTuple):
    metric_name: str
    costs: list[str]
    bounds: dict[str, tuple[str, float]]  # cost -> ("max"|"min", bound)
    points: list[_TradeoffPoint]


def _get_tradeoff_info(study: optuna.Study) -> _TradeoffInfo | None:
    """The study's metric against each cost it optimizes or constrains (with the constraint's
    bound): None unless the study has several objectives or constraints."""
    from objectives.record import COSTS

    cfg = study.user_attrs.get("hpo_config")
    if not isinstance(cfg, dict):
        return None
    metrics = cfg.get("metric") if isinstance(cfg.get("metric"), list) else [cfg.get("metric")]
    constraints = cfg.get("constraints") or {}
    if len(metrics) < 2 and not constraints:
        return None
    bounds = {name: next(iter(b.items())) for name, b in constraints.items() if isinstance(b, dict) and b}
    costs = [m for m in [*metrics[1:], *bounds] if m in COSTS]
    costs = list(dict.fromkeys(costs))
    front = {t.number for t in _best_trials(study)} if len(study.directions) > 1 else set()
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        record = _record(t)
        quality = (t.values[0] if t.state == TrialState.COMPLETE and t.values
                   else record.metric(str(metrics[0])))
        values = {c: v for c in costs if (v := record.value(c)) is not None}
        if quality is None or not values:
            continue
        feasible = all(v <= 0 for v in t.constraints.values())
        points.append(_TradeoffPoint(t.number, t.state.name, float(quality), values, feasible,
                                     t.number in front))
    return _TradeoffInfo(str(metrics[0]), costs, {k: (v[0], float(v[1])) for k, v in bounds.items()},
                         points)
