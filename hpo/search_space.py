"""Search spaces as YAML: one entry per hyperparameter, mirroring optuna's ``suggest_*``.

.. code-block:: yaml

    learning_rate: {type: float, low: 1.0e-5, high: 5.0e-4, log: true}
    batch_size: {type: categorical, choices: [8, 16, 32]}
    freeze_layers: {type: int, low: 0, high: 6}
    r: {type: int, low: 4, high: 16, condition: {finetuning: lora}}

Each entry becomes an optuna distribution at load time, so optuna's own checks run then, and
every error names the file and the key. ``condition`` samples the entry only when another
parameter has one of the given values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from hpo._yaml import read_yaml
from hpo.errors import SearchSpaceError

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

__all__ = ["Param", "SearchSpace", "load_search_space"]

_TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": {"type", "low", "high", "log", "step", "condition", "help"},
    "int": {"type", "low", "high", "log", "step", "condition", "help"},
    "categorical": {"type", "choices", "condition", "help"},
}
# YAML 1.1 reads `1e-5` (no dot) as a string; accept it as the number people meant.
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# Of those, the strings YAML never reads as numbers itself: with an exponent (`1e-5`, `1.0e5`).
# A choice or condition value written so is the number; a plain "8" is a string only when
# quoted on purpose.
_EXPONENT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _yaml_number(value: Any) -> Any:
    """``value``, or the float it means when it is a string like ``1e-5``."""
    if isinstance(value, str) and _EXPONENT_RE.match(value.strip()):
        return float(value)
    return value


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its distribution and the condition under which it is sampled."""

    name: str
    distribution: BaseDistribution
    condition: tuple[str, tuple[Any, ...]] | None = None  # (parent name, values that enable it)
    help: str = ""


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space, in sampling order (parents before the entries they enable)."""

    params: tuple[Param, ...]
    raw: dict[str, Any]  # the YAML mapping as loaded, stored in the study
    source: str = "<dict>"  # file it came from, for messages

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one configuration; conditional entries only when their condition holds."""
        from optuna.distributions import CategoricalDistribution
        from optuna.distributions import FloatDistribution

        params: dict[str, Any] = {}
        for p in self.params:
            if p.condition is not None:
                parent, values = p.condition
                if parent not in params or params[parent] not in values:
                    continue
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                params[p.name] = trial.suggest_categorical(p.name, d.choices)
            elif isinstance(d, FloatDistribution):
                params[p.name] = trial.suggest_float(p.name, d.low, d.high, log=d.log, step=d.step)
            else:
                params[p.name] = trial.suggest_int(p.name, d.low, d.high, log=d.log, step=d.step)
        return params

    def distributions(self) -> dict[str, BaseDistribution]:
        """The optuna distribution of every entry, by name."""
        return {p.name: p.distribution for p in self.params}

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def fits(self, name: str, value: Any) -> bool:
        """Whether ``value`` is a valid value of entry ``name`` (for warm starts)."""
        for p in self.params:
            if p.name == name:
                try:
                    return bool(p.distribution._contains(p.distribution.to_internal_repr(value)))
                except (ValueError, TypeError):
                    return False
        return False

    def grid(self, overrides: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
        """The value grid for optuna's GridSampler: categorical choices, int ranges, overrides."""
        from optuna.distributions import CategoricalDistribution
        from optuna.distributions import IntDistribution

        overrides = overrides or {}
        grid: dict[str, list[Any]] = {}
        for p in self.params:
            d = p.distribution
            if p.name in overrides:
                grid[p.name] = [_yaml_number(v) for v in overrides[p.name]]
            elif isinstance(d, CategoricalDistribution):
                grid[p.name] = list(d.choices)
            elif isinstance(d, IntDistribution) and not d.log and (d.high - d.low) // d.step < 50:
                grid[p.name] = list(range(d.low, d.high + 1, d.step))
            else:
                raise SearchSpaceError(
                    f"{self.source}: {p.name}: the grid sampler needs a finite list of values; "
                    f"give them in the config as sampler: {{name: grid, search_space: "
                    f"{{{p.name}: [...]}}}}"
                )
        return grid


def _number(source: str, name: str, key: str, value: Any, kind: str) -> float | int:
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SearchSpaceError(
            f"{source}: {name}.{key}: expected a number, got {value!r}"
        )
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise SearchSpaceError(
                f"{source}: {name}.{key}: expected an integer for type int, got {value!r}"
            )
        return int(value)
    if not math.isfinite(value):
        raise SearchSpaceError(f"{source}: {name}.{key}: expected a finite number, got {value!r}")
    return float(value)


def _check_step(source: str, name: str, low: float, high: float, step: float) -> None:
    """optuna silently moves ``high`` down to the last multiple of ``step``: refuse instead.

    Decimal arithmetic on the numbers as written, so ``low: 0.1, high: 0.3, step: 0.1`` holds.
    """
    from decimal import Decimal

    lo, hi, st = (Decimal(str(v)) for v in (low, high, step))
    if (hi - lo) % st == 0:
        return
    below = lo + (hi - lo) // st * st
    raise SearchSpaceError(
        f"{source}: {name}: `(high - low)` must be a multiple of `step`, but got low={low}, "
        f"high={high}, step={step} (e.g. high={below} or high={below + st})"
    )


def _distribution(source: str, name: str, entry: dict[str, Any]) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution
    from optuna.distributions import FloatDistribution
    from optuna.distributions import IntDistribution

    kind = entry["type"]
    try:
        if kind == "categorical":
            choices = entry.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SearchSpaceError(
                    f"{source}: {name}.choices: expected a non-empty list, got {choices!r}"
                )
            choices = [_yaml_number(c) for c in choices]
            for c in choices:
                if c is not None and not isinstance(c, bool | int | float | str):
                    raise SearchSpaceError(
                        f"{source}: {name}.choices: each choice must be a number, string, bool "
                        f"or null, got {c!r} (write a list as a string, e.g. 'query,value')"
                    )
            if len(set(map(repr, choices))) != len(choices):
                raise SearchSpaceError(f"{source}: {name}.choices: duplicate choices in {choices!r}")
            return CategoricalDistribution(choices)
        for key in ("low", "high"):
            if key not in entry:
                raise SearchSpaceError(f"{source}: {name}: missing key {key!r} for type {kind}")
        low = _number(source, name, "low", entry["low"], kind)
        high = _number(source, name, "high", entry["high"], kind)
        log = entry.get("log", False)
        if not isinstance(log, bool):
            raise SearchSpaceError(f"{source}: {name}.log: expected true or false, got {log!r}")
        step = entry.get("step")
        if step is not None:
            step = _number(source, name, "step", step, kind)
            if step <= 0:  # an int step of 0 used to become 1 without a word
                raise SearchSpaceError(f"{source}: {name}.step: expected a number > 0, got {step}")
        if low > high:
            raise SearchSpaceError(
                f"{source}: {name}: `low <= high` must hold, but got low={low}, high={high}"
            )
        if step is not None and step > 0:
            _check_step(source, name, low, high, step)
        if kind == "float":
            return FloatDistribution(low, high, log=log, step=step)
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    except ValueError as exc:  # optuna's own checks (log with low <= 0, step with log, ...)
        raise SearchSpaceError(f"{source}: {name}: {exc}") from None


def _condition(
    source: str, name: str, value: Any, entries: dict[str, Any]
) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(value, dict) or len(value) != 1:
        raise SearchSpaceError(
            f"{source}: {name}.condition: expected one `parent: value` pair (or a list of "
            f"values), got {value!r}"
        )
    ((parent, values),) = value.items()
    if parent not in entries:
        raise SearchSpaceError(
            f"{source}: {name}.condition: unknown parameter {parent!r} "
            f"(defined: {', '.join(sorted(entries))})"
        )
    if parent == name:
        raise SearchSpaceError(f"{source}: {name}.condition: a parameter cannot depend on itself")
    values = tuple(values) if isinstance(values, list) else (values,)
    return str(parent), tuple(_yaml_number(v) for v in values)


def _order(source: str, params: dict[str, Param]) -> tuple[Param, ...]:
    """Parents before children; a cycle is an error."""
    ordered: list[Param] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise SearchSpaceError(
                f"{source}: {name}.condition: cyclic conditions {' -> '.join(chain + (name,))}"
            )
        state[name] = 1
        cond = params[name].condition
        if cond is not None:
            visit(cond[0], chain + (name,))
        state[name] = 2
        ordered.append(params[name])

    for name in params:
        visit(name, ())
    return tuple(ordered)


def _check_condition_values(source: str, params: dict[str, Param]) -> None:
    for p in params.values():
        if p.condition is None:
            continue
        parent, values = p.condition
        dist = params[parent].distribution
        for v in values:
            try:
                ok = dist._contains(dist.to_internal_repr(v))
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise SearchSpaceError(
                    f"{source}: {p.name}.condition: {parent} can never be {v!r}"
                )


def search_space_from_dict(raw: Any, source: str = "<dict>") -> SearchSpace:
    """Validate a search-space mapping (as loaded from YAML) and build a :class:`SearchSpace`.

    Raises:
        SearchSpaceError: naming ``source`` and the key, for any invalid entry.
    """
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(
            f"{source}: expected a mapping of parameter name to entry, got {type(raw).__name__}"
        )
    params: dict[str, Param] = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SearchSpaceError(f"{source}: {name!r}: parameter names must be identifiers")
        if not isinstance(entry, dict):
            raise SearchSpaceError(
                f"{source}: {name}: expected a mapping like {{type: float, low: 0.0, high: 1.0}}, "
                f"got {entry!r}"
            )
        kind = entry.get("type")
        if kind not in _TYPES:
            raise SearchSpaceError(
                f"{source}: {name}.type: expected one of {', '.join(_TYPES)}, got {kind!r}"
            )
        unknown = sorted(set(entry) - _KEYS[kind])
        if unknown:
            raise SearchSpaceError(
                f"{source}: {name}: unknown key {unknown[0]!r} for type {kind} "
                f"(valid: {', '.join(sorted(_KEYS[kind]))})"
            )
        condition = None
        if "condition" in entry:
            condition = _condition(source, name, entry["condition"], raw)
        params[name] = Param(
            name, _distribution(source, name, entry), condition, str(entry.get("help", ""))
        )
    _check_condition_values(source, params)
    return SearchSpace(_order(source, params), raw=raw, source=source)


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space YAML file.

    Raises:
        SearchSpaceError: the file is missing, unreadable, not UTF-8 or not YAML, or has an
            invalid entry.

    Example:
        >>> space = load_search_space("search_spaces/default.yaml")
        >>> sorted(space.distributions())[:2]
        ['batch_size', 'dropout']
    """
    path = Path(path)
    raw = read_yaml(path, "search space", SearchSpaceError)
    return search_space_from_dict(raw, str(path))
