"""Tests of hpo.report: the numbers behind each figure, and the report of every study shape."""

from __future__ import annotations

import datetime
import math
import pathlib
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import pytest
from _studies import T0
from _studies import XSS
from _studies import demo_study
from _studies import hpo_study
from _studies import make_trial
from _studies import xss_study
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from hpo import report
from hpo.report import _figures
from hpo.report import _info
from hpo.report import _study
from hpo.report import _summary
from hpo.report import _tables

STORAGE_MODES = ["inmemory", "sqlite"]

optuna.logging.set_verbosity(optuna.logging.WARNING)

# ----------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------


@contextmanager
def storage_supplier(mode: str, tmp_path: Any) -> Iterator[Any]:
    """The storage for ``mode``, disposed of afterwards (optuna testing/storages.py)."""
    if mode == "inmemory":
        yield optuna.storages.InMemoryStorage()
        return
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'studies.db'}")
    try:
        yield storage
    finally:
        storage.engine.dispose()


@pytest.fixture(params=STORAGE_MODES)
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    with storage_supplier(request.param, tmp_path) as s:
        yield s


def set_metric_names(study: optuna.Study, names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def without_plotlyjs(text: str) -> str:
    from plotly.offline import get_plotlyjs

    return text.replace(get_plotlyjs(), "")


# ----------------------------------------------------------------------------------------------
# Numbers behind the figures.
# ----------------------------------------------------------------------------------------------


def test_history_info_tracks_best_so_far() -> None:
    study = hpo_study()
    for loss in [0.5, 0.7, 0.3, 0.3, 0.6]:
        study.add_trial(optuna.create_trial(value=loss))
    study.add_trial(make_trial(5, TrialState.PRUNED, n_evals=1))
    info = _info._get_history_info(study)
    assert info is not None
    assert info.numbers == [0, 1, 2, 3, 4]
    assert info.best_so_far == [0.5, 0.5, 0.3, 0.3, 0.3]
    assert (info.best_number, info.n_since_best) == (2, 2)
    assert (info.metric_name, info.direction) == ("val_loss", "minimize")


def test_history_info_maximize() -> None:
    study = optuna.create_study(direction="maximize")
    for value in [0.5, 0.7, 0.6]:
        study.add_trial(optuna.create_trial(value=value))
    info = _info._get_history_info(study)
    assert info is not None
    assert info.best_so_far == [0.5, 0.7, 0.7]
    assert (info.best_number, info.n_since_best, info.metric_name) == (1, 1, "objective value")


def test_learning_curves_info_uses_history_with_states() -> None:
    study = demo_study(n=3)
    info = _info._get_learning_curves_info(study)
    assert (info.metric_name, info.source) == ("val_loss", "history")
    assert [(c.number, c.state) for c in info.curves] == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "PRUNED"),
    ]
    assert info.curves[2].steps == [240, 480]
    assert info.curves[0].values == pytest.approx([0.3 + 0.4 / k for k in (1, 2, 3, 4)])
    assert info.best_numbers == [0]


def test_learning_curves_info_falls_back_to_intermediate_values() -> None:
    study = optuna.create_study(direction="maximize")
    set_metric_names(study, ["val_accuracy"])
    study.add_trial(optuna.create_trial(value=0.8, intermediate_values={100: 0.6, 50: 0.5}))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))
    info = _info._get_learning_curves_info(study)
    assert (info.metric_name, info.source) == ("val_accuracy", "intermediate_values")
    assert [(c.number, c.steps, c.values) for c in info.curves] == [(0, [50, 100], [0.5, 0.6])]


def test_learning_curves_info_shows_a_running_trial_before_its_history() -> None:
    study = demo_study(n=2)
    running = study.ask()
    running.report(0.95, 240)
    info = _info._get_learning_curves_info(study)
    assert (info.curves[-1].number, info.curves[-1].state) == (running.number, "RUNNING")
    assert (info.curves[-1].steps, info.curves[-1].values) == ([240], [0.95])


def test_learning_curves_figure_draws_pruned_trials_dotted_in_few_traces() -> None:
    info = _info._get_learning_curves_info(demo_study(n=30))
    fig = _figures._learning_curves_figure(info)
    lines = {trace.name: trace.line.dash for trace in fig.data}
    assert lines == {"complete": None, "pruned": "dot", f"best: trial {info.best_numbers[0]}": None}


def test_parallel_figure_keeps_the_best_trials_and_the_metric_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_figures, "_MAX_PARALLEL_TRIALS", 3)
    study = demo_study()
    fig = _figures._parallel_figure(study, ["learning_rate", "finetuning"])
    assert fig.layout.xaxis.ticktext[0] == "val_loss"
    assert len([t for t in fig.data if t.mode == "lines"]) == 3  # one line per trial


def test_budget_info_counts_examples_and_pruning_savings() -> None:
    study = hpo_study()
    study.add_trials(
        [
            make_trial(0),  # 960 trained
            make_trial(1, TrialState.PRUNED, n_evals=1),  # 240 trained, 720 saved
            make_trial(2, TrialState.PRUNED, n_evals=3, planned_examples=1000),  # 720, 280 saved
        ]
    )
    budget = _summary._get_budget_info(study)
    assert budget.examples_trained == 960 + 240 + 720
    assert budget.examples_saved == 720 + 280
    assert budget.examples_pruned_planned == 960 + 1000
    # Trial 1 trained at 240 examples / 10 s, trial 2 at 720 / 30 s: both 24 examples/s.
    assert budget.seconds_saved == pytest.approx((720 + 280) / 24)
    assert not budget.estimated


def test_budget_info_estimates_from_steps_without_our_attributes() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=1.0, intermediate_values={100: 1.0, 200: 0.9}))
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, intermediate_values={100: 2.0}))
    budget = _summary._get_budget_info(study)
    assert (budget.examples_trained, budget.examples_saved, budget.estimated) == (300, 100, True)
    assert budget.seconds_saved is None


def test_summary_info_of_a_hpo_study() -> None:
    study = demo_study(n=6)
    info = _summary._get_summary_info(study, "sqlite:///studies.db", now=T0)
    assert info.n_trials_by_state == {
        "COMPLETE": 4,
        "PRUNED": 2,
        "FAIL": 0,
        "RUNNING": 0,
        "WAITING": 0,
    }
    assert (info.objective, info.model, info.dataset) == (
        "lora_classification",
        "minilm",
        "rotten_tomatoes",
    )
    assert (info.sampler, info.pruner) == ("TPESampler(seed=0)", "MedianPruner(n_startup_trials=3)")
    assert info.data_fingerprint == "fp-0123abcd"
    assert (info.metric_names, info.directions) == (["val_loss"], ["minimize"])
    best = min(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    assert info.best_numbers == [best.number]
    assert info.best_values == [best.value]
    assert info.best_val_accuracy == best.user_attrs["val_accuracy"]
    assert info.best_params == best.params
    assert (info.n_workers, info.max_concurrent) == (2, 2)
    # Trials start in pairs every 45 s; the last pair starts at 90 s and runs 40 s.
    assert info.wall_seconds == 130
    assert not info.is_running


def test_summary_info_of_a_plain_study() -> None:
    study = optuna.create_study(study_name="plain")
    info = _summary._get_summary_info(study, "in-memory")
    assert (info.objective, info.sampler, info.dataset, info.data_fingerprint) == (None,) * 4
    assert (info.best_numbers, info.best_values, info.wall_seconds, info.n_workers) == (
        [],
        None,
        None,
        None,
    )
    assert info.budget == _summary._BudgetInfo(0, 0, 0, None, False)


def test_importances_info_ranks_the_parameter_that_matters() -> None:
    study = optuna.create_study()
    for i in range(40):
        x, y = (i * 7 % 40) / 40, (i * 13 % 40) / 40
        study.add_trial(
            optuna.create_trial(
                value=(x - 0.3) ** 2 + 0.01 * y,
                params={"x": x, "y": y},
                distributions={"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)},
            )
        )
    info = _info._get_importances_info(study)
    assert info.param_names[0] == "x"
    assert sum(info.importances) == pytest.approx(1.0)
    assert (info.evaluator, info.n_trials) == ("PED-ANOVA", 40)


def test_importances_info_too_few_trials_gives_a_note() -> None:
    study = demo_study(n=2)
    info = _info._get_importances_info(study)
    assert info.param_names == []
    assert info.notes == ["2 complete trial(s); importances need at least 4."]


def test_importances_info_turns_warnings_into_notes() -> None:
    study = optuna.create_study()
    for x in [0.1, 0.2, 0.3, 0.4, 0.5]:
        study.add_trial(
            optuna.create_trial(
                value=1.0, params={"x": x}, distributions={"x": FloatDistribution(0, 1)}
            )
        )
    info = _info._get_importances_info(study)  # would raise under -W error if not caught
    assert info.param_names == ["x"]
    assert info.notes == [
        "Target and region quantiles select the same set of trials. "
        "Parameter importances will be equal."
    ]


def test_contour_info_picks_two_most_important_varying_params() -> None:
    study = demo_study()
    importances = _info._ImportancesInfo(
        ["lora_alpha", "finetuning", "learning_rate"], [0.5, 0.3, 0.2], "x", 8, [], 0.0
    )
    # lora_alpha is always 16: it doesn't vary, so the contour skips it.
    info = _info._get_contour_info(study, importances)
    assert info.params == ["finetuning", "learning_rate"]
    assert info.n_trials == 8
    assert _info._get_contour_info(demo_study(n=1)).params == []


def test_timeline_info_groups_by_worker_and_ends_running_trials_now() -> None:
    study = demo_study(n=4)
    running = study.ask()  # starts now, has no worker
    now = datetime.datetime.now() + datetime.timedelta(seconds=5)
    info = _info._get_timeline_info(study, now=now)
    assert info.workers == ["node1:100", "node1:101", "(not recorded)"]
    assert [(b.number, b.worker) for b in info.bars[:2]] == [(0, "node1:100"), (1, "node1:101")]
    assert info.bars[-1].number == running.number
    assert (info.bars[-1].state, info.bars[-1].end) == ("RUNNING", now)
    assert info.workers_recorded


def test_efficiency_info_of_complete_and_pruned_trials() -> None:
    study = demo_study(n=3)
    info = _info._get_efficiency_info(study)
    assert (info.score_name, info.seconds_source) == ("val_accuracy", "train_seconds")
    points = {p.number: p for p in info.points}
    assert points[1].trainable_params == 300_000
    assert points[2].state == "PRUNED"
    assert points[2].seconds == 20.0
    assert points[0].score == study.trials[0].user_attrs["val_accuracy"]


def test_efficiency_info_falls_back_to_objective_and_duration() -> None:
    study = optuna.create_study()
    trial = optuna.create_trial(value=0.25)
    trial.datetime_start = T0
    trial.datetime_complete = T0 + datetime.timedelta(seconds=3)
    study.add_trial(trial)
    info = _info._get_efficiency_info(study)
    assert (info.score_name, info.seconds_source) == ("objective value", "trial duration")
    assert info.points == [_info._EfficiencyPoint(0, "COMPLETE", 0.25, None, 3.0)]


def test_pareto_front_info() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    for values in [(1.0, 1.0), (2.0, 3.0), (2.5, 2.0), (0.5, 0.5)]:
        study.add_trial(optuna.create_trial(values=list(values)))
    info = _info._get_pareto_front_info(study)
    assert info is not None
    assert info.front_numbers == [0, 1, 3]
    assert info.metric_names == ["objective 0", "objective 1"]
    assert info.directions == ["minimize", "maximize"]
    assert _info._get_pareto_front_info(demo_study(n=1)) is None


def test_trials_table_info_orders_and_notes() -> None:
    study = hpo_study()
    study.add_trials(
        [
            make_trial(0, base_loss=0.5),
            make_trial(1, base_loss=0.2, warm_start_from="sst2-old"),
            make_trial(2, TrialState.PRUNED, n_evals=1),
        ]
    )
    failed = optuna.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "CUDA OOM"})
    study.add_trial(failed)
    retry = optuna.create_trial(
        state=TrialState.WAITING, system_attrs={"failed_trial": 3, "retry_history": [3]}
    )
    study.add_trial(retry)
    info = _tables._get_trials_table_info(study)
    assert [r.number for r in info.top] == [1, 0]
    assert info.top[0].notes == ["warm start from study sst2-old"]
    assert info.top[0].worker == "node1:100"
    assert [(r.number, r.state) for r in info.others] == [
        (4, "WAITING"),
        (3, "FAIL"),
        (2, "PRUNED"),
    ]
    assert info.others[0].notes == ["retry of trial 3 (attempt 2)"]
    assert info.others[1].notes == ["failed: CUDA OOM"]
    assert info.n_others == 3


def test_search_space_info_from_the_stored_space_and_from_trials() -> None:
    rows = _tables._get_search_space_info(hpo_study())
    assert rows[0] == _tables._SearchSpaceRow("learning_rate", "float", "log [1e-05, 0.0005]", None)
    assert rows[1].domain == "{'lora', 'full'}"
    assert rows[2].condition == "finetuning = 'lora'"
    plain = optuna.create_study()
    plain.add_trial(
        optuna.create_trial(value=1.0, params={"x": 2}, distributions={"x": IntDistribution(0, 5)})
    )
    [row] = _tables._get_search_space_info(plain)
    assert (row.name, row.kind) == ("x", "int")


def test_snapshot_keeps_numbers_states_and_attributes(storage: Any) -> None:
    study = demo_study(storage, n=5)
    study.ask()
    study.enqueue_trial({"learning_rate": 1e-4})
    snap = _study._snapshot(study)
    assert [(t.number, t.state) for t in snap.trials] == [(t.number, t.state) for t in study.trials]
    assert snap.user_attrs == study.user_attrs
    assert snap.study_name == study.study_name
    assert snap.trials[0].user_attrs == study.trials[0].user_attrs


# ----------------------------------------------------------------------------------------------
# The report of every study shape.
# ----------------------------------------------------------------------------------------------


def figures_of(text: str) -> list[str]:
    import json
    import re

    meta = re.search(r'<script type="application/json" id="hpo-report-meta">(.*?)</script>', text)
    assert meta is not None
    return json.loads(meta.group(1))["figures"]


def test_report_of_a_finished_study(storage: Any, tmp_path: Any) -> None:
    study = demo_study(storage)
    path = report.write_report(study, tmp_path / "out" / "report.html", "sqlite:///s.db")
    text = path.read_text(encoding="utf-8")
    assert path == tmp_path / "out" / "report.html"
    assert figures_of(text) == [
        "history",
        "learning_curves",
        "importances",
        "parallel",
        "slice",
        "contour",
        "timeline",
        "efficiency",
    ]
    for key in figures_of(text):
        assert f'id="hpo-fig-{key}"' in text
    for expected in ["sst2-lora", "sqlite:///s.db", "rotten_tomatoes", "fp-0123abcd", "TPESampler"]:
        assert expected in text
    assert "Saved by pruning" in text
    assert "12: 8 complete, 4 pruned, 0 failed, 0 running, 0 waiting" in text
    assert not list(path.parent.glob("*.tmp"))


def test_report_never_shows_a_storage_password() -> None:
    study = demo_study(n=2)
    secret = "postgresql://hpo:s3cret@db/hpo"
    study.set_user_attr("hpo_config", {**study.user_attrs["hpo_config"], "storage": secret})
    text = report.build_report_html(study, "postgresql://hpo:***@db/hpo")
    assert "s3cret" not in text
    assert text.count("postgresql://hpo:***@db/hpo") == 2  # summary and config


def test_plotlyjs_is_inlined_exactly_once() -> None:
    from plotly.offline import get_plotlyjs

    text = report.build_report_html(demo_study(), "in-memory")
    assert text.count(get_plotlyjs()) == 1
    assert "cdn.plot.ly" not in without_plotlyjs(text)
    assert "<script src=" not in text


def test_report_of_an_empty_study() -> None:
    text = report.build_report_html(hpo_study(), "in-memory")
    assert figures_of(text) == []
    assert "No trial has completed yet." in text
    assert "No trial has started yet." in text


def test_report_of_one_trial() -> None:
    study = hpo_study()
    study.add_trial(make_trial(0))
    text = report.build_report_html(study, "in-memory")
    # One trial has no varying parameter to contour and too few trials for importances.
    assert figures_of(text) == [
        "history",
        "learning_curves",
        "parallel",
        "slice",
        "timeline",
        "efficiency",
    ]
    assert "importances need at least 4" in text


def test_report_of_only_pruned_trials() -> None:
    study = hpo_study()
    study.add_trials([make_trial(i, TrialState.PRUNED, n_evals=1) for i in range(3)])
    text = report.build_report_html(study, "in-memory")
    assert figures_of(text) == ["learning_curves", "timeline", "efficiency"]
    assert "No trial has completed yet." in text
    # Each trained 240 of its 960 planned examples.
    assert "2,160 examples (75% of the 2,880" in text


def test_report_of_only_failed_trials() -> None:
    study = hpo_study()
    for _ in range(2):
        study.add_trial(
            optuna.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "OOM"})
        )
    text = report.build_report_html(study, "in-memory")
    assert figures_of(text) == ["timeline"]
    assert "failed: OOM" in text


def test_report_of_a_running_study(storage: Any) -> None:
    study = demo_study(storage, n=4)
    trial = study.ask()
    trial.report(0.9, 240)
    study.enqueue_trial({"learning_rate": 1e-4, "finetuning": "full"})
    text = report.build_report_html(study, "in-memory")
    assert "Snapshot of a running study" in text
    assert "1 running, 1 waiting" in text
    assert "timeline" in figures_of(text)


def test_report_of_categorical_and_conditional_params() -> None:
    study = demo_study()
    text = report.build_report_html(study, "in-memory")
    assert "lora_alpha" in text
    assert "finetuning = &#x27;lora&#x27;" in text
    assert {"contour", "slice", "parallel"} <= set(figures_of(text))


def test_report_of_a_multi_objective_study() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    set_metric_names(study, ["val_loss", "val_accuracy"])
    for i in range(10):
        x = i / 10
        study.add_trial(
            optuna.create_trial(
                values=[x, math.sqrt(x)],
                params={"x": x, "kind": "ab"[i % 2]},
                distributions={"x": FloatDistribution(0, 1), "kind": CategoricalDistribution("ab")},
            )
        )
    text = report.build_report_html(study, "in-memory")
    assert "pareto" in figures_of(text)
    assert "history" not in figures_of(text)
    assert "trial(s) on the Pareto front" in text


def test_report_escapes_every_user_string() -> None:
    text = report.build_report_html(xss_study(), storage_label=XSS)
    assert XSS not in without_plotlyjs(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


@pytest.mark.slow
def test_report_of_2000_trials_is_fast() -> None:
    start = time.perf_counter()
    study = hpo_study()
    study.add_trials(
        make_trial(
            i,
            TrialState.PRUNED if i % 3 == 2 else TrialState.COMPLETE,
            learning_rate=10 ** (-5 + 1.6 * ((i * 7919) % 2000) / 2000),
            finetuning="lora" if i % 2 else "full",
            n_evals=2 if i % 3 == 2 else 4,
            base_loss=0.3 + ((i * 104729) % 2000) / 4000,
            worker=i % 4,
        )
        for i in range(2000)
    )
    built = time.perf_counter()
    text = report.build_report_html(study, "in-memory")
    seconds = time.perf_counter() - built
    print(
        f"\n2,000 trials: built in {built - start:.1f} s, report in {seconds:.1f} s, "
        f"{len(text) / 1e6:.1f} MB"
    )
    assert "The 300 best of 1334 complete trial(s)" in text
    assert len(figures_of(text)) == 8


def test_import_is_cheap() -> None:
    code = (
        "import sys, hpo.report; "
        "print(sorted(m for m in ('plotly', 'torch', 'transformers') if m in sys.modules))"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
