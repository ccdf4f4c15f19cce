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


def task_spec(module: Any, config: type) -> ObjectiveSpec:
    """The spec of a task module that defines the usual hooks by their usual names
    (``objective``, ``METRICS``, ``prepare``, ``validate_space``, ``fingerprint``,
    ``check_data``, ``export`` and, where it has them, ``default_space`` and ``recipe``)."""
    return ObjectiveSpec(
        fn=module.objective,
        config_from_dict=config.from_dict,
        config_to_dict=config.to_dict,
        metrics=module.METRICS,
        prepare=module.prepare,
        validate_space=module.validate_space,
        resumes=True,
        fingerprint=getattr(module, "fingerprint", None),
        check_data=getattr(module, "check_data", None),
        export=getattr(module, "export", None),
        default_space=getattr(module, "default_space", None),
        recipe=getattr(module, "recipe", None),
    )


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "text_classification": task_spec(text_classification,
                                     text_classification.TextClassificationConfig),
    "image_classification": task_spec(image_classification,
                                      image_classification.ImageClassificationConfig),
    "text_regression": task_spec(text_regression, text_regression.TextRegressionConfig),
    "token_classification": task_spec(token_classification,
                                      token_classification.TokenClassificationConfig),
    "causal_lm_sft": task_spec(causal_lm_sft, causal_lm_sft.SFTConfig),
    "toy": task_spec(toy, toy.ToyConfig),
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
