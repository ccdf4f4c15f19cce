"""The hyperparameters of a trial: one typed, validated, frozen dataclass (peft's config style).

Each field is a hyperparameter a search space may sample, named after what it sets, with its
default (used when the space does not sample it), its type, its valid range or choices and a
help text. Two checks use the same fields:

- :meth:`TrainParams.check_distribution` when the search space is loaded: an unknown name, a
  float range or a choice like 8.9 for an integer hyperparameter, a range outside the valid one
  or an unknown choice is refused before any trial runs;
- :meth:`TrainParams.from_params` when a trial starts: the sampled values on top of the
  defaults, checked the same way.

Tasks add their own hyperparameters by subclassing (a dataclass field per hyperparameter).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import ClassVar
from typing import TypeVar

__all__ = ["TrainParams", "hp"]

_P = TypeVar("_P", bound="TrainParams")
_LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules")


def hp(
    default: Any,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    integer: bool = False,
    optional: bool = False,
) -> Any:
    """A hyperparameter field: default, valid range (``low``..``high``, ``low_open`` excludes
    ``low``) or ``choices``, ``integer`` for counts, ``optional`` when None is valid."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "choices": choices,
            "integer": integer, "optional": optional}
    return field(default=default, metadata=meta)


def _describe(meta: dict[str, Any]) -> str:
    if meta["choices"] is not None:
        return "one of " + ", ".join(map(str, meta["choices"]))
    lo = "(" if meta["low_open"] else "["
    hi = "inf" if meta["high"] is None else f"{meta['high']:g}"
    kind = "an integer" if meta["integer"] else "a number"
    return f"{kind} in {lo}{meta['low']:g}, {hi}]" + (" or null" if meta["optional"] else "")


@dataclass(frozen=True)
class TrainParams:
    """The hyperparameters every task knows.

    Example:
        >>> p = TrainParams.from_params({"learning_rate": 3e-5, "batch_size": 16})
        >>> p.batch_size, p.finetuning
        (16, 'full')
    """

    learning_rate: float = hp(5e-5, low=0.0, high=1.0, low_open=True,
                              help="AdamW peak learning rate")
    batch_size: int = hp(32, low=1, high=65536, integer=True,
                         help="training examples per optimizer step")
    freeze_layers: int = hp(0, low=0, high=None, integer=True,
                            help="bottom layers (blocks) frozen with the embeddings; 0: none")
    weight_decay: float = hp(0.0, low=0.0, high=1.0,
                             help="AdamW decoupled weight decay (not on biases and norms)")
    dropout: float | None = hp(None, low=0.0, high=0.95, optional=True,
                               help="dropout of the trainable layers and the head; null: the "
                               "model's own")
    warmup_ratio: float = hp(0.0, low=0.0, high=1.0,
                             help="share of optimizer steps with linear warmup")
    lr_scheduler_type: str = hp("linear", choices=("linear", "cosine", "constant"),
                                help="learning-rate schedule after warmup")
    finetuning: str = hp("full", choices=("full", "lora"),
                         help="full fine-tuning or LoRA (implied when a LoRA key is sampled)")
    r: int = hp(8, low=1, high=1024, integer=True, help="LoRA rank")
    lora_alpha: float = hp(16, low=0.0, high=4096, low_open=True, help="LoRA scaling numerator")
    lora_dropout: float = hp(0.1, low=0.0, high=0.95, help="dropout on LoRA's input")
    target_modules: str | None = hp(
        None, optional=True,
        help="comma-separated module names for LoRA (e.g. 'query,value'), 'all-linear', or "
        "null: peft's default for the model type")
    unfreeze_every: int = hp(0, low=0, high=1000, integer=True,
                             help="gradual unfreezing: start with the top layer trainable and "
                             "unfreeze one more layer every this many evaluations, down to "
                             "freeze_layers; 0: off")
    layer_decay: float = hp(1.0, low=0.0, high=1.0, low_open=True,
                            help="layer-wise learning-rate decay: each layer below the top gets "
                            "the rate of the layer above times this (embeddings one more); 1: off")

    # Hyperparameters whose value is the model's business (checked against its structure).
    MODEL_CHECKED: ClassVar[tuple[str, ...]] = ("freeze_layers", "target_modules")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _meta(cls, name: str) -> dict[str, Any]:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return dict(f.metadata)
        raise ValueError(
            f"{name}: not a hyperparameter of this objective (known: {', '.join(sorted(cls.names()))})"
        )

    @classmethod
    def check_value(cls, name: str, value: Any) -> Any:
        """``value`` if it is valid for hyperparameter ``name``.

        Raises:
            ValueError: naming the hyperparameter, the value and what would be valid.
        """
        meta = cls._meta(name)
        if value is None:
            if meta["optional"]:
                return None
            raise ValueError(f"{name}: null is not valid ({_describe(meta)})")
        if meta["choices"] is not None:
            if value not in meta["choices"] or isinstance(value, bool) != isinstance(
                meta["choices"][0], bool
            ):
                raise ValueError(f"{name}: {value!r} is not valid ({_describe(meta)})")
            return value
        if meta["low"] is None:  # free-form (a string checked against the model)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: expected {_describe(meta)}, got {value!r}")
        if meta["integer"] and not isinstance(value, int):
            raise ValueError(
                f"{name}: an integer hyperparameter, got {value!r} (use type int, or "
                "categorical choices that are integers)"
            )
        low, high = meta["low"], meta["high"]
        if (not math.isfinite(value) or value < low or (meta["low_open"] and value == low)
                or (high is not None and value > high)):
            raise ValueError(f"{name}: {value!r} is outside the valid range ({_describe(meta)})")
        return value

    @classmethod
    def check_distribution(cls, name: str, dist: Any) -> None:
        """Check a search-space entry (an optuna distribution) for hyperparameter ``name``.

        Raises:
            ValueError: an unknown name, a float distribution for an integer hyperparameter, a
                numeric range for a hyperparameter with choices, or a value outside its range.
        """
        from optuna.distributions import CategoricalDistribution
        from optuna.distributions import FloatDistribution

        meta = cls._meta(name)
        if isinstance(dist, CategoricalDistribution):
            for choice in dist.choices:
                cls.check_value(name, choice)
            return
        if meta["choices"] is not None or meta["low"] is None:
            raise ValueError(
                f"{name}: takes {_describe(meta) if meta['choices'] else 'strings'}: use "
                "type: categorical with choices"
            )
        if meta["integer"] and isinstance(dist, FloatDistribution):
            raise ValueError(
                f"{name}: an integer hyperparameter cannot be sampled from a float range "
                f"({dist.low:g}..{dist.high:g}); use type: int, or categorical integer choices"
            )
        cls.check_value(name, dist.low)
        cls.check_value(name, dist.high)

    @classmethod
    def from_params(cls: type[_P], params: dict[str, Any]) -> _P:
        """The sampled ``params`` on top of the defaults, each checked.

        LoRA is implied when the space samples a LoRA key (``r``, ``lora_alpha``, ...) but not
        ``finetuning``.

        Raises:
            ValueError: an unknown name or an invalid value (see :meth:`check_value`).
        """
        values = {name: cls.check_value(name, value) for name, value in params.items()}
        if "finetuning" not in params and any(k in params for k in _LORA_KEYS):
            values["finetuning"] = "lora"
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter's value (JSON-able)."""
        return dataclasses.asdict(self)

    @property
    def lora(self) -> bool:
        return self.finetuning == "lora"
