"""The report's figure sections: each figure with its caption, or a note on why it is missing."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING
from typing import NamedTuple

import optuna

from hpo.report._figures import _MAX_PARALLEL_TRIALS
from hpo.report._figures import _contour_figure
from hpo.report._figures import _efficiency_figure
from hpo.report._figures import _history_figure
from hpo.report._figures import _importances_figure
from hpo.report._figures import _language_curves_figure
from hpo.report._figures import _learning_curves_figure
from hpo.report._figures import _parallel_figure
from hpo.report._figures import _pareto_figure
from hpo.report._figures import _slice_figure
from hpo.report._figures import _timeline_figure
from hpo.report._figures import _tradeoff_figure
from hpo.report._html import _e
from hpo.report._info import _get_contour_info
from hpo.report._info import _get_efficiency_info
from hpo.report._info import _get_history_info
from hpo.report._info import _get_importances_info
from hpo.report._info import _get_language_curves_info
from hpo.report._info import _get_learning_curves_info
from hpo.report._info import _get_pareto_front_info
from hpo.report._info import _get_timeline_info
from hpo.report._info import _get_tradeoff_info
from hpo.report._info import _ranked_params
from hpo.report._study import _complete
from hpo.report._study import _metric_names

if TYPE_CHECKING:
    import plotly.graph_objects as go

# Parameters shown in the slice and parallel-coordinate plots, most important first.
_MAX_PLOT_PARAMS = 8


class _Section(NamedTuple):
    key: str  # id of the figure's div: "hpo-fig-<key>"
    title: str
    caption: str  # HTML, already escaped
    figure: go.Figure | None
    note: str | None  # shown instead of (or under) the figure; plain text


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

    language = _get_language_curves_info(study)
    if language is not None:
        sections.append(
            _Section(
                "language_curves",
                "Loss and perplexity against examples and tokens seen",
                "Validation loss (mean cross-entropy per assistant token) and perplexity (its "
                "exponential, log scale) of every trial, against training examples (left) and "
                "training tokens (right) seen; pruned trials dotted, the best trial bold.",
                _language_curves_figure(language),
                None,
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
    tradeoff = _get_tradeoff_info(study)
    if tradeoff is not None and tradeoff.costs:
        sections.append(
            _Section(
                "tradeoffs",
                "Quality against cost",
                f"{_e(tradeoff.metric_name)} against each cost the study optimizes or constrains; "
                "dashed: a constraint's bound; grey crosses: infeasible trials.",
                _tradeoff_figure(tradeoff) if tradeoff.points else None,
                None if tradeoff.points else "No complete or pruned trial has its costs yet.",
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
