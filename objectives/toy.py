"""A fast, deterministic objective that exercises the whole worker path without training.

It scores the sampled numeric params as a shifted quadratic, reports a decreasing curve at
``n_steps`` fidelity steps (sleeping ``sleep`` seconds per step, to look like training), keeps a
JSON checkpoint per step when ``checkpoint_dir`` is set, and resumes from the checkpoint of the
trial it retries. Tests and storage benchmarks use it; so can anyone checking a cluster set-up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from pathlib import Path
from typing import Any

import optuna

__all__ = ["METRICS", "ToyConfig", "objective", "prepare", "validate_space"]

METRICS = {"value": "minimize"}
_ENV = ("CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "HPO_WORKER_ID")


@dataclass(frozen=True)
class ToyConfig:
    """Settings of the toy objective."""

    n_steps: int = field(default=5, metadata={"help": "fidelity steps reported per trial"})
    sleep: float = field(default=0.0, metadata={"help": "seconds slept per step (0: none)"})
    examples_per_step: int = field(default=100, metadata={"help": "step size, in 'examples'"})
    data_file: str | None = field(
        default=None, metadata={"help": "a file whose content is the data fingerprint"}
    )
    checkpoint_dir: str | None = field(
        default=None, metadata={"help": "where each step's checkpoint goes (None: no checkpoints)"}
    )
    metric: str = "value"
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("n_steps", "examples_per_step"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(self.sleep, bool) or not isinstance(self.sleep, int | float):
            raise ValueError(f"sleep must be a number of seconds, got {self.sleep!r}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.sleep < 0:
            raise ValueError(f"sleep must be >= 0, got {self.sleep}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown key {key!r} (valid: {', '.join(sorted(known))})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(cfg: ToyConfig) -> dict[str, Any]:
    """Fingerprint the data file (if any)."""
    digest = hashlib.sha256(str(cfg.seed).encode())
    if cfg.data_file is not None:
        try:
            digest.update(Path(cfg.data_file).read_bytes())
        except OSError as exc:
            raise ValueError(f"data_file {cfg.data_file!r}: {exc.strerror}") from None
    return {"data_fingerprint": digest.hexdigest()[:16], "data": {"source": cfg.data_file}}


def validate_space(cfg: ToyConfig, distributions: dict[str, Any]) -> None:
    """Any space works: categorical params count as 0."""


def _checkpoint(cfg: ToyConfig, study: str, number: int) -> Path:
    assert cfg.checkpoint_dir is not None
    return Path(cfg.checkpoint_dir) / study / f"trial-{number}.json"


def _resume(trial: optuna.Trial, cfg: ToyConfig, history: list[int]) -> tuple[int, list[dict[str, float]]]:
    if cfg.checkpoint_dir is None:
        return 0, []
    for number in reversed(history):
        path = _checkpoint(cfg, trial.study.study_name, number)
        if path.exists():
            state = json.loads(path.read_text())
            trial.set_user_attr("resumed_from", {"trial": number, "step": state["step"]})
            return int(state["step"]), list(state["history"])
    return 0, []


def objective(trial: optuna.Trial, params: dict[str, Any], cfg: ToyConfig, *,
              resume: list[int] | None = None) -> float:
    """Score ``params`` as a quadratic around 0.3, reported over ``cfg.n_steps`` steps.

    ``resume``: the trials this one retries (oldest first); it goes on from the newest
    checkpoint among them. The trial records the environment a worker pinned it to
    (``CUDA_VISIBLE_DEVICES``, torchrun's ``RANK``/``WORLD_SIZE``) as ``seen_env``.
    """
    trial.set_user_attr("seen_env", {k: os.environ[k] for k in _ENV if k in os.environ})
    if params.get("fail"):
        raise RuntimeError("this configuration fails on purpose (param fail=true)")
    numbers = [float(v) for v in params.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    final = sum((x - 0.3) ** 2 for x in numbers)
    trial.set_user_attr("planned_examples", cfg.n_steps * cfg.examples_per_step)
    # Costs that trade off against the value (several objectives, constraints): a toy latency
    # and memory, known before the first step like the core's.
    x, y = (float(params.get(k, 0.0)) if isinstance(params.get(k), int | float) else 0.0
            for k in ("x", "y"))
    trial.set_user_attr("inference_ms", round(1.0 + (x + 0.5) ** 2, 6))
    trial.set_user_attr("peak_memory_mb", round(100.0 + 50.0 * (y + 1.0), 3))
    start, history = _resume(trial, cfg, list(resume or []))
    for entry in history:
        trial.report(entry["value"], int(entry["step"]))
    best = min((e["value"] for e in history), default=math.inf)
    t0 = time.perf_counter()
    for i in range(start + 1, cfg.n_steps + 1):
        if cfg.sleep:
            time.sleep(cfg.sleep)
        value = final + 1.0 / i
        step = i * cfg.examples_per_step
        history.append({"step": step, "value": value})
        best = min(best, value)
        trial.report(value, step)
        if cfg.checkpoint_dir is not None:
            path = _checkpoint(cfg, trial.study.study_name, trial.number)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"step": i, "history": history}))
            tmp.replace(path)
        trial.set_user_attr("examples_seen", step)
        if trial.should_prune():
            trial.set_user_attr("train_seconds", time.perf_counter() - t0)
            raise optuna.TrialPruned(f"pruned at step {step}")
    trial.set_user_attr("examples_seen", cfg.n_steps * cfg.examples_per_step)
    trial.set_user_attr("planned_examples", cfg.n_steps * cfg.examples_per_step)
    trial.set_user_attr("train_seconds", time.perf_counter() - t0)
    trial.set_user_attr("history", history)
    return best
