"""Warm starts: the best configurations of an earlier study become the first trials of a new one.

``hpo run --warm-start-from OLD --top-k 5`` enqueues the top-k complete trials of study ``OLD``
(best first, by OLD's direction) in the new study, each with the user attrs
``warm_start_from`` (OLD's name) and ``warm_start_trial`` (its trial number there); the report
marks those trials. Parameters that do not fit the new search space (gone, out of range, not a
choice any more, or their condition no longer holds) are dropped with a warning; the sampler
then samples them. Enqueueing is idempotent: trials already enqueued from OLD are not enqueued
again when a study is resumed. Enqueued trials count toward the study's ``n_trials``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from typing import Any

from hpo._optuna import storage_of
from hpo.errors import HPOInputError
from objectives import record
from objectives.record import WorkerRecord

if TYPE_CHECKING:
    import optuna

    from hpo.config import StudyConfig
    from hpo.search_space import SearchSpace

__all__ = ["WarmStartError", "enqueue_from", "fit_params", "warm_start"]

_LOG = logging.getLogger("hpo")
_MISSING = object()


class WarmStartError(HPOInputError):
    """Raised when a warm start is impossible: the source study is the study itself, or has
    several objectives."""


def fit_params(params: dict[str, Any], space: SearchSpace) -> tuple[dict[str, Any], list[str]]:
    """Keep the params that fit ``space``; say why each other one was dropped.

    A param is dropped when the space has no such entry, its value is not a valid value of the
    entry, or the entry's condition does not hold for the kept params.

    Returns:
        The kept params (in the space's order) and one ``"name=value (reason)"`` per dropped one.

    Example:
        >>> kept, dropped = fit_params({"batch_size": 64, "momentum": 0.9}, space)
        >>> dropped  # doctest: +SKIP
        ['batch_size=64 (not a valid value in the new space)', 'momentum=0.9 (not in the new space)']
    """
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in params.items():
        if name not in space:
            dropped.append(f"{name}={value!r} (not in the new space)")
        elif not space.fits(name, value):
            dropped.append(f"{name}={value!r} (not a valid value in the new space)")
    for p in space.params:  # parents come before the entries they enable
        if p.name not in params or not space.fits(p.name, params[p.name]):
            continue
        if p.condition is not None:
            parent, values = p.condition
            if kept.get(parent, _MISSING) not in values:
                dropped.append(
                    f"{p.name}={params[p.name]!r} (its condition {parent} in "
                    f"{list(values)!r} does not hold)"
                )
                continue
        kept[p.name] = params[p.name]
    return kept, dropped


def enqueue_from(
    study: optuna.Study, source: optuna.Study, space: SearchSpace, top_k: int = 5
) -> list[dict[str, Any]]:
    """Enqueue the best ``top_k`` complete trials of ``source`` as waiting trials of ``study``.

    Args:
        study: the new study.
        source: the earlier study (same storage or another one).
        space: the new study's search space.
        top_k: how many of the source's best complete trials.

    Returns:
        The params enqueued now, best first (empty when all were enqueued before).

    Raises:
        WarmStartError: ``source`` is ``study``, or has several objectives.

    Example:
        >>> enqueue_from(new_study, optuna.load_study(study_name="old", storage=url), space, 3)
    """
    from optuna.trial import TrialState

    if source.study_name == study.study_name and storage_of(source) is storage_of(study):
        raise WarmStartError(f"study {study.study_name!r} cannot warm-start from itself")
    if len(source.directions) != 1:
        raise WarmStartError(
            f"study {source.study_name!r} has {len(source.directions)} objectives; warm starts "
            "take the best trials of a single-objective study"
        )
    if top_k < 1:
        raise WarmStartError(f"--top-k must be >= 1, got {top_k}")
    maximize = source.direction.name == "MAXIMIZE"
    complete = [
        t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    # Best first; ties keep the earlier trial first.
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]
    top = complete[:top_k]
    if len(top) < top_k:
        _LOG.warning("warm start: study %r has %d complete trial(s), fewer than --top-k %d",
                     source.study_name, len(top), top_k)
    done = {
        w.warm_start_trial
        for t in study.get_trials(deepcopy=False)
        if (w := WorkerRecord.from_attrs(t.user_attrs)).warm_start_from == source.study_name
    }
    enqueued = []
    for t in top:
        if t.number in done:
            continue
        params, dropped = fit_params(t.params, space)
        if dropped:
            _LOG.warning("warm start from %r, trial %d: dropped %s; the sampler chooses them",
                         source.study_name, t.number, ", ".join(dropped))
        study.enqueue_trial(
            params,
            user_attrs={record.WARM_START_FROM: source.study_name, record.WARM_START_TRIAL: t.number},
        )
        enqueued.append(params)
    if enqueued:
        _LOG.info("warm start: enqueued %d configuration(s) of study %r", len(enqueued),
                  source.study_name)
    return enqueued


def warm_start(
    cfg: StudyConfig, source_name: str, top_k: int = 5, source_storage: str | None = None,
    defaults: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Create (or resume) the study of ``cfg`` and enqueue the best trials of ``source_name``.

    Runs under the study's budget lock, so that workers starting at once enqueue each
    configuration once. At most the budget left (``n_trials`` minus the trials counted so far)
    is enqueued, with a warning when ``top_k`` is larger.

    Args:
        cfg: the new study's config.
        source_name: the earlier study.
        top_k: how many of its best complete trials.
        source_storage: the earlier study's storage URL (None: the new study's).

    Raises:
        StudyNotFoundError: no study ``source_name`` in that storage.
        WarmStartError: see :func:`enqueue_from`.
    """
    from hpo.search_space import search_space_from_dict
    from hpo.study import budget_lock
    from hpo.study import budget_state
    from hpo.study import create_study
    from hpo.study import open_study

    if source_name == cfg.study and source_storage in (None, cfg.storage):
        raise WarmStartError(f"study {cfg.study!r} cannot warm-start from itself")
    # The source first: a missing one must not leave the new study created behind it.
    source = open_study(source_storage or cfg.storage, source_name)
    study = create_study(cfg, defaults=defaults)
    space = search_space_from_dict(study.user_attrs["search_space"], cfg.search_space)
    with budget_lock(study, cfg.storage):
        k = top_k
        if cfg.n_trials is not None:
            already = sum(
                1 for t in study.get_trials(deepcopy=False)
                if WorkerRecord.from_attrs(t.user_attrs).warm_start_from == source_name
            )
            left = cfg.n_trials - budget_state(study)["counted"] + already
            if top_k > left:
                _LOG.warning("warm start: --top-k %d exceeds the %d trial(s) left of n_trials %d; "
                             "enqueuing the best %d", top_k, max(left, 0), cfg.n_trials,
                             max(left, 0))
                k = max(left, 0)
        if k == 0:
            return []
        return enqueue_from(study, source, space, k)
