"""Fine-tune a pretrained encoder for text classification: the default objective.

The sampled params feed the training directly, named after what they set:

========================  ==============================================================
``learning_rate``         AdamW peak learning rate
``batch_size``            training examples per optimizer step
``freeze_layers``         bottom encoder layers frozen with the embeddings (0: full
                          fine-tuning). Frozen modules run in eval mode: no dropout.
``weight_decay``          AdamW decoupled weight decay (not on biases and LayerNorm)
``dropout``               dropout of the trainable layers and the classifier
``warmup_ratio``          share of optimizer steps with linear warmup, then linear decay
``lr_scheduler_type``     ``linear`` (default), ``cosine`` or ``constant``
``finetuning``            ``full`` or ``lora`` (LoRA is implied when ``r`` is sampled)
``r``, ``lora_alpha``,    LoRA rank, scaling and dropout (peft ``LoraConfig``)
``lora_dropout``
``target_modules``        comma-separated module names for LoRA, e.g. ``"query,value"``
========================  ==============================================================
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from typing import Any
from typing import Literal

import optuna

from objectives.data import DatasetConfig
from objectives.data import data_fingerprint
from objectives.data import load_splits

__all__ = [
    "DEFAULT_PARAMS",
    "METRICS",
    "TextClassificationConfig",
    "objective",
    "prepare",
    "validate_space",
]

METRICS = {"val_loss": "minimize", "val_accuracy": "maximize", "val_f1": "maximize"}

# Values used for hyperparameters the search space does not sample.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "batch_size": 32,
    "freeze_layers": 0,
    "weight_decay": 0.0,
    "dropout": None,  # None: keep the model's own dropout
    "warmup_ratio": 0.0,
    "lr_scheduler_type": "linear",
    "finetuning": "full",
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "target_modules": "query,value",
}
_RANGES: dict[str, tuple[float, float]] = {
    "learning_rate": (0.0, 1.0),
    "batch_size": (1, 4096),
    "weight_decay": (0.0, 1.0),
    "dropout": (0.0, 0.95),
    "warmup_ratio": (0.0, 1.0),
    "r": (1, 1024),
    "lora_alpha": (1, 4096),
    "lora_dropout": (0.0, 0.95),
}
_CHOICES = {
    "lr_scheduler_type": ("linear", "cosine", "constant"),
    "finetuning": ("full", "lora"),
}


@dataclass(frozen=True)
class TextClassificationConfig:
    """Fixed settings of a text-classification study (everything that is not searched)."""

    model: str = field(
        default="minilm",
        metadata={"help": "'minilm' (packaged all-MiniLM-L6-v2), a local directory or a hub id"},
    )
    dataset: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(name="rotten_tomatoes"),
        metadata={"help": "built-in dataset name or local files"},
    )
    max_length: int = field(default=64, metadata={"help": "tokens per text; longer ones are cut"})
    epochs: int = field(default=2, metadata={"help": "passes over the training split"})
    evals_per_epoch: int = field(
        default=2, metadata={"help": "validation passes (fidelity steps) per epoch"}
    )
    metric: Literal["val_loss", "val_accuracy", "val_f1"] = field(
        default="val_loss", metadata={"help": "validation metric reported, pruned on and returned"}
    )
    seed: int = field(default=0, metadata={"help": "seed of splits, initialization and order"})
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto",
        metadata={
            "help": "bf16: autocast to bfloat16; auto: bf16 where this machine's CPU runs it "
            "natively (AVX512-BF16 or AMX), else fp32"
        },
    )
    eval_batch_size: int = field(default=128, metadata={"help": "examples per evaluation batch"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0: none"})
    prefix_cache_mb: int = field(
        default=1024,
        metadata={"help": "memory for frozen-layer outputs kept across trials (MiB); 0: none"},
    )
    cache_dir: str | None = field(
        default=".hpo_cache", metadata={"help": "on-disk token cache directory; null: none"}
    )
    checkpoint_dir: str | None = field(
        default=None,
        metadata={
            "help": "directory all workers reach; each fidelity step is checkpointed there and "
            "a retried trial resumes from it. null: no checkpoints"
        },
    )
    deterministic: bool = field(
        default=False, metadata={"help": "torch deterministic algorithms (slower)"}
    )

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(
                f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}"
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        for name in ("max_length", "epochs", "evals_per_epoch", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextClassificationConfig:
        """Build from a config mapping; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown key {key!r} (valid: {', '.join(sorted(known))})")
        d = dict(d)
        if "dataset" in d:
            ds = d["dataset"]
            if isinstance(ds, str):
                ds = {"name": ds}
            if not isinstance(ds, dict):
                raise ValueError(f"dataset must be a mapping or a built-in name, got {ds!r}")
            d["dataset"] = DatasetConfig.from_dict(ds)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able mapping that round-trips through :meth:`from_dict`."""
        out = asdict(self)
        out["dataset"] = self.dataset.to_dict()
        return out


def prepare(cfg: TextClassificationConfig) -> dict[str, Any]:
    """Load the data once (checking it) and return its fingerprint and split info."""
    splits = load_splits(cfg.dataset, cfg.seed)
    return {"data_fingerprint": splits.fingerprint, "data": splits.info}


def fingerprint(cfg: TextClassificationConfig) -> str:
    """The data fingerprint without loading the data."""
    return data_fingerprint(cfg.dataset, cfg.seed)


def _model_layers(cfg: TextClassificationConfig) -> tuple[int, set[str]]:
    from objectives.models import quiet_transformers
    from objectives.models import resolve_model_path

    quiet_transformers()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(cfg.model))
    except OSError as exc:
        raise ValueError(
            f"model {cfg.model!r}: not a local model directory and not reachable as a hub id "
            f"({str(exc).splitlines()[0]})"
        ) from None
    n = int(getattr(config, "num_hidden_layers", 0) or 0)
    model_type = getattr(config, "model_type", "")
    modules = {"query", "key", "value", "dense"} if model_type in ("bert", "roberta") else set()
    return n, modules


def validate_space(cfg: TextClassificationConfig, distributions: dict[str, Any]) -> None:
    """Check every sampled hyperparameter's name and range, including against the model.

    Raises:
        ValueError: naming the parameter, e.g. a freezing depth beyond the model's layers.
    """
    from optuna.distributions import CategoricalDistribution

    for name, dist in distributions.items():
        if name not in DEFAULT_PARAMS:
            raise ValueError(
                f"{name}: not a hyperparameter of text_classification "
                f"(known: {', '.join(sorted(DEFAULT_PARAMS))})"
            )
        values = (
            list(dist.choices)
            if isinstance(dist, CategoricalDistribution)
            else [dist.low, dist.high]
        )
        if name in _CHOICES:
            for v in values:
                if v not in _CHOICES[name]:
                    raise ValueError(
                        f"{name}: {v!r} is not valid (valid: {', '.join(_CHOICES[name])})"
                    )
        elif name in _RANGES:
            lo, hi = _RANGES[name]
            for v in values:
                if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
                    raise ValueError(f"{name}: {v!r} is outside [{lo}, {hi}]")
        if name == "learning_rate" and min(values) <= 0:
            raise ValueError(f"learning_rate: must be > 0, got {min(values)!r}")
    if "freeze_layers" in distributions or "target_modules" in distributions:
        n_layers, modules = _model_layers(cfg)
        if "freeze_layers" in distributions:
            dist = distributions["freeze_layers"]
            values = (
                list(dist.choices)
                if isinstance(dist, CategoricalDistribution)
                else [dist.low, dist.high]
            )
            for v in values:
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= n_layers:
                    raise ValueError(
                        f"freeze_layers: {v!r} is beyond the model's {n_layers} encoder layers "
                        f"(valid: 0..{n_layers})"
                    )
        if "target_modules" in distributions and modules:
            for choice in distributions["target_modules"].choices:
                for part in str(choice).split(","):
                    if part.strip() not in modules:
                        raise ValueError(
                            f"target_modules: {part.strip()!r} is not a module of {cfg.model!r} "
                            f"(valid: {', '.join(sorted(modules))})"
                        )


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """The sampled params on top of :data:`DEFAULT_PARAMS`; LoRA when ``r`` was sampled."""
    hp = {**DEFAULT_PARAMS, **params}
    if "finetuning" not in params and "r" in params:
        hp["finetuning"] = "lora"
    return hp


def objective(
    trial: optuna.Trial, params: dict[str, Any], cfg: TextClassificationConfig
) -> float:
    """Fine-tune with ``params``; report ``cfg.metric`` at each fidelity step; return its best."""
    from objectives.models import get_resources
    from objectives.training import fine_tune

    splits = load_splits(cfg.dataset, cfg.seed)
    res = get_resources(cfg.model, splits, cfg.max_length, cfg.cache_dir, cfg.prefix_cache_mb)
    return fine_tune(trial, resolve_params(params), cfg, res)
