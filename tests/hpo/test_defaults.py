"""Budgets in the user's terms and defaults that adapt to the budget and the data."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import write_csv
from optuna.trial import TrialState

from hpo.budget import usage
from hpo.cli import cli
from hpo.defaults import startup_trials

ROOT = Path(__file__).resolve().parents[2]
SPACE = str(ROOT / "search_spaces" / "toy.yaml")


def run_workers(config: Path, n: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    return subprocess.run([sys.executable, "-m", "hpo", "run", "--config", str(config),
                           "--workers-per-device", str(n)], env=env, capture_output=True,
                          text=True, timeout=300)


def toy(tmp_path: Path, **extra: object) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "budget", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "toy",
        "search_space": SPACE, "sampler": "random", "pruner": "none", "n_steps": 5,
        "examples_per_step": 100, **extra,
    }))
    return config


def trials(tmp_path: Path, name: str = "budget") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'db.sqlite'}").trials


@pytest.mark.slow
def test_an_example_budget_stops_three_workers_where_it_should(tmp_path: Path) -> None:
    """n_examples: 2600 with trials of 500 examples: a trial starts while the examples trained
    plus those the running trials plan are under 2600, so exactly 6 trials run, whatever the
    number of workers."""
    proc = run_workers(toy(tmp_path, n_examples=2600, sleep=0.05), 3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = trials(tmp_path)
    assert len(done) == 6 and all(t.state == TrialState.COMPLETE for t in done)
    assert usage(done).examples == 3000
    assert len({t.user_attrs["worker"]["id"] for t in done}) == 3  # shared, not per worker


@pytest.mark.slow
def test_a_time_budget_is_the_studys_busy_time_across_workers(tmp_path: Path) -> None:
    """timeout: 1.5 s of the study's busy time (the union of its trials' running intervals),
    with two workers: no trial starts once it is used; the last ones finish."""
    proc = run_workers(toy(tmp_path, timeout=1.5, n_steps=3, sleep=0.1), 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = sorted(trials(tmp_path), key=lambda t: t.datetime_start)
    assert all(t.state == TrialState.COMPLETE for t in done)
    for i, t in enumerate(done):  # each trial started while the busy time was under budget
        before = usage(done[:i], now=t.datetime_start).seconds
        assert before < 1.5, (i, before)
    assert usage(done).seconds >= 1.5  # and the study stopped because it was used up


def test_busy_time_counts_overlaps_once_and_gaps_not_at_all() -> None:
    start = datetime.datetime(2026, 1, 1)
    s = datetime.timedelta(seconds=1)

    def trial(a: float, b: float) -> optuna.trial.FrozenTrial:
        return _frozen(start + a * s, start + b * s)

    used = usage([trial(0, 10), trial(5, 12), trial(100, 101)])
    assert used.seconds == pytest.approx(13.0)


def _frozen(begin: datetime.datetime, end: datetime.datetime) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(value=0.0, user_attrs={"examples_seen": 10})
    t.datetime_start, t.datetime_complete = begin, end
    return t


def test_startup_trials_follow_the_budget() -> None:
    assert [startup_trials(n) for n in (4, 8, 12, 20, 40, 200)] == [2, 2, 3, 5, 10, 10]
    assert startup_trials(None) == 5


@pytest.fixture
def imbalanced(tmp_path: Path) -> Path:
    from conftest import make_rows

    rows = make_rows(120)
    rows = [r for r in rows if r["label"] == "pos"] + [r for r in rows if r["label"] == "neg"][:12]
    return write_csv(tmp_path / "imbalanced.csv", rows)


def test_defaults_adapt_to_the_data_are_printed_once_and_stored(
    tmp_path: Path, tiny_model: str, imbalanced: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No metric, search space or pruner in the config, imbalanced classes: macro-F1, the
    automatic space sized to the data, start-up sized to the budget, the usual recipe first;
    each choice printed once and stored in the study."""
    config = tmp_path / "study.yaml"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config.write_text(yaml.safe_dump({
        "study": "defaults", "storage": url, "model": tiny_model,
        "dataset": {"path": str(imbalanced)}, "max_length": 32, "cache_dir": None,
        "n_trials": 3, "epochs": 2, "evals_per_epoch": 2,
    }))
    caplog.set_level("INFO", logger="hpo")
    first = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert first.exit_code == 0, first.output
    printed = [f"hpo: {r.getMessage()}" for r in caplog.records if r.getMessage().startswith("default ")]
    assert [x.split("default ")[1].split(":")[0] for x in printed] == [
        "metric", "search_space", "sampler", "pruner", "first_trial"]
    assert "val_f1 (macro-F1): training classes are imbalanced" in printed[0]
    study = optuna.load_study(study_name="defaults", storage=url)
    stored = study.user_attrs
    assert set(stored["defaults"]) == {"metric", "search_space", "sampler", "pruner", "first_trial"}
    assert stored["hpo_config"]["metric"] == "val_f1" and study.direction.name == "MAXIMIZE"
    assert stored["hpo_config"]["sampler"] == {"name": "tpe", "n_startup_trials": 2}
    assert stored["hpo_config"]["pruner"]["name"] == "successive-halving"
    space = stored["search_space"]
    assert space["batch_size"]["choices"] == [8]  # 75 training rows: 25 steps need batch 8
    assert space["freeze_layers"] == {"type": "int", "low": 0, "high": 1}
    # The usual recipe ran first.
    recipe = study.trials[0]
    assert recipe.user_attrs["recipe"] == "the usual recipe"
    assert recipe.params == {"learning_rate": 5e-5, "batch_size": 8, "weight_decay": 0.01,
                             "warmup_ratio": 0.1, "freeze_layers": 0}
    # Resumed: nothing is chosen again, nothing printed again.
    caplog.clear()
    again = CliRunner().invoke(cli, ["run", "--config", str(config), "--n-trials", "4"])
    assert again.exit_code == 0, again.output
    assert not [r for r in caplog.records if r.getMessage().startswith("default ")]
    assert len(optuna.load_study(study_name="defaults", storage=url).trials) == 4


def test_what_the_user_gives_is_never_replaced(tmp_path: Path, tiny_model: str, imbalanced: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="hpo")
    config = tmp_path / "study.yaml"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config.write_text(yaml.safe_dump({
        "study": "mine", "storage": url, "model": tiny_model, "dataset": {"path": str(imbalanced)},
        "max_length": 32, "cache_dir": None, "n_trials": 1, "metric": "val_loss",
        "search_space": str(ROOT / "search_spaces" / "default.yaml").replace("default.yaml", "lora.yaml"),
        "sampler": {"name": "tpe", "n_startup_trials": 7}, "pruner": "none",
        "start_with_recipe": False,
    }))
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records if r.getMessage().startswith("default ")]
    study = optuna.load_study(study_name="mine", storage=url)
    assert study.user_attrs["defaults"] == {}
    assert study.user_attrs["hpo_config"]["sampler"] == {"name": "tpe", "n_startup_trials": 7}
    assert "recipe" not in study.trials[0].user_attrs


def test_a_grid_sampler_runs_its_points_without_the_recipe(tmp_path: Path, tiny_model: str,
                                                           imbalanced: Path) -> None:
    """A grid's trials are its points: an enqueued recipe would repeat one (or add one off the
    grid) and leave a point out of a budget sized to the grid."""
    (tmp_path / "space.yaml").write_text(
        "learning_rate: {type: categorical, choices: [0.001, 1.0]}\n")
    config = tmp_path / "study.yaml"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config.write_text(yaml.safe_dump({
        "study": "grid", "storage": url, "model": tiny_model, "dataset": {"path": str(imbalanced)},
        "max_length": 32, "cache_dir": None, "n_trials": 2, "epochs": 1, "pruner": "none",
        "search_space": str(tmp_path / "space.yaml"), "sampler": {"name": "grid"},
    }))
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="grid", storage=url)
    assert sorted(t.params["learning_rate"] for t in study.trials) == [0.001, 1.0]
    assert not any("recipe" in t.user_attrs for t in study.trials)
    assert "first_trial" not in study.user_attrs["defaults"]
