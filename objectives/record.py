"""The trial record: the one schema of what a trial stores.

The objective writes a :class:`TrialRecord` into the trial's user attrs (:meth:`to_attrs`); the
worker adds what it knows (:class:`WorkerRecord`); the report, export, pruner warm-up and the
command line read both back with :meth:`TrialRecord.from_attrs`, never by string keys of their
own. The attribute names are kept flat and readable (``val_accuracy``, ``examples_seen``), so
optuna's own tools and optuna-dashboard show them as they are.

Unknown or missing attributes read back as None: studies written by older versions, by a user's
own objective or by another task still open.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from dataclasses import field
from typing import Any

__all__ = ["COSTS", "EvalPoint", "TrialRecord", "WorkerRecord"]

# Attribute names written by the objective (besides the best point's metrics, see below).
HISTORY = "history"
BEST_STEP = "best_step"
# The worker's.
WORKER = "worker"
WALL_SECONDS = "wall_seconds"
FAIL_REASON = "fail_reason"
WARM_START_FROM = "warm_start_from"
WARM_START_TRIAL = "warm_start_trial"
INFEASIBLE = "infeasible"
# What a trial costs, as recorded by every objective of the core; all are better smaller. A
# study may optimize them beside its metric, or constrain them.
COSTS = ("inference_ms", "train_seconds", "trial_seconds", "peak_memory_mb", "trainable_params",
         "total_params", "examples_seen", "tokens_seen", "export_mb")
RECIPE = "recipe"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass
class EvalPoint:
    """One evaluation: the metrics after ``step`` training examples (the fidelity step)."""

    step: int  # training examples seen, the same in every trial whatever its batch size
    metrics: dict[str, float]  # val_loss, val_accuracy, ... as the task computes them
    seconds: float = 0.0  # training seconds so far (evaluations included)
    tokens: int | None = None  # training tokens seen (language-model tasks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, **self.metrics, "seconds": round(self.seconds, 3)}
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalPoint | None:
        step = _int(d.get("step"))
        if step is None:
            return None
        metrics = {k: float(v) for k, v in d.items()
                   if k not in ("step", "seconds", "tokens") and _num(v) is not None}
        return cls(step, metrics, _num(d.get("seconds")) or 0.0, _int(d.get("tokens")))


@dataclass
class TrialRecord:
    """What a trial's training measured; ``best`` is the evaluation where its metric was best."""

    history: list[EvalPoint] = field(default_factory=list)
    best_step: int | None = None
    examples_seen: int | None = None
    tokens_seen: int | None = None
    planned_examples: int | None = None  # training examples of the whole run, were it not stopped
    train_seconds: float | None = None  # training and evaluation, without set-up
    prefix_seconds: float | None = None  # computing the frozen prefix (0 when cached or unused)
    trial_seconds: float | None = None  # the whole training call
    tokens_per_second: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    device: str | None = None  # cpu, cuda:0, ...
    device_name: str | None = None  # the GPU's or CPU's name
    world_size: int | None = None  # data-parallel ranks (None or 1: one device)
    folds: int | None = None  # cross-validation folds trained per step (None: one split)
    precision: str | None = None  # fp32, bf16, fp16 (resolved)
    peak_memory_mb: float | None = None
    inference_ms: float | None = None  # per example, whole model, fixed batch, after set-up
    export_mb: float | None = None  # what export would save: the adapter, or the whole model
    prefix_cached: bool | None = None
    resumed_from: dict[str, int] | None = None  # {"trial": n, "step": examples}

    @property
    def best(self) -> dict[str, float]:
        """The metrics of the best evaluation (empty before the first one)."""
        for point in self.history:
            if point.step == self.best_step:
                return dict(point.metrics)
        return {}

    def best_point(self, metric: str, minimize: bool) -> EvalPoint | None:
        """The evaluation with the best ``metric`` (the first one on ties)."""
        points = [p for p in self.history if metric in p.metrics]
        if not points:
            return None
        sign = 1.0 if minimize else -1.0
        return min(points, key=lambda p: sign * p.metrics[metric])

    def to_attrs(self) -> dict[str, Any]:
        """Flat, JSON-able user attrs: every set field, and the best point's metrics."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "history":
                out[HISTORY] = [p.to_dict() for p in value]
            elif value is not None:
                out[f.name] = round(value, 3) if isinstance(value, float) else value
        out.update(self.best)
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        """Read a record back from user attrs; what is missing or malformed reads as unset."""
        history = []
        raw = attrs.get(HISTORY)
        if isinstance(raw, list):
            history = [p for d in raw if isinstance(d, dict) and (p := EvalPoint.from_dict(d))]
        record = cls(history=history, best_step=_int(attrs.get(BEST_STEP)))
        for f in dataclasses.fields(cls):
            if f.name in ("history", "best_step") or f.name not in attrs:
                continue
            value = attrs[f.name]
            if f.type == "bool | None":
                ok = isinstance(value, bool)
            elif f.type in ("int", "int | None"):
                ok, value = _int(value) is not None, _int(value)
            elif f.type in ("float", "float | None"):
                ok, value = _num(value) is not None, _num(value)
            elif f.type == "str | None":
                ok = isinstance(value, str)
            else:
                ok = isinstance(value, dict)
            if ok:
                setattr(record, f.name, value)
        return record

    def metric(self, name: str) -> float | None:
        """The best evaluation's ``name`` (e.g. ``val_accuracy``), or None."""
        return _num(self.best.get(name))

    def value(self, name: str) -> float | None:
        """A metric at the best evaluation, or a cost (``inference_ms``...); None if unknown."""
        if name in COSTS:
            return _num(getattr(self, name))
        return self.metric(name)


@dataclass
class WorkerRecord:
    """What the worker adds to a trial: who ran it, its wall time, why it failed."""

    worker: dict[str, Any] | None = None  # host, pid, id, device, started_at
    wall_seconds: float | None = None
    fail_reason: str | None = None  # the first line of the error
    infeasible: str | None = None  # why the configuration cannot run (e.g. out of memory)
    warm_start_from: str | None = None  # the study a warm-started trial's params come from
    warm_start_trial: int | None = None
    recipe: str | None = None  # the enqueued usual recipe of the task (a new study's first trial)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> WorkerRecord:
        worker = attrs.get(WORKER)
        return cls(
            worker=worker if isinstance(worker, dict) else None,
            wall_seconds=_num(attrs.get(WALL_SECONDS)),
            fail_reason=attrs.get(FAIL_REASON) if isinstance(attrs.get(FAIL_REASON), str) else None,
            infeasible=attrs.get(INFEASIBLE) if isinstance(attrs.get(INFEASIBLE), str) else None,
            warm_start_from=attrs.get(WARM_START_FROM)
            if isinstance(attrs.get(WARM_START_FROM), str) else None,
            warm_start_trial=_int(attrs.get(WARM_START_TRIAL)),
            recipe=attrs.get(RECIPE) if isinstance(attrs.get(RECIPE), str) else None,
        )

    @property
    def worker_id(self) -> str | None:
        return None if self.worker is None else self.worker.get("id")
