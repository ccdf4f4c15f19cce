"""The training side of ``hpo``: objectives that trials call.

An objective is ``objective(trial, params, cfg) -> float``: it trains with the sampled ``params``
under the fixed settings ``cfg``, reports its validation metric to ``trial`` at fixed fidelity
steps (training examples seen), honours pruning, and returns the best validation value.

Each objective registers an :class:`ObjectiveSpec` here. Users may name their own function as
``"package.module:function"``; it then gets its config section as a plain dict.

This package never imports ``hpo``, click, sqlalchemy or plotly.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from objectives import causal_lm_sft
from objectives import image_classification
from objectives import text_classification
from objectives import text_regression
from objectives import token_classification
from objectives import toy

__all__ = ["OBJECTIVES", "ObjectiveSpec", "check_allowed", "resolve_objective"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the study side needs to know about an objective."""

    fn: Callable[..., float]  # objective(trial, params, cfg) -> float
    config_from_dict: Callable[[dict[str, Any]], Any]  # validated, frozen config; ValueError if bad
    config_to_dict: Callable[[Any], dict[str, Any]]  # JSON-able, round-trips through from_dict
    metrics: dict[str, str]  # metric -> its natural direction; empty: any metric
    # Check data and model; return {"data_fingerprint": str, "data": JSON-able info}. Optional.
    prepare: Callable[[Any], dict[str, Any]] | None = None
    # Check the search space's distributions against cfg (e.g. the model's depth). Optional.
    validate_space: Callable[[Any, dict[str, Any]], None] | None = None
    # fn takes resume=[trial numbers]: the trials a retried trial repeats, oldest first.
    resumes: bool = False
    # The data fingerprint without loading the data (export checks it). Optional.
    fingerprint: Callable[[Any], str] | None = None
    # Data checks before compute is spent: cfg -> [objectives.checks.Finding]. Optional.
    check_data: Callable[[Any], list[Any]] | None = None
    # hpo export: (cfg, params, *, n_examples, seeds, include_validation, output_dir, merge)
    # -> objectives.final.FinalResult. Optional (no export without it).
    export: Callable[..., Any] | None = None
    # The automatic search space, sized to the data: (cfg, data info) -> raw space. Optional.
    default_space: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    # The usual recipe of the task: (cfg, names the space samples) -> params. Optional.
    recipe: Callable[[Any, list[str]], dict[str, Any]] | None = None


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "text_classification": ObjectiveSpec(
        fn=text_classification.objective,
        config_from_dict=text_classification.TextClassificationConfig.from_dict,
        config_to_dict=text_classification.TextClassificationConfig.to_dict,
        metrics=text_classification.METRICS,
        prepare=text_classification.prepare,
        validate_space=text_classification.validate_space,
        resumes=True,
        fingerprint=text_classification.fingerprint,
        check_data=text_classification.check_data,
        export=text_classification.export,
        default_space=text_classification.default_space,
        recipe=text_classification.recipe,
    ),
    "image_classification": ObjectiveSpec(
        fn=image_classification.objective,
        config_from_dict=image_classification.ImageClassificationConfig.from_dict,
        config_to_dict=image_classification.ImageClassificationConfig.to_dict,
        metrics=image_classification.METRICS,
        prepare=image_classification.prepare,
        validate_space=image_classification.validate_space,
        resumes=True,
        fingerprint=image_classification.fingerprint,
        check_data=image_classification.check_data,
        export=image_classification.export,
    ),
    "text_regression": ObjectiveSpec(
        fn=text_regression.objective,
        config_from_dict=text_regression.TextRegressionConfig.from_dict,
        config_to_dict=text_regression.TextRegressionConfig.to_dict,
        metrics=text_regression.METRICS,
        prepare=text_regression.prepare,
        validate_space=text_regression.validate_space,
        resumes=True,
        fingerprint=text_regression.fingerprint,
        check_data=text_regression.check_data,
        export=text_regression.export,
    ),
    "token_classification": ObjectiveSpec(
        fn=token_classification.objective,
        config_from_dict=token_classification.TokenClassificationConfig.from_dict,
        config_to_dict=token_classification.TokenClassificationConfig.to_dict,
        metrics=token_classification.METRICS,
        prepare=token_classification.prepare,
        validate_space=token_classification.validate_space,
        resumes=True,
        fingerprint=token_classification.fingerprint,
        check_data=token_classification.check_data,
        export=token_classification.export,
    ),
    "causal_lm_sft": ObjectiveSpec(
        fn=causal_lm_sft.objective,
        config_from_dict=causal_lm_sft.SFTConfig.from_dict,
        config_to_dict=causal_lm_sft.SFTConfig.to_dict,
        metrics=causal_lm_sft.METRICS,
        prepare=causal_lm_sft.prepare,
        validate_space=causal_lm_sft.validate_space,
        resumes=True,
        fingerprint=causal_lm_sft.fingerprint,
        check_data=causal_lm_sft.check_data,
        export=causal_lm_sft.export,
    ),
    "toy": ObjectiveSpec(
        fn=toy.objective,
        config_from_dict=toy.ToyConfig.from_dict,
        config_to_dict=toy.ToyConfig.to_dict,
        metrics=toy.METRICS,
        prepare=toy.prepare,
        validate_space=toy.validate_space,
        resumes=True,
    ),
}


def resolve_objective(name: str) -> ObjectiveSpec:
    """Return the registered objective ``name``, or import ``"package.module:function"``.

    A ``module:function`` must be callable as ``function(trial, params, cfg)``; it gets its
    config section as a plain dict.

    Raises:
        KeyError: unknown name (the message lists the registered ones).
        ImportError: a ``module:function`` path that cannot be imported (the cause's first line).
        TypeError: a ``module:function`` that is not an objective.
    """
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if ":" not in name:
        raise KeyError(
            f"unknown objective {name!r} (registered: {', '.join(sorted(OBJECTIVES))}, "
            "or 'package.module:function')"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module: any error while importing it is theirs
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ImportError(f"cannot import {module_name!r} ({type(exc).__name__}: {first})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ImportError(f"{module_name!r} has no function {attr!r}")
    try:
        inspect.signature(fn).bind(None, {}, {})
    except TypeError:
        raise TypeError(
            f"{name} is not an objective: it must take (trial, params, cfg), got "
            f"{attr}{_signature(fn)}"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): let the first trial tell
        pass
    return ObjectiveSpec(
        fn=fn,
        config_from_dict=dict,
        config_to_dict=dict,
        metrics={},  # any metric name; the config gives the direction (default minimize)
    )


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(?)"


def check_allowed(name: str, allowed: tuple[str, ...]) -> None:
    """Refuse a ``module:function`` objective that a worker was not told to allow.

    A worker reads the objective's name from the database: without this, anyone who can write
    to the database could make every worker import (and so run) any module.

    Raises:
        PermissionError: ``name`` is a ``module:function`` not in ``allowed``.
    """
    if name in OBJECTIVES or name in allowed:
        return
    raise PermissionError(
        f"the study's objective {name!r} is not allowed on this worker; pass "
        f"--allow-objective {name} (or HPO_ALLOW_OBJECTIVES) if you trust it"
    )
