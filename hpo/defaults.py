"""Defaults that adapt to the budget and the data, for what the user did not choose.

Each choice is made once, when a study is created, printed once and stored in the study
(``user_attrs["defaults"]``: key -> what was chosen and why):

- **metric**: ``val_f1`` (macro-F1) when the data checks find imbalanced classes and the config
  names no metric; accuracy and loss flatter the majority class there.
- **search space** (``search_space`` left out, or ``auto``): the objective's own, sized to the
  data (for text classification: batch sizes that give at least 25 optimizer steps per epoch on
  the training split, a freezing depth of at most half the model's layers, learning rate, weight
  decay and warmup ranges from practice).
- **sampler start-up**: TPE's random start-up trials, a quarter of ``n_trials`` within 2..10
  (optuna's fixed 10 makes a study of 10 trials or fewer a random search).
- **pruner**: with 4 or more evaluations per trial, successive halving over examples seen
  (rungs at one evaluation segment x 3^k; at each rung a trial goes on only if its value is
  in the best third of the trials that reached that rung; see :func:`default_pruner`); with
  fewer, the median pruner.
- **first trial**: the task's usual recipe (e.g. learning rate 5e-5, batch 16, warmup 0.1,
  weight decay 0.01), fitted to the space and enqueued, so the study never ends worse than the
  usual recipe (``start_with_recipe: false`` turns it off).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING
from typing import Any

from hpo.config import PrunerConfig
from hpo.config import SamplerConfig
from hpo.config import StudyConfig

if TYPE_CHECKING:
    from hpo.search_space import SearchSpace
    from objectives.checks import Finding

__all__ = ["AUTO", "apply_defaults", "default_pruner", "fit_recipe", "recipe_applies",
           "startup_trials"]

_LOG = logging.getLogger("hpo")
AUTO = "auto"  # search_space: auto (or left out): the objective's space, sized to the data
_MIN_SH_EVALS = 4  # evaluations per trial from which successive halving pays


def startup_trials(n_trials: int | None) -> int:
    """Random start-up trials of TPE for a budget of ``n_trials`` (None: a time or compute
    budget, whose trial count is not known in advance)."""
    if n_trials is None:
        return 5
    return max(2, min(10, round(n_trials / 4)))


def default_pruner(cfg: StudyConfig, n_train: int | None) -> tuple[PrunerConfig, str]:
    """Successive halving over examples seen when a trial has enough evaluations, else median.

    Promotion rule (optuna's ``SuccessiveHalvingPruner``, steps = training examples seen):
    rung ``k`` sits at ``min_resource * 3**k`` examples, with ``min_resource`` one evaluation
    segment (the training rows / ``evals_per_epoch``); a trial reaching a rung goes on only if
    its value there is in the best third of all trials' values at that rung.
    """
    objective = cfg.objective_config
    evals = (getattr(objective, "epochs", 0) * getattr(objective, "evals_per_epoch", 0)
             or getattr(objective, "n_steps", 0))
    folds = getattr(objective, "cv_folds", None)
    if cfg.multi_objective:
        if evals >= _MIN_SH_EVALS:
            return (PrunerConfig("pareto-halving", {}),
                    f"pareto-halving ({evals} evaluations per trial): at the 1st, 3rd, 9th... "
                    "evaluation a trial goes on if in the best third by non-dominated rank")
        return PrunerConfig("none", {}), f"none ({evals} evaluations per trial: too few)"
    if evals >= _MIN_SH_EVALS and n_train:
        rows = n_train * (folds - 1) // folds if folds else n_train
        segment = max(1, rows // getattr(objective, "evals_per_epoch", 1))
        return (PrunerConfig("successive-halving", {"min_resource": segment, "reduction_factor": 3}),
                f"successive halving, rungs every 3x from {segment} examples ({evals} "
                "evaluations per trial); a trial goes on if in the best third at a rung")
    return (PrunerConfig("median", {"n_startup_trials": 3}),
            f"median ({evals} evaluations per trial: too few for successive halving)")


def apply_defaults(cfg: StudyConfig, findings: list[Finding],
                   data: dict[str, Any] | None = None) -> tuple[StudyConfig, dict[str, str]]:
    """``cfg`` with a default for each study setting the user did not give, and why.

    Args:
        cfg: the config as loaded (``cfg.given``: the keys the user set).
        findings: the data checks' findings.
        data: the data's info (split sizes); None: the objective's ``prepare`` says.
    """
    from objectives import resolve_objective

    chosen: dict[str, str] = {}
    spec = resolve_objective(cfg.objective)
    if data is None and spec.prepare is not None:
        try:
            data = spec.prepare(cfg.objective_config)["data"]
        except ValueError:
            data = None  # create_study reports the data's problem
    n_train = int((data or {}).get("sizes", {}).get("train", 0)) or None
    changes: dict[str, Any] = {}
    if ("metric" not in cfg.given and "direction" not in cfg.given and "val_f1" in spec.metrics
            and not cfg.multi_objective):
        imbalance = next((f for f in findings if f.code == "class-imbalance"), None)
        if imbalance is not None and cfg.metric != "val_f1":
            ratio = imbalance.message.split("(")[1].split(")")[0]
            changes["metric"], changes["direction"] = "val_f1", spec.metrics["val_f1"]
            changes["metrics"], changes["directions"] = ("val_f1",), (spec.metrics["val_f1"],)
            changes["objective_config"] = dataclasses.replace(cfg.objective_config, metric="val_f1")
            chosen["metric"] = f"val_f1 (macro-F1): training classes are imbalanced ({ratio})"
    if "search_space" not in cfg.given or cfg.search_space == AUTO:
        if spec.default_space is not None:
            changes["search_space"] = AUTO
            chosen["search_space"] = "auto: the objective's space, sized to the data (see the study's search_space)"
    sampler = cfg.sampler
    if sampler.name == "tpe" and "n_startup_trials" not in sampler.options:
        n = startup_trials(cfg.n_trials)
        changes["sampler"] = SamplerConfig("tpe", {**sampler.options, "n_startup_trials": n})
        budget = f"a budget of {cfg.n_trials} trials" if cfg.n_trials else "a time or compute budget"
        chosen["sampler"] = f"tpe with {n} random start-up trials ({budget})"
    if "pruner" not in cfg.given:
        changes["pruner"], why = default_pruner(cfg, n_train)
        chosen["pruner"] = why
    if recipe_applies(cfg, spec):
        chosen["first_trial"] = "the usual recipe, enqueued (start_with_recipe: false turns it off)"
    return dataclasses.replace(cfg, **changes), chosen


def recipe_applies(cfg: StudyConfig, spec: Any) -> bool:
    """Whether a new study starts with the task's usual recipe: not with ``start_with_recipe:
    false``, and not under a grid sampler, whose trials are the grid's points (an enqueued recipe
    would run one of them twice, or a point off the grid)."""
    return bool(cfg.start_with_recipe and spec.recipe is not None and cfg.sampler.name != "grid")


def fit_recipe(recipe: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """The recipe's values inside ``space``: numbers clipped to each range (integers rounded),
    the nearest categorical choice, conditional entries only where their condition holds;
    entries the recipe does not name are left to the sampler."""
    from optuna.distributions import CategoricalDistribution
    from optuna.distributions import IntDistribution

    fitted: dict[str, Any] = {}
    for p in space.params:  # parents come before the entries they enable
        if p.name not in recipe:
            continue
        if p.condition is not None and fitted.get(p.condition[0]) not in p.condition[1]:
            continue
        value, dist = recipe[p.name], p.distribution
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if value in choices:
                fitted[p.name] = value
            elif all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices) and \
                    isinstance(value, int | float):
                fitted[p.name] = min(choices, key=lambda c: abs(math.log(c / value))
                                     if c > 0 and value > 0 else abs(c - value))
            continue
        clipped = min(max(value, dist.low), dist.high)
        if isinstance(dist, IntDistribution):
            clipped = int(round(clipped))
        fitted[p.name] = clipped
    return fitted


def describe(chosen: dict[str, str]) -> None:
    """Print each choice once (when the study is created)."""
    for key, why in chosen.items():
        _LOG.info("default %s: %s", key, why)
