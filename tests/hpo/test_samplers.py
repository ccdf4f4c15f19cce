"""Samplers and pruners built from the config; the pruner warm-up."""

from __future__ import annotations

import optuna
import pytest

from hpo.config import PrunerConfig
from hpo.errors import ConfigError
from hpo.samplers import build_pruner


def _study_with_a_good_trial() -> optuna.Study:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    good = study.ask()
    for step in (20, 50, 100):
        good.report(0.1, step)
    study.tell(good, 0.1)
    return study


def _bad_trial(study: optuna.Study, planned: int | None, step: int) -> optuna.Trial:
    trial = study.ask()
    if planned is not None:
        trial.set_user_attr("planned_examples", planned)
    trial.report(0.9, step)
    return trial


def test_warmup_holds_the_pruner_for_a_share_of_planned_examples() -> None:
    study = _study_with_a_good_trial()
    study.pruner = build_pruner(PrunerConfig("median", {"n_startup_trials": 1, "warmup": 0.25}))
    early = _bad_trial(study, planned=100, step=20)
    assert not early.should_prune()  # 20 < 25% of 100 examples
    early.report(0.9, 50)
    assert early.should_prune()  # past the warm-up the median pruner decides
    # The same config without warmup prunes at the first report.
    study.pruner = build_pruner(PrunerConfig("median", {"n_startup_trials": 1}))
    assert _bad_trial(study, planned=100, step=20).should_prune()
    # Objectives that plan nothing get the inner pruner from the start.
    study.pruner = build_pruner(PrunerConfig("median", {"n_startup_trials": 1, "warmup": 0.25}))
    assert _bad_trial(study, planned=None, step=20).should_prune()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("median", {"warmup": 1.5}, "warmup must be a share"),
        ("median", {"warmup": "a lot"}, "warmup must be a share"),
        ("none", {"warmup": 0.2}, "no warmup option"),
        ("hyperband", {"warmup": 0.2}, "its own min_resource"),
        ("median", {"warmup": 0.2, "patience": 3}, "pruner 'median'"),
    ],
)
def test_bad_warmup_is_a_config_error(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_pruner(PrunerConfig(name, options))
