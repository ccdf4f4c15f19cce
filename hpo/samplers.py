"""Optuna samplers and pruners by name, with their options from the config."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING
from typing import Any

from hpo.config import PrunerConfig
from hpo.config import SamplerConfig
from hpo.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from hpo.search_space import SearchSpace

__all__ = ["build_pruner", "build_sampler"]


def _check_types(kind: str, name: str, cls: Any, options: dict[str, Any]) -> None:
    """Each option of the same kind as its default (a number for a number, a bool for a bool):
    a wrong type would otherwise fail every trial, not the config."""
    import inspect

    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    for key, value in options.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        annotation = params[key].annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        kinds = {k.strip() for k in text.split("|")} & {"str", "int", "float", "bool"}
        if len(kinds) > 1:  # e.g. min_resource: str | int = "auto"
            ok = (type(value).__name__ in kinds
                  or ("float" in kinds and isinstance(value, int) and not isinstance(value, bool)))
            if not ok:
                raise ConfigError(f"{kind} {name!r}: {key}: expected {' or '.join(sorted(kinds))}, "
                                  f"got {value!r}")
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int | float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                ok = value.is_integer()
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise ConfigError(f"{kind} {name!r}: {key}: expected {type(default).__name__} like "
                              f"its default {default!r}, got {value!r}")


def _construct(kind: str, name: str, cls: Any, options: dict[str, Any]) -> Any:
    import optuna

    _check_types(kind, name, cls, options)
    try:
        with warnings.catch_warnings():
            # QMC, GP and the patient pruner are "experimental" in optuna 5; we offer them anyway.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**options)
    except TypeError as exc:
        # e.g. "__init__() got an unexpected keyword argument 'x'"
        detail = str(exc).split(") ", 1)[-1]
        raise ConfigError(f"{kind} {name!r}: {detail}") from None
    except ValueError as exc:
        raise ConfigError(f"{kind} {name!r}: {exc}") from None


def build_sampler(cfg: SamplerConfig, seed: int | None, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Build the sampler ``cfg.name`` (tpe, random, gp, cmaes, qmc, grid) seeded with ``seed``.

    The grid sampler takes its values from the space (categorical choices, small int ranges)
    unless the options give ``search_space: {param: [values]}``.
    """
    import optuna

    options = dict(cfg.options)
    options.setdefault("seed", seed)
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
        "grid": optuna.samplers.GridSampler,
    }
    if cfg.name == "grid":
        options["search_space"] = space.grid(options.get("search_space"))
        classes["grid"] = _budgeted_grid_sampler()
    return _feasibility_aware()(_construct("sampler", cfg.name, classes[cfg.name], options))


def _feasibility_aware() -> type:
    import optuna

    from hpo._optuna import FeasibilityView

    class FeasibilityAware(optuna.samplers.BaseSampler):
        """The sampler, shown failed trials that carry a constraint violation (a configuration
        that ran out of memory) as infeasible: it learns to avoid their region (see
        :class:`hpo._optuna.FeasibilityView`). Everything else is the sampler's own."""

        def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
            self.inner = inner

        def __repr__(self) -> str:
            return repr(self.inner)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self.inner.infer_relative_search_space(FeasibilityView(study), trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self.inner.sample_relative(FeasibilityView(study), trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self.inner.sample_independent(FeasibilityView(study), trial, name, dist)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner.before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return FeasibilityAware


def _budgeted_grid_sampler() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()``: the study's budget stops workers
        (``stop`` only works inside ``optimize``, and a worker asks and tells instead)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def build_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    """Build the pruner ``cfg.name``; steps are training examples seen.

    ``patient`` wraps another pruner given as ``wrapped: {name: median, ...}`` (default: none)
    and needs ``patience``. Any pruner but ``none`` takes ``warmup``: the share (0-1) of each
    trial's planned training examples before the pruner may stop it (``n_warmup_steps`` is the
    same in examples, whatever the dataset's size).
    """
    import optuna

    options = dict(cfg.options)
    if cfg.name == "pareto-halving":
        from hpo.pareto import ParetoHalving

        try:
            ParetoHalving(**options)  # its options are checked here; the worker runs it
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"pruner 'pareto-halving': {str(exc).split(') ', 1)[-1]}") from None
        return optuna.pruners.NopPruner()  # optuna's pruners take one objective
    warmup = options.pop("warmup", None)
    if warmup is not None:
        if isinstance(warmup, bool) or not isinstance(warmup, int | float) or not 0 <= warmup < 1:
            raise ConfigError(
                f"pruner {cfg.name!r}: warmup must be a share of a trial's planned examples in "
                f"[0, 1), e.g. 0.25; got {warmup!r}"
            )
        if cfg.name in ("none", "hyperband"):
            raise ConfigError(
                f"pruner {cfg.name!r}: no warmup option ("
                + ("it has its own min_resource" if cfg.name == "hyperband" else
                   "warmup needs a pruner, e.g. name: median") + ")"
            )
        inner = build_pruner(PrunerConfig(cfg.name, options))
        return _warmup_pruner()(inner, float(warmup))
    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "patient": optuna.pruners.PatientPruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    if cfg.name == "patient":
        wrapped = options.pop("wrapped", None)
        inner = None
        if wrapped is not None:
            if isinstance(wrapped, str):
                wrapped = {"name": wrapped}
            if not isinstance(wrapped, dict) or wrapped.get("name") not in classes:
                raise ConfigError(
                    f"pruner 'patient': wrapped: expected {{name: one of {', '.join(classes)}}}, "
                    f"got {wrapped!r}"
                )
            wrapped = dict(wrapped)
            inner = build_pruner(PrunerConfig(wrapped.pop("name"), wrapped))
        if "patience" not in options:
            raise ConfigError("pruner 'patient': missing option 'patience' (e.g. patience: 1)")
        options["wrapped_pruner"] = inner
    if cfg.name == "percentile" and "percentile" not in options:
        raise ConfigError("pruner 'percentile': missing option 'percentile' (e.g. percentile: 25.0)")
    return _construct("pruner", cfg.name, classes[cfg.name], options)


def _warmup_pruner() -> type:
    import optuna

    from objectives.record import TrialRecord

    class WarmupPruner(optuna.pruners.BasePruner):
        """Never prunes a trial before ``warmup`` of its planned examples (the objective's
        ``planned_examples`` attr); from there on, ``inner`` decides."""

        def __init__(self, inner: optuna.pruners.BasePruner, warmup: float) -> None:
            self.inner = inner
            self.warmup = warmup

        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            planned = TrialRecord.from_attrs(trial.user_attrs).planned_examples
            step = trial.last_step
            if step is None:
                return False
            if planned is not None and step < self.warmup * planned:
                return False
            return bool(self.inner.prune(study, trial))

    return WarmupPruner
