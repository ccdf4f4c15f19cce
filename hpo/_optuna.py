"""Every use of optuna's private API, in one place.

hpo needs a few things optuna does not expose: a study's storage and ids (to count, create and
tell trials in fewer round trips), the frozen trial a ``Trial`` caches, telling a trial without
reading it back, the study's per-thread trial cache, the stale-trial query of the RDB storage,
its ORM models and its storage cache. Each is a small function here, and
``tests/hpo/test_optuna_private.py`` checks each against the installed optuna: an optuna release
that changes one of them fails those tests loudly, instead of a worker in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial
    from optuna.trial import TrialState

__all__ = [
    "FeasibilityView",
    "add_to_storage_cache",
    "backend_of",
    "forget_cached_trials",
    "frozen_of",
    "rdb_models",
    "retry_history",
    "stale_trial_ids",
    "storage_of",
    "study_id",
    "study_trials",
    "tell",
    "trial_id",
]


def storage_of(study: optuna.Study) -> Any:
    """The storage a study reads and writes (optuna wraps an RDB storage in a cache)."""
    return study._storage


def backend_of(storage: Any) -> Any:
    """The storage behind optuna's cache wrapper (itself when there is none)."""
    return getattr(storage, "_backend", storage)


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return int(trial._trial_id)


def frozen_of(trial: optuna.Trial) -> FrozenTrial:
    """The frozen trial a ``Trial`` keeps of what was written through it (no storage read)."""
    return trial._cached_frozen_trial


def retry_history(trial: optuna.Trial) -> list[int]:
    """The trials that ``trial`` retries, oldest first (what optuna's experimental
    ``RetryHeartbeatStaleTrialCallback.retry_history`` reads, without its warning)."""
    return list(frozen_of(trial).system_attrs.get("retry_history", []))


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's per-thread list of trials, as ``study.ask`` does before sampling: the
    sampler then sees the trials as of now."""
    study._thread_local.cached_all_trials = None


def study_trials(study: optuna.Study, states: Sequence[TrialState] | None) -> list[FrozenTrial]:
    """The study's trials in ``states`` as samplers read them (cached, not deep-copied)."""
    return study._get_trials(deepcopy=False, states=states, use_cache=True)


def tell(study: optuna.Study, trial: optuna.Trial, values: list[float] | None,
         state: TrialState) -> tuple[TrialState, list[float] | None]:
    """``study.tell`` without its warning and without reading the trial back afterwards."""
    from optuna.study._tell import _tell_with_warning

    state, values, _ = _tell_with_warning(study, trial, values, state=state,
                                          suppress_warning=True)
    return state, values


def stale_trial_ids(backend: Any, study_id: int) -> list[int]:
    """Running trials of ``study_id`` whose heartbeat is older than the grace period."""
    return list(backend._get_stale_trial_ids(study_id))


def rdb_models() -> Any:
    """optuna's SQLAlchemy models of the RDB storage (tables ``trials``, ``studies``...)."""
    from optuna.storages._rdb import models

    return models


def add_to_storage_cache(storage: Any, study_id: int, frozen: FrozenTrial) -> None:
    """Tell optuna's storage cache (the wrapper every Study uses) about a trial created behind
    its back, as its own ``create_new_trial`` does: later writes look the trial up there."""
    from optuna.storages._cached_storage import _CachedStorage
    from optuna.storages._cached_storage import _StudyInfo

    if isinstance(storage, _CachedStorage):
        with storage._lock:
            if study_id not in storage._studies:
                storage._studies[study_id] = _StudyInfo()
            storage._add_trials_to_cache(study_id, [frozen])


class FeasibilityView:
    """A study as a sampler should see it: failed trials that carry a constraint violation
    (e.g. out of memory) appear as pruned, infeasible trials.

    optuna's samplers read only complete and pruned trials, and learn an infeasible region
    from their constraints (``trial.set_constraint``); a failed trial is invisible to them. A
    configuration that ran out of memory failed, and is stored so; through this view TPE and
    NSGA-II still learn not to propose its region again. Everything else reads through.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.__dict__["_study"] = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_study"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_study"], name, value)

    def _with_infeasible(self, trials: list[FrozenTrial], states: Any) -> list[FrozenTrial]:
        import copy

        from optuna.trial import TrialState

        if states is not None and TrialState.PRUNED not in states:
            return trials
        failed = study_trials(self.__dict__["_study"], (TrialState.FAIL,))
        extra = []
        for t in failed:
            if any(v > 0 for v in t.constraints.values()):
                view = copy.copy(t)
                view.state = TrialState.PRUNED
                extra.append(view)
        return sorted([*trials, *extra], key=lambda t: t.number) if extra else trials

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self.__dict__["_study"]._get_trials(deepcopy=deepcopy, states=states,
                                                     use_cache=use_cache)
        return self._with_infeasible(trials, states)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._with_infeasible(
            self.__dict__["_study"].get_trials(deepcopy=deepcopy, states=states), states
        )

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()
