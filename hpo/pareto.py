"""Several objectives: non-dominated sorting, pruning that works there, and picking one trial.

**Pruning** (optuna has none for several objectives: ``trial.report`` refuses them). hpo's
``pareto-halving`` is successive halving on the non-dominated rank, as Syne Tune's MOASHA does
it: rungs sit at a trial's 1st, 3rd, 9th... evaluation (``reduction_factor`` 3; the same number
of training examples seen in every trial). At a rung, the trials that reached it are sorted by
non-dominated rank over all the study's objectives (the metric at that evaluation, each cost as
recorded), ties broken by crowding distance (NSGA-II); a trial goes on only if it is in the
first ``ceil(n / reduction_factor)`` of the ``n`` trials there. With fewer than
``reduction_factor`` trials at a rung, every trial goes on.

**Picking** a trial for export: ``--pick "max val_accuracy where inference_ms <= 5"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.errors import HPOInputError
from objectives.record import TrialRecord

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["INTERMEDIATE", "ParetoHalving", "PickRule", "nondominated_ranks", "parse_pick"]

INTERMEDIATE = "intermediate"  # user attr of a multi-objective trial: {step: metrics there}


def nondominated_ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The non-dominated rank of each point (0: the Pareto front), for objectives to minimize
    or maximize as ``directions`` say."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    pts = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    ranks = [-1] * len(pts)
    remaining = set(range(len(pts)))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(pts[j], pts[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def _crowding(points: list[list[float]], members: list[int]) -> dict[int, float]:
    distance = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for k in range(len(points[members[0]])):
        ordered = sorted(members, key=lambda i: points[i][k])
        lo, hi = points[ordered[0]][k], points[ordered[-1]][k]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if hi == lo:
            continue
        for a, b, c in zip(ordered, ordered[1:], ordered[2:], strict=False):
            distance[b] += (points[c][k] - points[a][k]) / (hi - lo)
    return distance


def objective_values(record: TrialRecord, names: Sequence[str],
                     metrics: dict[str, float] | None = None) -> list[float] | None:
    """A trial's value of each objective: metrics from ``metrics`` (an evaluation's) or its best
    evaluation, costs from its record; None when one is unknown."""
    out = []
    for name in names:
        value = (metrics or {}).get(name) if metrics is not None and name in metrics else record.value(name)
        if value is None or not math.isfinite(value):
            return None
        out.append(float(value))
    return out


@dataclass
class ParetoHalving:
    """Successive halving on the non-dominated rank (see the module docstring)."""

    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int) \
                or self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be an integer >= 2, got {self.reduction_factor!r}")

    def is_rung(self, n_evals: int) -> bool:
        """Whether a trial's ``n_evals``-th evaluation is a rung (1, 3, 9, ... for 3)."""
        k = 0
        while self.reduction_factor ** k < n_evals:
            k += 1
        return self.reduction_factor ** k == n_evals

    def should_stop(self, trials: Sequence[FrozenTrial], number: int, step: int,
                    names: Sequence[str], directions: Sequence[str]) -> bool:
        """Whether trial ``number``, at its evaluation at ``step``, falls out at this rung."""
        at_step: dict[int, list[float]] = {}
        for t in trials:
            seen = t.user_attrs.get(INTERMEDIATE)
            if not isinstance(seen, dict):
                continue
            steps = sorted(int(s) for s in seen)
            if step not in steps or not self.is_rung(steps.index(step) + 1):
                continue
            values = objective_values(TrialRecord.from_attrs(t.user_attrs), names, seen[str(step)])
            if values is not None:
                at_step[t.number] = values
        if number not in at_step or len(at_step) < self.reduction_factor:
            return False
        numbers = sorted(at_step)
        points = [at_step[n] for n in numbers]
        ranks = nondominated_ranks(points, directions)
        signs = [1.0 if d == "minimize" else -1.0 for d in directions]
        signed = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]
        order: list[int] = []
        for rank in sorted(set(ranks)):
            members = [i for i, r in enumerate(ranks) if r == rank]
            crowd = _crowding(signed, members)
            order += sorted(members, key=lambda i: -crowd[i])
        keep = {numbers[i] for i in order[: math.ceil(len(numbers) / self.reduction_factor)]}
        return number not in keep


_PICK = re.compile(r"^\s*(max|min)\s+([A-Za-z_][\w]*)\s*(?:where\s+(.+))?$")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(<=|>=|<|>|==)\s*(-?[\d.]+(?:e-?\d+)?)\s*$")


@dataclass(frozen=True)
class PickRule:
    """``max|min NAME [where NAME OP NUMBER [and ...]]`` over complete trials."""

    goal: str
    name: str
    conditions: tuple[tuple[str, str, float], ...]

    def pick(self, trials: Sequence[FrozenTrial], study: optuna.Study) -> FrozenTrial | None:
        ops = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__,
               "==": float.__eq__}
        best: tuple[float, FrozenTrial] | None = None
        for t in trials:
            record = TrialRecord.from_attrs(t.user_attrs)
            values = {n: v for n in {self.name, *(c[0] for c in self.conditions)}
                      if (v := _value_of(t, record, n, study)) is not None}
            if self.name not in values or not all(
                    n in values and ops[op](values[n], bound) for n, op, bound in self.conditions):
                continue
            key = values[self.name] if self.goal == "max" else -values[self.name]
            if best is None or key > best[0]:
                best = (key, t)
        return None if best is None else best[1]


def _value_of(t: FrozenTrial, record: TrialRecord, name: str, study: optuna.Study) -> float | None:
    names = study.user_attrs.get("hpo_config", {}).get("metric")
    names = names if isinstance(names, list) else [names]
    if name in names and t.values is not None:
        return float(t.values[names.index(name)])
    return record.value(name)


def parse_pick(rule: str, known: Sequence[str]) -> PickRule:
    """Parse ``--pick``; names must be among ``known`` (metrics and costs).

    Raises:
        HPOInputError: a rule that does not parse, or an unknown name, in one line.
    """
    match = _PICK.match(rule)
    if match is None:
        raise HPOInputError(f"--pick {rule!r}: expected 'max|min NAME [where NAME <= NUMBER "
                            "[and ...]]', e.g. 'max val_accuracy where inference_ms <= 5'")
    goal, name, where = match.groups()
    conditions = []
    for part in re.split(r"\s+and\s+", where) if where else []:
        cond = _CONDITION.match(part)
        if cond is None:
            raise HPOInputError(f"--pick {rule!r}: cannot read the condition {part.strip()!r} "
                                "(expected NAME <= NUMBER; operators <=, >=, <, >, ==)")
        conditions.append((cond[1], cond[2], float(cond[3])))
    for n in [name, *(c[0] for c in conditions)]:
        if n not in known:
            raise HPOInputError(f"--pick {rule!r}: unknown name {n!r} (valid: {', '.join(known)})")
    return PickRule(goal, name, tuple(conditions))
