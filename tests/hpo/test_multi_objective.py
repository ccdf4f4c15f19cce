"""Quality against cost: several objectives, constraints, pruning there, stopping early, picking
a trial, and the model as a hyperparameter."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from hpo.cli import cli
from hpo.pareto import ParetoHalving
from hpo.pareto import nondominated_ranks
from hpo.pareto import parse_pick

ROOT = Path(__file__).resolve().parents[2]
TOY = str(ROOT / "search_spaces" / "toy.yaml")


def toy_config(tmp_path: Path, **extra: Any) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "mo", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "toy",
        "search_space": TOY, "metric": ["value", "inference_ms"], "n_trials": 24,
        "sampler": {"name": "random", "seed": 0}, "n_steps": 9, **extra,
    }))
    return config


def load(tmp_path: Path, name: str = "mo") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_nondominated_ranks() -> None:
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (6, 6)]
    assert nondominated_ranks(points, ["minimize", "minimize"]) == [0, 0, 0, 1, 2]
    assert nondominated_ranks(points, ["maximize", "minimize"]) == [2, 1, 0, 1, 0]


@pytest.fixture(scope="module")
def mo_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp_path = tmp_path_factory.mktemp("mo")
    config = toy_config(tmp_path, constraints={"peak_memory_mb": {"max": 150}},
                        pruner={"name": "pareto-halving"})
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    return tmp_path, result


def test_a_study_of_two_objectives_is_optunas_and_keeps_its_front(mo_study: tuple[Path, Any]) -> None:
    tmp_path, result = mo_study
    assert result.exit_code == 0, result.output
    study = load(tmp_path)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for t in complete:  # the value, then the cost the trial recorded
        assert t.values[1] == pytest.approx(t.user_attrs["inference_ms"])
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    ranks = nondominated_ranks([t.values for t in feasible], ["minimize", "minimize"])
    front = {t.number for t, r in zip(feasible, ranks, strict=True) if r == 0}
    assert {t.number for t in study.best_trials} == front
    assert "Pareto front (" in result.stdout
    for n in front:
        assert f"#{n}:" in result.stdout


def test_constraints_mark_infeasible_trials_for_the_sampler_and_the_reader(
    mo_study: tuple[Path, Any],
) -> None:
    tmp_path, _ = mo_study
    study = load(tmp_path)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    infeasible = [t for t in finished if t.user_attrs["peak_memory_mb"] > 150]
    assert infeasible and len(infeasible) < len(finished)
    for t in finished:
        violation = t.user_attrs["peak_memory_mb"] - 150
        assert t.constraints == {"peak_memory_mb": pytest.approx(violation)}
        assert ("infeasible" in t.user_attrs) is (violation > 0)
    best = CliRunner().invoke(cli, ["best", "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}",
                                    "--study", "mo"])
    assert best.exit_code == 0, best.output
    assert "Pareto front of study mo" in best.stdout and "infeasible, left out" in best.stdout
    assert f"infeasible #{infeasible[0].number}: peak_memory_mb" in best.stdout or len(infeasible) > 10
    from hpo.report import write_report

    html = write_report(study, tmp_path / "report.html", "sqlite").read_text()
    assert 'id="tradeoffs"' in html and 'id="pareto"' in html


def test_pareto_halving_prunes_dominated_trials_at_rungs(mo_study: tuple[Path, Any]) -> None:
    """Each pruned trial fell out at a rung (its 1st, 3rd or 9th evaluation) where it was not in
    the best third of the trials there by non-dominated rank."""
    tmp_path, _ = mo_study
    study = load(tmp_path)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "a study of 24 random trials prunes some"
    rule = ParetoHalving()
    for t in pruned:
        steps = sorted(int(s) for s in t.user_attrs["intermediate"])
        assert rule.is_rung(len(steps))
        assert len(steps) < 9 and t.user_attrs["examples_seen"] == steps[-1]
        # Replaying the rule with the trials that had reached that step by then stops it again.
        before = [x for x in study.trials if x.datetime_start <= t.datetime_complete]
        assert rule.should_stop(before, t.number, steps[-1], ["value", "inference_ms"],
                                ["minimize", "minimize"])


def test_stop_rules_end_the_study_early_and_say_why(tmp_path: Path) -> None:
    config = toy_config(tmp_path, metric="value", n_trials=60, stop={"target": 0.8}, n_steps=2,
                        pruner="none")
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    study = load(tmp_path)
    assert len(study.trials) < 60
    assert study.user_attrs["stopped"].startswith("trial ")
    assert "stopped early: trial" in result.stdout
    assert min(t.value for t in study.trials if t.value is not None) <= 0.8
    (tmp_path / "db.sqlite").unlink()
    config = toy_config(tmp_path, metric="value", n_trials=60, n_steps=2, pruner="none",
                        stop={"patience": 3, "min_delta": 10.0})
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(load(tmp_path).trials) == 4  # the first, then 3 without improving by 10
    assert "improved by less than 10 in the last 3 trials" in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"constraints": {"latency": {"max": 5}}},
         "constraints: unknown cost 'latency' (valid: inference_ms, train_seconds"),
        ({"constraints": {"inference_ms": {"below": 5}}},
         "constraints.inference_ms: expected {max: number} or {min: number}"),
        ({"sampler": "cmaes"},
         "sampler: 'cmaes' cannot optimize several objectives (valid for several: tpe, nsga2, "
         "random, gp, qmc, grid)"),
        ({"pruner": "median"},
         "pruner: 'median' compares one objective; a study of several objectives prunes with "
         "pareto-halving (or none)"),
        ({"metric": ["value", "latency"]},
         "metric: unknown metric or cost 'latency' for objective 'toy' (valid: value, "),
        ({"metric": ["inference_ms", "value"]},
         "metric: unknown metric 'inference_ms' for objective 'toy' (valid first: value)"),
        ({"direction": ["minimize"]}, "direction: 1 direction(s) for 2 metric(s)"),
        ({"stop": {"patience": 0}}, "stop.patience: expected an integer >= 1, got 0"),
    ],
)
def test_bad_multi_objective_input_is_one_line_exit_2(tmp_path: Path, extra: dict[str, Any],
                                                       message: str) -> None:
    config = toy_config(tmp_path, **extra)
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "db.sqlite").exists()


def test_pick_rules() -> None:
    rule = parse_pick("max val_accuracy where inference_ms <= 5 and peak_memory_mb < 100",
                      ["val_accuracy", "inference_ms", "peak_memory_mb"])
    assert (rule.goal, rule.name) == ("max", "val_accuracy")
    assert rule.conditions == (("inference_ms", "<=", 5.0), ("peak_memory_mb", "<", 100.0))
    from hpo.errors import HPOInputError

    for bad, message in [
        ("best accuracy", "expected 'max|min NAME [where NAME <= NUMBER"),
        ("max val_accuracy where latency <= 5", "unknown name 'latency'"),
        ("max val_accuracy where inference_ms ~ 5", "cannot read the condition 'inference_ms ~ 5'"),
    ]:
        with pytest.raises(HPOInputError, match=re.escape(message)):
            parse_pick(bad, ["val_accuracy", "inference_ms"])


@pytest.fixture(scope="module")
def classifier_study(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[str, Path]:
    from conftest import make_rows
    from conftest import write_csv

    root = tmp_path_factory.mktemp("mo-export")
    data = write_csv(root / "rows.csv", make_rows(80))
    (root / "space.yaml").write_text(
        "learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "freeze_layers: {type: int, low: 0, high: 2}\n")
    url = f"sqlite:///{root / 'db.sqlite'}"
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "mo-export", "storage": url, "model": tiny_model, "dataset": {"path": str(data)},
        "max_length": 32, "cache_dir": None, "metric": ["val_accuracy", "inference_ms"],
        "search_space": str(root / "space.yaml"), "n_trials": 4, "sampler": "random",
        "pruner": "none", "precision": "fp32",
    }))
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return url, root


@pytest.mark.slow
def test_export_takes_a_trial_or_a_pick_rule_in_a_study_of_several_objectives(
    classifier_study: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = classifier_study
    study = optuna.load_study(study_name="mo-export", storage=url)
    nothing = CliRunner().invoke(cli, ["export", "--storage", url, "--study", "mo-export",
                                       "-o", str(tmp_path / "none")])
    assert nothing.exit_code == 2
    assert "has 2 objectives: choose a trial with --trial N (Pareto front: " in nothing.stderr
    front = sorted(study.best_trials, key=lambda t: t.number)
    out = tmp_path / "by-number"
    by_number = CliRunner().invoke(cli, ["export", "--storage", url, "--study", "mo-export",
                                         "-o", str(out), "--trial", str(front[0].number)])
    assert by_number.exit_code == 0, by_number.output
    assert json.loads((out / "metrics.json").read_text())["trial"] == front[0].number
    loosest = max(t.user_attrs["inference_ms"] for t in study.trials if t.values)
    rule = f"max val_accuracy where inference_ms <= {loosest}"
    picked = tmp_path / "by-rule"
    result = CliRunner().invoke(cli, ["export", "--storage", url, "--study", "mo-export",
                                      "-o", str(picked), "--pick", rule])
    assert result.exit_code == 0, result.output
    expected = max((t for t in study.trials if t.values), key=lambda t: (t.values[0], -t.number))
    assert json.loads((picked / "metrics.json").read_text())["trial"] in {
        t.number for t in study.trials if t.values and t.values[0] == expected.values[0]}
    for args, message in [
        (["--pick", "max latency"], "unknown name 'latency'"),
        (["--pick", "max val_accuracy where inference_ms <= -1"], "no complete trial of study"),
        (["--trial", "999"], "has no complete trial 999"),
        (["--trial", "0", "--pick", "max val_accuracy"], "--trial and --pick: give one"),
    ]:
        bad = CliRunner().invoke(cli, ["export", "--storage", url, "--study", "mo-export", "-o",
                                       str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2, bad.output
        assert message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_optunas_cli_and_dashboard_open_a_study_of_several_objectives(
    classifier_study: tuple[str, Path],
) -> None:
    url, _ = classifier_study
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    proc = subprocess.run([optuna_cli, "best-trials", "--study-name", "mo-export", "--storage", url,
                           "-f", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    study = optuna.load_study(study_name="mo-export", storage=url)
    assert {t["number"] for t in shown} == {t.number for t in study.best_trials}
    dashboard = pytest.importorskip("optuna_dashboard")
    from test_dashboard import _get

    storage = optuna.storages.RDBStorage(url)
    app = dashboard.wsgi(storage)
    status, body = _get(app, f"/api/studies/{study._study_id}")
    assert status == "200 OK"
    assert [len(t["values"]) for t in body["trials"] if t["values"]] == [2] * sum(
        1 for t in study.trials if t.values)
    assert {t["number"] for t in body["best_trials"]} == {t.number for t in study.best_trials}
    storage.engine.dispose()


@pytest.mark.slow
def test_the_model_is_a_hyperparameter(tmp_path: Path, tiny_family: Any) -> None:
    """``model`` as a categorical entry: each trial trains the model it drew, tokenized for it;
    a worker keeps at most ``models_in_memory`` models loaded."""
    from conftest import make_rows
    from conftest import write_csv

    from objectives.models import _RESOURCES

    data = write_csv(tmp_path / "rows.csv", make_rows(60))
    bert, distil = tiny_family("bert"), tiny_family("distilbert")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "model": {"type": "categorical", "choices": [bert, distil]},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "freeze_layers": {"type": "int", "low": 0, "high": 2},
    }))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "models", "storage": url, "model": bert, "dataset": {"path": str(data)},
        "max_length": 32, "cache_dir": None, "search_space": str(tmp_path / "space.yaml"),
        "n_trials": 6, "sampler": {"name": "random", "seed": 3}, "pruner": "none",
        "models_in_memory": 1, "metric": ["val_loss", "inference_ms"],
    }))
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="models", storage=url).trials
    drawn = {t.params["model"] for t in trials}
    assert drawn == {bert, distil}
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len([k for k in _RESOURCES if k[0] in (bert, distil)]) <= 1
    # A model choice the machine does not have is refused when the space is loaded.
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "model": {"type": "categorical", "choices": [bert, str(tmp_path / "nowhere")]}}))
    bad = CliRunner().invoke(cli, ["run", "--config", str(config), "--study", "models-2"])
    assert bad.exit_code == 2 and "not a local model directory" in bad.stderr
    assert math.isfinite(trials[0].values[0])
