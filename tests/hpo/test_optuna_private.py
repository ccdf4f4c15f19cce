"""Contracts of the optuna private API that hpo uses (hpo/_optuna.py).

Each test fails loudly when an optuna release changes what hpo relies on: a name, a signature,
an attribute, or the behaviour behind it.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo import _optuna


@pytest.fixture(params=["inmemory", "sqlite"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    storage = (None if request.param == "inmemory"
               else optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    return optuna.create_study(storage=storage)


def test_ids_storage_and_the_cached_frozen_trial(study: optuna.Study) -> None:
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage = _optuna.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_study_id_from_name(study.study_name) == _optuna.study_id(study)
    frozen = _optuna.frozen_of(trial)
    assert storage.get_trial(_optuna.trial_id(trial)).params == frozen.params == trial.params
    assert frozen.number == trial.number


def test_tell_finishes_the_trial_without_reading_it_back(study: optuna.Study) -> None:
    trial = study.ask()
    state, values = _optuna.tell(study, trial, [0.5], TrialState.COMPLETE)
    assert state == TrialState.COMPLETE and values == [0.5]
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5
    other = study.ask()
    state, values = _optuna.tell(study, other, None, TrialState.FAIL)
    assert state == TrialState.FAIL and values is None


def test_forgetting_the_cached_trials_shows_new_ones(study: optuna.Study) -> None:
    study.ask()
    assert len(_optuna.study_trials(study, None)) == 1
    trial_id = _optuna.storage_of(study).create_new_trial(_optuna.study_id(study))
    _optuna.forget_cached_trials(study)
    assert trial_id in {t._trial_id for t in _optuna.study_trials(study, None)}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_retry_history_and_stale_trials(tmp_path: Path) -> None:
    import datetime

    import sqlalchemy

    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat_interval=1, grace_period=60,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(3),
    )
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(_optuna.trial_id(trial))
    assert _optuna.stale_trial_ids(storage, _optuna.study_id(study)) == []
    # Its worker "died" an hour ago: move the heartbeat back instead of waiting.
    beat = _optuna.rdb_models().TrialHeartbeatModel
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.update(beat).values(
            heartbeat=datetime.datetime.now() - datetime.timedelta(hours=1)))
    assert _optuna.stale_trial_ids(storage, _optuna.study_id(study)) == [_optuna.trial_id(trial)]
    optuna.storages.fail_stale_trials(study)
    retry = study.ask()  # pops the WAITING copy
    assert _optuna.retry_history(retry) == [trial.number]


def test_rdb_models_and_storage_cache(tmp_path: Path) -> None:
    models = _optuna.rdb_models()
    for name in ("TrialModel", "StudyModel", "TrialSystemAttributeModel", "TrialParamModel",
                 "TrialValueModel", "TrialUserAttributeModel", "TrialHeartbeatModel"):
        assert hasattr(models, name), name
    assert {"trial_id", "study_id", "state", "number"} <= set(models.TrialModel.__table__.columns.keys())
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    trial = study.ask()
    frozen = _optuna.frozen_of(trial)
    _optuna.add_to_storage_cache(_optuna.storage_of(study), _optuna.study_id(study), frozen)
    _optuna.storage_of(study).set_trial_user_attr(frozen._trial_id, "k", 1)
    assert study.trials[0].user_attrs == {"k": 1}


def _run(study: optuna.Study, sampler: optuna.samplers.BaseSampler, n: int) -> list[int]:
    """``n`` trials of a 2-d space where batch_size 64 always runs out of memory."""
    study.sampler = sampler
    sizes = []
    for _ in range(n):
        trial = study.ask({"batch_size": CategoricalDistribution([8, 16, 32, 64]),
                           "learning_rate": FloatDistribution(1e-5, 1e-2, log=True)})
        sizes.append(trial.params["batch_size"])
        if trial.params["batch_size"] == 64:
            trial.set_constraint("out_of_memory", 1.0)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, abs(trial.params["learning_rate"] - 1e-3) + trial.params["batch_size"] / 1e3)
    return sizes


def test_the_sampler_learns_that_out_of_memory_is_infeasible() -> None:
    """TPE ignores failed trials; shown them as infeasible (hpo's view) it stops proposing the
    region that ran out of memory."""
    from hpo.config import SamplerConfig
    from hpo.samplers import build_sampler
    from hpo.search_space import search_space_from_dict

    space = search_space_from_dict({"x": {"type": "float", "low": 0, "high": 1}})
    ours = build_sampler(SamplerConfig("tpe", {"n_startup_trials": 8}), 0, space)
    plain = optuna.samplers.TPESampler(n_startup_trials=8, seed=0)
    with_view = _run(optuna.create_study(), ours, 48)[8:]
    without = _run(optuna.create_study(), plain, 48)[8:]
    # Measured (seed 0): 4 of 40 with the view, 31 of 40 without.
    assert with_view.count(64) * 4 < without.count(64)
    # The failed trials stay failed in the storage; only the sampler sees them as infeasible.
    study = optuna.create_study()
    _run(study, build_sampler(SamplerConfig("tpe", {"n_startup_trials": 2}), 0, space), 12)
    assert all(t.state == TrialState.FAIL for t in study.trials if t.params["batch_size"] == 64)


def test_the_cache_wrapper_hides_the_rdb_storage(tmp_path: Path) -> None:
    from hpo.rdb import rdb_backend

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    backend = _optuna.backend_of(_optuna.storage_of(study))
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert rdb_backend(_optuna.storage_of(study)) is backend
    assert _optuna.backend_of(backend) is backend
