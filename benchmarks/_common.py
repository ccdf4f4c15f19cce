"""Shared helpers of the benchmarks: data, the HF ``Trainer`` baseline, goal lines, machine load.

Every benchmark measures ours and its baseline in the same process, interleaved, and reports
ratios: the machines are shared, so absolute times move with the load, ratios much less.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET = "rotten_tomatoes"
MAX_LENGTH = 64
# What every trial uses unless a benchmark says otherwise (the model's own dropout, no decay).
BASE_PARAMS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "batch_size": 32,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "dropout": None,
    "lr_scheduler_type": "linear",
}


# --- reporting ----------------------------------------------------------------------------


def parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The command line every benchmark script has: its docstring's first line and ``--quick``."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    out.add_argument("--quick", action="store_true", help=quick_help)
    return out


def goal_line(name: str, measured: str, target: str, met: bool) -> str:
    """The one line per goal that ``python -m benchmarks`` prints (the format is fixed)."""
    return f"GOAL {name}: {measured} (target {target}) {'MET' if met else 'NOT MET'}"


def load_average() -> str:
    """1/5/15-minute load averages and the core count: how shared the machine was."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def header(title: str, quick: bool) -> None:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    import torch

    log(f"== {title} ({'quick' if quick else 'full'}) {now} {platform.node()} "
        f"torch threads {torch.get_num_threads()}, {load_average()}")


def log(message: str) -> None:
    print(message, flush=True)


def save_json(name: str, payload: dict[str, Any]) -> Path | None:
    """Write raw results to ``$HPO_BENCH_OUT/<name>.json`` when that directory is set."""
    out = os.environ.get("HPO_BENCH_OUT")
    if not out:
        return None
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "load_end": load_average(),
               "when": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --- environment --------------------------------------------------------------------------


def quiet() -> None:
    """Silence transformers, datasets and optuna; warnings from libraries stay out of figures."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import optuna
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def set_threads(n: int | None = None) -> int:
    """One process on the machine: all its cores (what both sides would use)."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)


# --- data and configs ---------------------------------------------------------------------


def dataset_config(max_examples: int, name: str = DATASET) -> Any:
    from objectives.data import DatasetConfig

    return DatasetConfig(name=name, max_examples=max_examples)


def text_config(max_examples: int, **overrides: Any) -> Any:
    """Our objective's config on Rotten Tomatoes with ``max_examples`` rows (70/15/15 split)."""
    from objectives.text_classification import TextClassificationConfig

    values: dict[str, Any] = {
        "model": "minilm",
        "dataset": {"name": DATASET, "max_examples": max_examples},
        "max_length": MAX_LENGTH,
        "epochs": 2,
        "evals_per_epoch": 2,
        "cache_dir": None,
        "precision": "fp32",  # as HF Trainer's default; benchmarks.precision measures bf16
        **overrides,
    }
    return TextClassificationConfig.from_dict(values)


def model_path() -> str:
    from objectives.models import resolve_model_path

    return resolve_model_path("minilm")


@dataclass
class HFData:
    """The same splits as ours, tokenized the way a Trainer user would (no padding: the collator
    pads each batch to its longest example)."""

    tokenizer: Any
    train: Any
    validation: Any
    label_names: list[str]


def hf_data(max_examples: int, seed: int = 0, name: str = DATASET) -> HFData:
    from transformers import AutoTokenizer

    from objectives.data import load_splits

    splits = load_splits(dataset_config(max_examples, name), seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path())

    def tok(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)

    train = splits.train.map(tok, batched=True, remove_columns=["text"])
    validation = splits.validation.map(tok, batched=True, remove_columns=["text"])
    return HFData(tokenizer, train, validation, list(splits.label_names))


def hf_model(
    n_labels: int,
    freeze_layers: int = 0,
    lora: bool = False,
    dropout: float | None = None,
) -> Any:
    """The packaged MiniLM as a Trainer user builds it: frozen modules only get
    ``requires_grad=False`` and stay in train mode (the Trainer calls ``model.train()``)."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {}
    if dropout is not None:
        kwargs = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
                  "classifier_dropout": dropout}
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path(), num_labels=n_labels, **kwargs
    )
    if freeze_layers:
        base = model.base_model
        for m in [base.embeddings, *list(base.encoder.layer)[:freeze_layers]]:
            m.requires_grad_(False)
    if lora:
        from peft import LoraConfig
        from peft import TaskType
        from peft import get_peft_model

        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                            target_modules=["query", "value"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(model, config)
    return model


def hf_args(output_dir: str, **overrides: Any) -> Any:
    """TrainingArguments a fair user would write: no logging integrations, no checkpoints."""
    from transformers import TrainingArguments

    values: dict[str, Any] = {
        "output_dir": output_dir,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "per_device_eval_batch_size": 128,  # ours evaluates in batches of 128 too
        "use_cpu": True,
        "label_names": ["labels"],
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(**values)


def accuracy_metrics(eval_pred: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def trainer_callback(on: Callable[[str, Any, Any], None]) -> Any:
    """A ``TrainerCallback`` that calls ``on(event, state, metrics)`` at epoch ends and evals."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            on("epoch_begin", state, None)

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            on("epoch_end", state, None)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            on("evaluate", state, kw.get("metrics"))

    return Recorder()


# --- our objective, called directly -----------------------------------------------------


def trial_for(pruner: Any = None) -> Any:
    """A fresh trial of an in-memory study (no pruning unless ``pruner`` says so)."""
    import optuna

    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        pruner=pruner or optuna.pruners.NopPruner(),
    )
    return study, study.ask()


@contextlib.contextmanager
def eval_clock() -> Iterator[list[tuple[float, float, float]]]:
    """Record (start, end, accuracy) of each evaluation inside our training loop."""
    from objectives import core

    events: list[tuple[float, float, float]] = []
    original = core.evaluate

    def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = original(*args, **kwargs)
        events.append((t0, time.perf_counter(), result["val_accuracy"]))
        return result

    core.evaluate = timed_evaluate
    try:
        yield events
    finally:
        core.evaluate = original


def python() -> str:
    return sys.executable
