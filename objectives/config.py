"""The fixed settings of a training run that every task shares (everything not searched).

Each task's config is a frozen dataclass that extends :class:`TrainConfig` with its own keys
(the dataset, the maximum length...). Unknown keys are errors; every field says what it means,
its unit and what 0 or null means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import ClassVar
from typing import TypeVar

from objectives.devices import PRECISIONS
from objectives.devices import check_device_spec

__all__ = ["TrainConfig"]

_C = TypeVar("_C", bound="TrainConfig")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop (see :func:`objectives.core.train`)."""

    model: str = field(default="minilm", metadata={
        "help": "a packaged model's short name, a local Hugging Face directory or a hub id"})
    metric: str = field(default="val_loss", metadata={
        "help": "validation metric reported, pruned on and returned"})
    seed: int = field(default=0, metadata={"help": "seed of splits, initialization and order"})
    epochs: int = field(default=2, metadata={"help": "passes over the training split"})
    evals_per_epoch: int = field(default=2, metadata={
        "help": "validation passes (fidelity steps) per epoch"})
    device: str = field(default="auto", metadata={
        "help": "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 on GPUs of compute capability >= 8.0, fp16 with a gradient scaler "
        "on older GPUs, bf16 on CPUs with AVX512-BF16/AMX, else fp32; or fp32, bf16, fp16"})
    eval_batch_size: int = field(default=128, metadata={"help": "examples per evaluation batch"})
    micro_batch_size: int | None = field(default=None, metadata={
        "help": "examples per forward pass: a larger batch_size accumulates the gradients of "
        "several (memory stays bounded; steps still count examples); null: the whole batch"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0: none"})
    models_in_memory: int = field(default=2, metadata={
        "help": "pretrained models a worker keeps loaded (the model as a hyperparameter); the "
        "least recently used beyond it are dropped"})
    prefix_cache_mb: int = field(default=1024, metadata={
        "help": "memory for frozen-layer outputs kept across trials (MiB, on the device); 0: none"})
    cache_dir: str | None = field(default=".hpo_cache", metadata={
        "help": "on-disk cache directory (tokens, converted models); null: none"})
    checkpoint_dir: str | None = field(default=None, metadata={
        "help": "directory all workers reach; each fidelity step is checkpointed there and a "
        "retried trial resumes from it. null: no checkpoints"})
    deterministic: bool = field(default=False, metadata={
        "help": "torch deterministic algorithms (slower)"})
    cv_folds: int | None = field(default=None, metadata={
        "help": "score each configuration as the mean over k folds of train + validation "
        "(stratified for classification), trained in lockstep; the test split stays out. "
        "k times the compute; null: one validation split"})

    # The metrics a task reports, and their natural direction; tasks set it.
    METRICS: ClassVar[dict[str, str]] = {"val_loss": "minimize"}
    # Whether the task scores a configuration over cross-validation folds (cv_folds).
    FOLDS: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.metric not in self.METRICS:
            raise ValueError(f"metric must be one of {', '.join(self.METRICS)}, got {self.metric!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_device_spec(self.device)
        for name in ("epochs", "evals_per_epoch", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.models_in_memory, bool) or not isinstance(self.models_in_memory, int) \
                or self.models_in_memory < 1:
            raise ValueError(f"models_in_memory must be an integer >= 1, got {self.models_in_memory!r}")
        if self.micro_batch_size is not None and (
                isinstance(self.micro_batch_size, bool) or not isinstance(self.micro_batch_size, int)
                or self.micro_batch_size < 1):
            raise ValueError(f"micro_batch_size must be an integer >= 1 or null, got {self.micro_batch_size!r}")
        if (isinstance(self.max_grad_norm, bool) or not isinstance(self.max_grad_norm, int | float)
                or self.max_grad_norm < 0):
            raise ValueError(f"max_grad_norm must be a number >= 0, got {self.max_grad_norm!r}")
        if (isinstance(self.prefix_cache_mb, bool) or not isinstance(self.prefix_cache_mb, int)
                or self.prefix_cache_mb < 0):
            raise ValueError(f"prefix_cache_mb must be an integer >= 0, got {self.prefix_cache_mb!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a name, directory or hub id, got {self.model!r}")
        if self.cv_folds is not None and (
                isinstance(self.cv_folds, bool) or not isinstance(self.cv_folds, int)
                or not 2 <= self.cv_folds <= 20):
            raise ValueError(f"cv_folds must be an integer in [2, 20] or null, got {self.cv_folds!r}")
        if self.cv_folds is not None and not self.FOLDS:
            raise ValueError("cv_folds: this objective has one validation split (folds: "
                             "text_classification only); remove cv_folds")
        for key in ("cache_dir", "checkpoint_dir"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key} must be a directory path or null, got {value!r}")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"deterministic must be true or false, got {self.deterministic!r}")

    @property
    def minimize(self) -> bool:
        return self.METRICS[self.metric] == "minimize"

    @classmethod
    def _convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Turn nested mappings into their dataclasses (tasks override)."""
        return d

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        """Build from a config mapping; unknown keys are errors."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"unknown key {key!r} (valid: {', '.join(sorted(known))})")
        return cls(**cls._convert(dict(d)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able mapping that round-trips through :meth:`from_dict`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out
