"""Warm starts: the top-k configurations of an earlier study run first in a new one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from hpo.cli import cli
from hpo.search_space import search_space_from_dict
from hpo.warm_start import enqueue_from
from hpo.warm_start import fit_params

ROOT = Path(__file__).parents[2]
XY = {"x": {"type": "float", "low": -1.0, "high": 1.0}, "y": {"type": "float", "low": -1.0, "high": 1.0}}


def toy_config(
    tmp_path: Path, name: str, space: dict[str, Any], db: Path | None = None, **values: Any
) -> Path:
    """A toy study config in ``tmp_path``, stored in ``db`` (default: tmp_path / toy.db)."""
    space_file = tmp_path / f"{name}-space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "study": name, "objective": "toy", "storage": f"sqlite:///{db or tmp_path / 'toy.db'}",
        "search_space": str(space_file), "sampler": "random", "pruner": "none", "n_trials": 8,
        "seed": 0, **values,
    }))
    return config


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def source_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage with a finished toy study 'old' of 8 complete trials."""
    root = tmp_path_factory.mktemp("source")
    result = invoke("-q", "run", "--config", str(toy_config(root, "old", XY)))
    assert result.exit_code == 0, result.output
    return root / "toy.db"


@pytest.fixture
def source(source_db: Path, tmp_path: Path) -> optuna.Study:
    """Study 'old', in a copy of its storage at tmp_path / toy.db (each test writes there)."""
    import sqlite3

    # The backup API, not a file copy: the source may hold recent writes in its WAL file.
    with sqlite3.connect(source_db) as src, sqlite3.connect(tmp_path / "toy.db") as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return optuna.load_study(study_name="old", storage=f"sqlite:///{tmp_path / 'toy.db'}")


def top(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)[:k]


@pytest.mark.slow
def test_enqueues_exactly_the_top_k_as_first_trials(source: optuna.Study, tmp_path: Path) -> None:
    config = toy_config(tmp_path, "new", XY, n_trials=5)
    result = invoke("-q", "run", "--config", str(config), "--warm-start-from", "old", "--top-k", "3")
    assert result.exit_code == 0, result.output
    new = optuna.load_study(study_name="new", storage=source._storage)
    assert len(new.trials) == 5  # the enqueued trials count toward n_trials
    best = top(source, 3)
    first = new.trials[:3]
    assert [t.user_attrs["warm_start_trial"] for t in first] == [t.number for t in best]
    assert all(t.user_attrs["warm_start_from"] == "old" for t in first)
    assert [t.params for t in first] == [t.params for t in best]
    assert [t.value for t in first] == pytest.approx([t.value for t in best])
    assert not any("warm_start_from" in t.user_attrs for t in new.trials[3:])

    # The report marks them.
    from hpo.report import build_report_html

    assert "warm start from study old" in build_report_html(new, "toy.db")

    # Resuming with the same flags enqueues nothing again.
    result = invoke("-q", "run", "--config", str(config), "--n-trials", "6",
                    "--warm-start-from", "old", "--top-k", "3")
    assert result.exit_code == 0, result.output
    new = optuna.load_study(study_name="new", storage=source._storage)
    assert len(new.trials) == 6
    assert sum("warm_start_from" in t.user_attrs for t in new.trials) == 3


def test_maximizing_source_takes_the_highest_values(tmp_path: Path) -> None:
    storage = optuna.storages.InMemoryStorage()
    old = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    for x, value in [(0.1, 1.0), (0.2, 3.0), (0.3, 2.0)]:
        old.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            value=value))
    new = optuna.create_study(study_name="new", storage=storage)
    space = search_space_from_dict({"x": {"type": "float", "low": 0.0, "high": 1.0}})
    assert enqueue_from(new, old, space, top_k=2) == [{"x": 0.2}, {"x": 0.3}]
    assert enqueue_from(new, old, space, top_k=2) == []  # idempotent
    assert [t.state for t in new.trials] == [TrialState.WAITING] * 2


def test_changed_space_drops_what_no_longer_fits_with_a_warning(
    source: optuna.Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    best = top(source, 2)
    # y is gone, z is new, and x's range shrank to exclude the best trial's x.
    x_low = min(t.params["x"] for t in best) + 1e-9
    space = {"x": {"type": "float", "low": x_low, "high": 1.0},
             "z": {"type": "categorical", "choices": [1, 2]}}
    config = toy_config(tmp_path, "changed", space, n_trials=2)
    with caplog.at_level(logging.WARNING, logger="hpo"):
        result = invoke("-q", "run", "--config", str(config), "--warm-start-from", "old",
                        "--top-k", "2")
    assert result.exit_code == 0, result.output
    new = optuna.load_study(study_name="changed", storage=source._storage)
    assert [t.state for t in new.trials] == [TrialState.COMPLETE] * 2
    warnings = [r.getMessage() for r in caplog.records if "warm start from 'old'" in r.getMessage()]
    assert len(warnings) == 2
    for t, trial, message in zip(best, new.trials, warnings, strict=True):
        assert f"trial {t.number}: dropped " in message
        assert f"y={t.params['y']!r} (not in the new space)" in message
        if t.params["x"] < x_low:
            assert f"x={t.params['x']!r} (not a valid value in the new space)" in message
            assert trial.params["x"] != t.params["x"]  # sampled anew
        else:
            assert trial.params["x"] == t.params["x"]
        assert set(trial.params) == {"x", "z"}


def test_fit_params_checks_conditions() -> None:
    space = search_space_from_dict(yaml.safe_load((ROOT / "search_spaces" / "mixed.yaml").read_text()))
    params = {"finetuning": "full", "learning_rate": 1e-3, "batch_size": 64, "r": 8,
              "freeze_layers": 2, "momentum": 0.9}
    kept, dropped = fit_params(params, space)
    assert kept == {"finetuning": "full", "learning_rate": 1e-3, "freeze_layers": 2}
    assert dropped == [
        "batch_size=64 (not a valid value in the new space)",
        "momentum=0.9 (not in the new space)",
        "r=8 (its condition finetuning in ['lora'] does not hold)",
    ]


def test_fewer_complete_trials_than_k_and_budget(
    source: optuna.Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hpo"):
        config = toy_config(tmp_path, "small", XY, n_trials=2)
        result = invoke("-q", "run", "--config", str(config), "--warm-start-from", "old",
                        "--top-k", "20")
    assert result.exit_code == 0, result.output
    assert "--top-k 20 exceeds the 2 trial(s) left of n_trials 2" in caplog.text
    new = optuna.load_study(study_name="small", storage=source._storage)
    assert [t.user_attrs["warm_start_trial"] for t in new.trials] == [t.number for t in top(source, 2)]


def test_unknown_or_same_source_is_one_line_exit_2(source: optuna.Study, tmp_path: Path) -> None:
    config = toy_config(tmp_path, "new", XY)
    result = invoke("run", "--config", str(config), "--warm-start-from", "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: no study named 'nope' in sqlite:///")
    assert result.stderr.strip().endswith("(studies: old)")
    # Bad input changes nothing: the new study is not created before the source is found.
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'toy.db'}") == ["old"]
    result = invoke("run", "--config", str(config), "--warm-start-from", "new")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: study 'new' cannot warm-start from itself"


def test_source_in_another_storage(source: optuna.Study, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    config = toy_config(other, "new", XY, n_trials=3)
    result = invoke("-q", "run", "--config", str(config), "--warm-start-from", "old",
                    "--warm-start-storage", f"sqlite:///{tmp_path / 'toy.db'}", "--top-k", "1")
    assert result.exit_code == 0, result.output
    new = optuna.load_study(study_name="new", storage=f"sqlite:///{other / 'toy.db'}")
    assert new.trials[0].params == top(source, 1)[0].params
