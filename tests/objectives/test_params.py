"""Typed hyperparameters: one dataclass checks the search space at load time and each trial."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution

from objectives.params import TrainParams


def test_defaults_and_sampled_values() -> None:
    p = TrainParams.from_params({"learning_rate": 3e-5, "batch_size": 16, "freeze_layers": 2})
    assert (p.learning_rate, p.batch_size, p.freeze_layers) == (3e-5, 16, 2)
    assert p.finetuning == "full" and not p.lora and p.dropout is None
    assert TrainParams.from_params({"r": 8}).lora  # a LoRA key implies LoRA
    assert not TrainParams.from_params({"r": 8, "finetuning": "full"}).lora
    assert set(TrainParams.from_params({}).to_dict()) == set(TrainParams.names())


@pytest.mark.parametrize(
    ("name", "dist", "message"),
    [
        ("batch_size", FloatDistribution(8, 64),
         r"^batch_size: an integer hyperparameter cannot be sampled from a float range \(8..64\)"),
        ("batch_size", CategoricalDistribution([8, 8.9, 16]),
         r"^batch_size: an integer hyperparameter, got 8.9"),
        ("batch_size", CategoricalDistribution([16.0]), r"^batch_size: an integer hyperparameter, got 16.0"),
        ("r", FloatDistribution(4, 16), r"^r: an integer hyperparameter cannot be sampled"),
        ("freeze_layers", IntDistribution(-1, 3), r"^freeze_layers: -1 is outside the valid range"),
        ("learning_rate", FloatDistribution(0.0, 1e-3), r"^learning_rate: 0.0 is outside the valid range \(a number in \(0, 1\]\)"),
        ("dropout", FloatDistribution(0.0, 0.99), r"^dropout: 0.99 is outside the valid range"),
        ("lr_scheduler_type", CategoricalDistribution(["linear", "step"]),
         r"^lr_scheduler_type: 'step' is not valid \(one of linear, cosine, constant\)"),
        ("finetuning", IntDistribution(0, 1), r"^finetuning: takes one of full, lora: use type: categorical"),
        ("target_modules", CategoricalDistribution([""]), r"^target_modules: expected a non-empty string"),
        ("momentum", FloatDistribution(0.8, 0.99), r"^momentum: not a hyperparameter of this objective \(known: "),
        ("batch_size", CategoricalDistribution([True]), r"^batch_size: expected an integer"),
    ],
)
def test_bad_entries_are_refused_when_the_space_is_loaded(name: str, dist: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainParams.check_distribution(name, dist)


def test_good_entries_pass() -> None:
    for name, dist in {
        "batch_size": CategoricalDistribution([8, 16, 32]),
        "freeze_layers": IntDistribution(0, 6),
        "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
        "dropout": CategoricalDistribution([None, 0.1]),
        "warmup_ratio": IntDistribution(0, 1),  # integers are valid floats
        "target_modules": CategoricalDistribution(["query,value", "all-linear"]),
    }.items():
        TrainParams.check_distribution(name, dist)


def test_a_trial_refuses_invalid_values_too() -> None:
    with pytest.raises(ValueError, match=r"^batch_size: an integer hyperparameter, got 12.5"):
        TrainParams.from_params({"batch_size": 12.5})
    with pytest.raises(ValueError, match=r"^weight_decay: 2 is outside the valid range"):
        TrainParams.from_params({"weight_decay": 2})


def test_a_float_batch_size_in_a_space_file_is_one_line_exit_2(tmp_path, tiny_model, data_csv) -> None:  # noqa: ANN001
    import yaml
    from click.testing import CliRunner

    from hpo.cli import cli

    (tmp_path / "space.yaml").write_text("batch_size: {type: float, low: 8, high: 64}\n")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "s", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "model": tiny_model,
        "dataset": {"path": str(data_csv)}, "search_space": str(tmp_path / "space.yaml"),
        "n_trials": 1, "cache_dir": None,
    }))
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'space.yaml'}: batch_size: an integer hyperparameter cannot be "
        "sampled from a float range (8..64); use type: int, or categorical integer choices"
    ]
    assert not (tmp_path / "db.sqlite").exists()
