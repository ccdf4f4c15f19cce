"""The final model of a study: retrain one configuration, test it once, save it (any task).

The retrain repeats the search's run of that configuration (same order of examples, batches
and learning-rate schedule, planned for the full number of epochs) and stops after
``n_examples`` training examples: the point where its validation value was best. With
``include_validation`` it trains on train + validation for the same number of examples and the
same schedule. Each seed's model is evaluated exactly once on the test split; the first seed's
model is the one saved. It calls the training core directly (no study).

Each task's ``export`` function (e.g. :func:`objectives.text_classification.export`) calls
:func:`retrain` with its own test and returns a :class:`FinalResult` that says how to present
itself: which test metrics to summarize, extra model-card lines, how to load the model. The
study side (``hpo export``) writes the files. This module never imports ``hpo``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

if TYPE_CHECKING:
    from objectives.core import Task
    from objectives.params import TrainParams

__all__ = ["FinalResult", "SeedResult", "retrain", "save_model"]

_LOG = logging.getLogger("hpo.objectives")


@dataclass
class SeedResult:
    """One seed's retrain and its single test evaluation."""

    seed: int
    test: dict[str, Any]  # the task's test metrics (and extras: per-class table, samples...)
    examples_seen: int  # training examples the model was trained on
    train_seconds: float
    # The retrained model's validation metrics at the stop (None when validation was trained on).
    validation: dict[str, float] | None = None


@dataclass
class FinalResult:
    """Every seed's result, the data the model was trained on, what was saved and how the task
    presents it."""

    seeds: list[SeedResult]
    data: dict[str, Any]  # the splits' info: source, fingerprint, sizes, class counts
    trained_on: str  # "train" or "train+validation"
    n_examples: int  # training examples per seed
    params: dict[str, Any]  # every hyperparameter used (sampled ones and defaults)
    task: str = "text-classification"  # the model card's pipeline tag
    summary_metrics: tuple[str, ...] = ("accuracy", "macro_f1", "loss")  # given as mean ± std
    label_names: list[str] | None = None
    saved: str | None = None  # "model", "lora-adapter" or "merged-lora"; None: nothing saved
    precision: str | None = None  # what the retrain and test ran with (auto resolved)
    device: str | None = None
    card: list[str] = field(default_factory=list)  # the task's model-card lines (markdown)
    load: list[str] = field(default_factory=list)  # python lines that load the saved model
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Mean, standard deviation (n - 1 in the denominator; 0 for one seed) and each seed's
        value of every summary metric."""
        out = {}
        for name in self.summary_metrics:
            values = [float(s.test[name]) for s in self.seeds]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            out[name] = {"mean": float(np.mean(values)), "std": std, "values": values}
        return out


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_model(model: Any, tokenizer: Any, directory: Path, merge: bool = False) -> str:
    """Save a trained model (or its LoRA adapter, or the merged model) with its tokenizer (or
    image processor; None: none).

    Returns:
        What was saved: ``"model"`` (load with the task's ``AutoModelFor...``),
        ``"lora-adapter"`` (load with peft's ``AutoPeftModelFor...``) or ``"merged-lora"`` (a
        plain model with the adapter merged in).
    """
    import warnings

    model.eval()
    kind = "model"
    if _is_peft(model):
        kind = "lora-adapter"
        if merge:
            with warnings.catch_warnings():
                # peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing`.
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                model = model.merge_and_unload()
            kind = "merged-lora"
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return kind


def retrain(
    make_task: Callable[[int], Task],
    params: TrainParams,
    test: Callable[[Any, Task], dict[str, Any]],
    *,
    n_examples: int,
    seeds: Sequence[int],
    include_validation: bool,
    output_dir: str | Path | None,
    merge: bool,
    tokenizer: Any,
    result: FinalResult,
) -> FinalResult:
    """Retrain ``params`` for ``n_examples`` training examples with each seed; test each once.

    Args:
        make_task: the task for a training seed (the data splits stay the study's).
        test: the one evaluation on the test split: metrics and extras, with ``n_examples``.
        output_dir: an existing directory for the first seed's model; None saves nothing.
        tokenizer: saved with the model.
        result: what the task knows already (data, labels, presentation); seeds are added.

    Raises:
        ValueError: no seed, or ``n_examples`` beyond the planned training.
    """
    from objectives.core import train

    if not seeds:
        raise ValueError("give at least one seed")
    trained_on = "train+validation" if include_validation else "train"
    for i, seed in enumerate(seeds):
        task = make_task(int(seed))
        planned = task.config.epochs * len(task.examples("train"))
        if not 0 < n_examples <= planned:
            raise ValueError(
                f"n_examples must be in [1, {planned}] (epochs x training rows), got {n_examples}")
        t0 = time.perf_counter()
        trained = train(params, task, stop_at=n_examples, train_on=trained_on, keep_model=True)
        seconds = time.perf_counter() - t0
        result.precision, result.device = trained.record.precision, trained.record.device
        model = trained.model
        scores = test(model, task)
        validation = None
        if not include_validation:
            validation = {k: float(v) for k, v in trained.record.history[-1].metrics.items()}
        result.seeds.append(SeedResult(
            seed=int(seed), test=scores, examples_seen=int(trained.record.examples_seen or 0),
            train_seconds=round(seconds, 3), validation=validation,
        ))
        shown = ", ".join(f"{k} {scores[k]:.4f}" for k in result.summary_metrics if k in scores)
        _LOG.info("seed %d: trained on %d examples (%s) in %.1f s; test %s", seed, n_examples,
                  trained_on, seconds, shown)
        if i == 0 and output_dir is not None:
            result.saved = save_model(model, tokenizer, Path(output_dir), merge)
        del model, trained
    result.trained_on, result.n_examples = trained_on, n_examples
    return result
