"""The benchmark scripts' bookkeeping: goal lines, timelines, example counts (no timing)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from benchmarks import __main__ as bench_main
from benchmarks._common import goal_line
from benchmarks.pruning import curve
from benchmarks.pruning import examples_to
from benchmarks.search import best_so_far
from benchmarks.search import time_to

GOAL_RE = re.compile(r"^GOAL (?P<name>[a-z0-9-]+): (?P<measured>.+) \(target (?P<target>.+)\) (MET|NOT MET)$")


@pytest.mark.parametrize("met", [True, False])
def test_goal_line_has_the_fixed_format(met: bool) -> None:
    line = goal_line("throughput-full", "1.23x", ">= 1x", met)
    match = GOAL_RE.match(line)
    assert match and match["name"] == "throughput-full" and match["target"] == ">= 1x"
    assert line.endswith(" MET") and (line.endswith("NOT MET") is not met)


def test_every_goal_is_run_by_the_entry_point() -> None:
    assert list(bench_main.BENCHMARKS) == ["throughput", "search", "pruning", "overhead",
                                           "images"]


def test_best_so_far_keeps_only_improvements_in_time_order() -> None:
    events = [(5.0, 0.6), (1.0, 0.5), (9.0, 0.55), (12.0, 0.8)]
    assert best_so_far(events) == [(1.0, 0.5), (5.0, 0.6), (12.0, 0.8)]
    assert time_to(best_so_far(events), 0.6) == 5.0
    assert math.isinf(time_to(best_so_far(events), 0.9))


def test_pruning_curve_counts_examples_across_trials() -> None:
    def trial(number: int, history: list[tuple[int, float]], seen: int) -> SimpleNamespace:
        return SimpleNamespace(number=number, user_attrs={
            "history": [{"step": s, "val_loss": v} for s, v in history], "examples_seen": seen})

    trials = [trial(1, [(50, 0.5)], 50), trial(0, [(50, 0.7), (100, 0.6)], 100)]
    points = curve(trials)
    assert points == [(50, 0.7), (100, 0.6), (150, 0.5)]
    assert examples_to(points, 0.6) == 100
    assert math.isinf(examples_to(points, 0.1))


@pytest.mark.slow
@pytest.mark.server
def test_hpo_runs_fewer_statements_per_trial_than_optuna() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest_servers import server_url

    from benchmarks.storage import count_statements

    counts = count_statements(server_url("postgresql"), n=10)
    # 2 params + 10 reports: hpo's loop runs about a third of optuna's statements.
    assert counts["hpo"]["statements"] <= 25 < 50 <= counts["optuna"]["statements"]
    assert counts["hpo"]["INSERT"] >= 12  # the reports, params and attrs did reach the database


def test_hypervolume_of_a_two_objective_front() -> None:
    from benchmarks.pareto import hypervolume

    # Accuracy maximized, latency minimized, reference (0.5, 10): two steps of area.
    points = [(0.9, 2.0), (0.8, 1.0), (0.7, 3.0), (0.4, 0.5)]  # (0.7, 3) dominated, 0.4 < ref
    assert hypervolume(points, (0.5, 10.0)) == pytest.approx(0.3 * 1.0 + 0.4 * 8.0)
    assert hypervolume([], (0.5, 10.0)) == 0.0


def test_sft_benchmark_parses_its_flags_and_pairs_the_same_turns() -> None:
    pytest.importorskip("trl")
    from benchmarks import sft

    assert sft.parser(sft.__doc__, "quick").parse_args(["--quick"]).quick is True
    assert sft.SETTINGS["quick"]["n_trials"] == 4 and len(sft.SETTINGS["full"]["seeds"]) >= 2
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert sft.prompt_completion(chat) == {"prompt": chat[:1], "completion": chat[1:]}
    with pytest.raises(ValueError):
        sft.prompt_completion(chat[:1])
    # 10 examples, batch 4: 3 steps per epoch; halves end with examples 5 and 10 (steps 2, 3).
    assert sft.eval_targets(10, 4, 2, 2) == [2, 3, 5, 6]
    assert sft.best_so_far([(3.0, 2.0), (1.0, 2.5), (5.0, 2.2)]) == [(1.0, 2.5), (3.0, 2.0)]
    assert sft.time_to([(1.0, 2.5), (3.0, 2.0)], 2.1) == 3.0
    assert math.isinf(sft.time_to([(1.0, 2.5)], 2.0))
