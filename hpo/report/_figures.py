"""Draw each figure's info with plotly, imported inside the functions only."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from hpo.report._info import _ContourInfo
from hpo.report._info import _EfficiencyInfo
from hpo.report._info import _HistoryInfo
from hpo.report._info import _ImportancesInfo
from hpo.report._info import _LanguageCurvesInfo
from hpo.report._info import _LearningCurvesInfo
from hpo.report._info import _ParetoFrontInfo
from hpo.report._info import _TimelineInfo
from hpo.report._info import _TradeoffInfo
from hpo.report._study import _STATE_ORDER
from hpo.report._study import _complete
from hpo.report._study import _metric_names
from hpo.report._study import _sort_key
from hpo.report._study import _study_of

if TYPE_CHECKING:
    import plotly.graph_objects as go

# Trials kept in the parallel-coordinate plot: optuna draws one SVG trace per trial, which a
# browser renders slowly past a few hundred; the best ones are the ones worth reading.
_MAX_PARALLEL_TRIALS = 300
_STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#2ca02c",
    "WAITING": "#7f7f7f",
}
_BEST_COLOR = "#9467bd"


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


def _language_curves_figure(info: _LanguageCurvesInfo) -> go.Figure:
    """Loss and perplexity (rows) against examples and tokens seen (columns), one figure."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, shared_xaxes="columns", vertical_spacing=0.08,
                        horizontal_spacing=0.08)
    best = set(info.best_numbers)
    shown: set[str] = set()
    for row, metric in enumerate(("val_loss", "val_perplexity"), start=1):
        for col, curves in enumerate((info.by_examples[metric], info.by_tokens[metric]), start=1):
            for curve in curves:
                is_best = curve.number in best
                state = "best" if is_best else curve.state.lower()
                color = _BEST_COLOR if is_best else _STATE_COLORS.get(curve.state, "#999")
                fig.add_scatter(
                    x=curve.steps, y=curve.values, mode="lines+markers", row=row, col=col,
                    name=state, legendgroup=state, showlegend=state not in shown,
                    line={"color": color, "width": 3 if is_best else 1,
                          "dash": "dot" if curve.state == "PRUNED" else None},
                    marker={"size": 3}, opacity=1.0 if is_best else 0.6,
                    text=[f"trial {curve.number}"] * len(curve.steps),
                    hovertemplate="%{text}<br>%{x}: %{y:.4g}<extra></extra>",
                )
                shown.add(state)
    fig.update_yaxes(title_text=_t("val_loss"), row=1, col=1)
    fig.update_yaxes(title_text=_t("val_perplexity"), type="log", row=2, col=1)
    fig.update_yaxes(type="log", row=2, col=2)
    fig.update_xaxes(title_text="examples seen", row=2, col=1)
    fig.update_xaxes(title_text="training tokens seen", row=2, col=2)
    return _layout(fig, 560)


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


def _tradeoff_figure(info: _TradeoffInfo) -> go.Figure:
    """The metric against each cost: the Pareto trials, the other feasible ones, the infeasible
    ones, and each constraint's bound as a dashed line."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(info.costs), shared_yaxes=True, horizontal_spacing=0.06)
    groups = (
        ("Pareto front", lambda p: p.on_front and p.feasible, _BEST_COLOR, "star", 11),
        ("feasible", lambda p: not p.on_front and p.feasible, _STATE_COLORS["COMPLETE"], "circle", 7),
        ("infeasible", lambda p: not p.feasible, "#7f7f7f", "x", 7),
    )
    for col, cost in enumerate(info.costs, start=1):
        for name, keep, color, symbol, size in groups:
            points = [p for p in info.points if keep(p) and cost in p.costs]
            if not points:
                continue
            fig.add_scatter(
                x=[p.costs[cost] for p in points], y=[p.quality for p in points],
                text=[f"trial {p.number} ({p.state.lower()})" for p in points], mode="markers",
                name=name, legendgroup=name, showlegend=col == 1,
                marker={"color": color, "symbol": symbol, "size": size, "opacity": 0.8},
                hovertemplate="%{text}<br>%{x:.4g}: %{y:.4g}<extra></extra>", row=1, col=col,
            )
        if cost in info.bounds:
            op, bound = info.bounds[cost]
            fig.add_vline(x=bound, line_dash="dash", line_color="#d62728", row=1, col=col,
                          annotation_text=f"{op} {bound:g}")
        fig.update_xaxes(title_text=_t(cost), row=1, col=col)
    fig.update_yaxes(title_text=_t(info.metric_name), row=1, col=1)
    return _layout(fig, 420)
