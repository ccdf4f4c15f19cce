"""The final model of a study: retrain one configuration, test it once, save it.

The retrain repeats the search's run of that configuration (same order of examples, batches
and learning-rate schedule, planned for the full number of epochs) and stops after
``n_examples`` training examples: the point where its validation value was best. With
``include_validation`` it trains on train + validation for the same number of examples and the
same schedule. Each seed's model is evaluated exactly once on the test split; the first seed's
model is the one saved.

This module never imports ``hpo``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from objectives.metrics import classification_metrics

if TYPE_CHECKING:
    from objectives.text_classification import TextClassificationConfig

__all__ = ["FinalResult", "SeedResult", "classification_metrics", "retrain_and_test", "save_model"]

_LOG = logging.getLogger("hpo.objectives")
SUMMARY_METRICS = ("accuracy", "macro_f1", "loss")


@dataclass
class SeedResult:
    """One seed's retrain and its single test evaluation."""

    seed: int
    test: dict[str, Any]  # accuracy, macro_f1, loss, per_class, confusion_matrix
    examples_seen: int  # training examples the model was trained on
    train_seconds: float
    # The retrained model's validation metrics at the stop (None when validation was trained on).
    validation: dict[str, float] | None = None


@dataclass
class FinalResult:
    """Every seed's result, the data the model was trained on, and what was saved."""

    seeds: list[SeedResult]
    label_names: list[str]
    data: dict[str, Any]  # the splits' info: source, fingerprint, sizes, class counts
    trained_on: str  # "train" or "train+validation"
    n_examples: int  # training examples per seed
    params: dict[str, Any]  # every hyperparameter used (sampled ones and defaults)
    saved: str | None = None  # "model", "lora-adapter" or "merged-lora"; None: nothing saved
    precision: str | None = None  # what the retrain and test ran with (auto resolved)
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Mean, standard deviation (n - 1 in the denominator; 0 for one seed) and each seed's
        value of the test accuracy, macro-F1 and loss."""
        out = {}
        for name in SUMMARY_METRICS:
            values = [float(s.test[name]) for s in self.seeds]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            out[name] = {"mean": float(np.mean(values)), "std": std, "values": values}
        return out


def _test(model: Any, task: Any) -> dict[str, Any]:
    """The one evaluation on the held-out test split."""
    from objectives.core import outputs
    from objectives.devices import Precision
    from objectives.devices import resolve_precision

    device = task.res.device
    precision = Precision(resolve_precision(task.config.precision, device), device)
    out = outputs(model, task, "test", device, precision)
    labels, preds = np.asarray(out["label"]), np.asarray(out["pred"])
    return {
        "loss": out["loss_sum"] / max(out["units"], 1),
        **classification_metrics(labels, preds, task.res.splits.label_names),
        "n_examples": len(labels),
    }


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_model(model: Any, tokenizer: Any, directory: Path, merge: bool = False) -> str:
    """Save a trained model (or its LoRA adapter, or the merged model) with its tokenizer.

    Returns:
        What was saved: ``"model"`` (load with ``AutoModelForSequenceClassification``),
        ``"lora-adapter"`` (load with peft's ``AutoPeftModelForSequenceClassification``) or
        ``"merged-lora"`` (a plain model with the adapter merged in).
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
    tokenizer.save_pretrained(directory)
    return kind


def retrain_and_test(
    cfg: TextClassificationConfig,
    params: dict[str, Any],
    *,
    n_examples: int,
    seeds: Sequence[int],
    include_validation: bool = False,
    output_dir: str | Path | None = None,
    merge: bool = False,
) -> FinalResult:
    """Retrain ``params`` for ``n_examples`` training examples with each seed; test each once.

    The data splits always come from ``cfg.seed`` (the study's splits); each seed changes the
    training only (initial order, batches, dropout). The first seed's model is saved to
    ``output_dir`` (when given) before the next seed trains.

    Args:
        cfg: the study's objective config.
        params: the trial's sampled params (defaults fill the rest).
        n_examples: training examples to train on (the trial's ``best_step``).
        seeds: training seeds; the first one's model is saved.
        include_validation: train on train + validation (the validation value then says
            nothing and is not recorded).
        output_dir: an existing directory for the model and tokenizer; None saves nothing.
        merge: for LoRA, save the merged model instead of the adapter.

    Raises:
        ValueError: no seed, or ``n_examples`` beyond the planned training.
    """
    from objectives.core import train
    from objectives.params import TrainParams
    from objectives.text_classification import TextClassificationTask
    from objectives.text_classification import task_for

    if not seeds:
        raise ValueError("give at least one seed")
    task = task_for(cfg)
    planned = cfg.epochs * len(task.examples("train"))
    if not 0 < n_examples <= planned:
        raise ValueError(f"n_examples must be in [1, {planned}] (epochs x training rows), got {n_examples}")
    hp = TrainParams.from_params(params)
    trained_on = "train+validation" if include_validation else "train"
    result = FinalResult(
        seeds=[], label_names=list(task.res.splits.label_names), data=task.res.splits.info,
        trained_on=trained_on, n_examples=n_examples, params=hp.to_dict(),
    )
    for i, seed in enumerate(seeds):
        # Checkpoints belong to trials of the search, not to this retrain.
        run = TextClassificationTask(dataclasses.replace(cfg, seed=int(seed), checkpoint_dir=None),
                                     task.res)
        t0 = time.perf_counter()
        trained = train(hp, run, stop_at=n_examples, train_on=trained_on, keep_model=True)
        seconds = time.perf_counter() - t0
        result.precision, result.device = trained.record.precision, trained.record.device
        model = trained.model
        test = _test(model, run)
        validation = None
        if not include_validation:
            last = trained.record.history[-1].metrics
            validation = {k: float(last[k]) for k in ("val_loss", "val_accuracy", "val_f1")}
        result.seeds.append(SeedResult(
            seed=int(seed), test=test, examples_seen=trained.record.examples_seen,
            train_seconds=round(seconds, 3), validation=validation,
        ))
        _LOG.info("seed %d: trained on %d examples (%s) in %.1f s; test accuracy %.4f, "
                  "macro-F1 %.4f", seed, n_examples, trained_on, seconds, test["accuracy"],
                  test["macro_f1"])
        if i == 0 and output_dir is not None:
            result.saved = save_model(model, task.res.tokenizer, Path(output_dir), merge)
        del model, trained
    return result
