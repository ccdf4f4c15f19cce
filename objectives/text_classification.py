"""Fine-tune a pretrained encoder (or decoder) for text classification: the default objective.

The hyperparameters are :class:`objectives.params.TrainParams` (learning rate, batch size,
freezing depth, weight decay, dropout, warmup, schedule, full or LoRA fine-tuning with its rank,
alpha, dropout and target modules). Any ``AutoModelForSequenceClassification`` works: freezing
and LoRA targets come from the model's structure (:mod:`objectives.structure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.config import TrainConfig
from objectives.data import DatasetConfig
from objectives.data import data_fingerprint
from objectives.data import load_splits
from objectives.params import TrainParams
from objectives.params import hp

if TYPE_CHECKING:
    import optuna
    import torch

    from objectives.core import Batch
    from objectives.models import Resources

__all__ = [
    "METRICS",
    "TextClassificationConfig",
    "TextClassificationTask",
    "TextParams",
    "augment_ids",
    "objective",
    "prepare",
    "validate_space",
]

METRICS = {"val_loss": "minimize", "val_accuracy": "maximize", "val_f1": "maximize"}


@dataclass(frozen=True)
class TextParams(TrainParams):
    """The hyperparameters of text tasks (classification, regression): every task's, plus
    word-level augmentation of the training texts."""

    word_dropout: float = hp(0.0, low=0.0, high=0.5,
                             help="probability of dropping each word of a training text (one "
                             "word always stays); 0: off")
    random_swap: float = hp(0.0, low=0.0, high=0.5,
                            help="probability of swapping each word of a training text with "
                            "another word of it; 0: off")

    @property
    def augmented(self) -> bool:
        return self.word_dropout > 0 or self.random_swap > 0


def word_starts(tokenizer: Any) -> np.ndarray:
    """For each token id, whether it begins a word: WordPiece marks continuations (``##``),
    byte-level BPE and SentencePiece mark beginnings (``Ġ``, ``▁``); otherwise every token is a
    word. Special tokens are marked too (they are never moved or dropped)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens = [t if isinstance(t, str) else "" for t in tokens]
    if any(t.startswith("##") for t in tokens):
        starts = np.array([not t.startswith("##") for t in tokens])
    elif sum(t.startswith(("\u0120", "\u2581")) for t in tokens) > len(tokens) // 10:
        starts = np.array([t.startswith(("\u0120", "\u2581")) for t in tokens])
    else:
        starts = np.ones(len(tokens), dtype=bool)
    return starts


def augment_ids(ids: np.ndarray, starts: np.ndarray, special: set[int],
                rng: np.random.Generator, word_dropout: float, random_swap: float) -> np.ndarray:
    """One training text's token ids with words dropped and swapped (EDA's random deletion and
    random swap, on words of word pieces). The leading and trailing special tokens stay.

    Args:
        starts: per token id, whether it begins a word (see :func:`word_starts`).
        special: the tokenizer's special token ids.
    """
    lo, hi = 0, len(ids)
    while lo < hi and int(ids[lo]) in special:
        lo += 1
    while hi > lo and int(ids[hi - 1]) in special:
        hi -= 1
    words: list[list[int]] = []
    for t in ids[lo:hi].tolist():
        if not words or (t < len(starts) and starts[t]) or t >= len(starts):
            words.append([t])
        else:
            words[-1].append(t)
    if len(words) < 2:
        return ids
    if word_dropout > 0:
        keep = rng.random(len(words)) >= word_dropout
        if not keep.any():
            keep[rng.integers(len(words))] = True
        words = [w for w, k in zip(words, keep, strict=True) if k]
    if random_swap > 0 and len(words) > 1:
        for i in np.flatnonzero(rng.random(len(words)) < random_swap).tolist():
            j = int(rng.integers(len(words) - 1))
            j += j >= i  # another word
            words[i], words[j] = words[j], words[i]
    middle = [t for w in words for t in w]
    return np.concatenate([ids[:lo], np.asarray(middle, dtype=ids.dtype), ids[hi:]])


@dataclass(frozen=True)
class TextClassificationConfig(TrainConfig):
    """Fixed settings of a text-classification study (everything that is not searched)."""

    dataset: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(name="rotten_tomatoes"),
        metadata={"help": "built-in dataset name or local files"},
    )
    max_length: int = field(default=64, metadata={"help": "tokens per text; longer ones are cut"})

    METRICS: ClassVar[dict[str, str]] = METRICS
    FOLDS: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {self.max_length!r}")

    @classmethod
    def _convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        if "dataset" in d:
            ds = d["dataset"]
            if isinstance(ds, str):
                ds = {"name": ds}
            if not isinstance(ds, dict):
                raise ValueError(f"dataset must be a mapping or a built-in name, got {ds!r}")
            d["dataset"] = DatasetConfig.from_dict(ds)
        return d


class TextClassificationTask:
    """Token ids in, class logits out; cross-entropy loss; loss, accuracy and macro-F1."""

    peft_task_type = "SEQ_CLS"

    def __init__(self, config: TextClassificationConfig, res: Resources) -> None:
        self.config = config
        self.res = res
        self.base_model = res.base_model
        self.structure = res.structure
        self.prefix_cache = res.prefix_cache
        self.key = res.key
        self.n_classes = len(res.splits.label_names)
        self.params: TextParams | None = None  # the trial's, when it augments (see augments)
        if res.fast is None:
            res.fast = self._fast_paths()
        self.fast = res.fast

    def _fast_paths(self) -> Any:
        from objectives.fastpath import FastPaths

        probe = list(self.examples("validation")[:4]) or list(self.examples("train")[:4])
        batch = self.collate(probe, self.res.device)
        return FastPaths(self.base_model, self.structure,
                         (batch.inputs, np.array([len(ids) for ids, _ in probe])))

    def folds(self, k: int) -> list[TextClassificationTask]:
        """``k`` stratified folds of train + validation (seeded): fold ``j`` trains on the other
        folds and validates on fold ``j``. The test split stays out."""
        from sklearn.model_selection import StratifiedKFold

        pool = [*self.examples("train"), *self.examples("validation")]
        labels = np.array([label for _, label in pool])
        n_min = int(np.bincount(labels).min()) if len(labels) else 0
        if n_min < k:
            raise ValueError(f"cv_folds: {k} folds need at least {k} examples of every class in "
                             f"train + validation; the rarest class has {n_min}")
        split = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.config.seed)
        return [_Fold(self, pool, train_idx, val_idx, j)
                for j, (train_idx, val_idx) in enumerate(split.split(np.zeros(len(pool)), labels))]

    def examples(self, split: str) -> Sequence[tuple[np.ndarray, int]]:
        """``(token ids, label)`` per example (built once per worker and split)."""
        cache = self.res.extra.setdefault("examples", {})
        if split not in cache:
            enc = self.res.encoded[split]
            cache[split] = list(zip(enc.ids, enc.labels.tolist(), strict=True))
        return cache[split]

    def lengths(self, split: str) -> np.ndarray:
        return self.res.encoded[split].lengths

    def augments(self, params: TrainParams) -> bool:
        """Whether ``params`` augment the training texts (the core then passes a generator)."""
        self.params = params if isinstance(params, TextParams) and params.augmented else None
        return self.params is not None

    def augmented(self, examples: Sequence[tuple[np.ndarray, Any]],
                  rng: np.random.Generator | None) -> Sequence[tuple[np.ndarray, Any]]:
        """``examples`` with their words dropped and swapped (training batches of a trial
        that augments), else as they are."""
        p = self.params
        if rng is None or p is None:
            return examples
        if "word_starts" not in self.res.extra:
            tok = self.res.tokenizer
            self.res.extra["word_starts"] = (word_starts(tok), set(tok.all_special_ids))
        starts, special = self.res.extra["word_starts"]
        return [(augment_ids(ids, starts, special, rng, p.word_dropout, p.random_swap), y)
                for ids, y in examples]

    def collate(self, examples: Sequence[tuple[np.ndarray, int]], device: str,
                rng: np.random.Generator | None = None) -> Batch:
        import torch

        from objectives.core import Batch

        examples = self.augmented(examples, rng)
        width = max(len(ids) for ids, _ in examples)
        ids = np.full((len(examples), width), self.res.pad_id, dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=np.int64)
        for i, (x, _) in enumerate(examples):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        labels = torch.tensor([label for _, label in examples], dtype=torch.long)
        return Batch(
            inputs={"input_ids": torch.from_numpy(ids).to(device),
                    "attention_mask": torch.from_numpy(mask).to(device)},
            targets=labels.to(device),
            units=len(examples),
            tokens=int(mask.sum()),
        )

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(outputs.logits.float(), batch.targets, reduction="sum")

    def collect(self, outputs: Any, batch: Batch) -> dict[str, Any]:
        import torch.nn.functional as F

        logits = outputs.logits.float()
        return {
            "loss_sum": float(F.cross_entropy(logits, batch.targets, reduction="sum")),
            "units": batch.units,
            "pred": logits.argmax(-1).tolist(),
            "label": batch.targets.tolist(),
        }

    def metrics(self, collected: dict[str, Any]) -> dict[str, float]:
        from objectives.metrics import macro_f1

        pred, label = np.asarray(collected["pred"]), np.asarray(collected["label"])
        return {
            "val_loss": collected["loss_sum"] / max(collected["units"], 1),
            "val_accuracy": float(np.mean(pred == label)) if len(label) else 0.0,
            "val_f1": macro_f1(label, pred, self.n_classes),
        }


class _Fold(TextClassificationTask):
    """One cross-validation fold: a view of its task's train + validation examples."""

    def __init__(self, task: TextClassificationTask, pool: list[tuple[np.ndarray, int]],
                 train_idx: np.ndarray, val_idx: np.ndarray, j: int) -> None:
        super().__init__(task.config, task.res)
        self.key = (*task.key, "fold", len(pool), int(j))  # its own frozen-prefix cache entries
        self._split = {"train": [pool[i] for i in train_idx],
                       "validation": [pool[i] for i in val_idx]}

    def examples(self, split: str) -> Sequence[tuple[np.ndarray, int]]:
        return self._split[split] if split in self._split else super().examples(split)

    def lengths(self, split: str) -> np.ndarray:
        if split not in self._split:
            return super().lengths(split)
        return np.array([len(ids) for ids, _ in self._split[split]], dtype=np.int64)


def task_for(cfg: TextClassificationConfig, device: str | None = None) -> TextClassificationTask:
    """The task of ``cfg`` on this worker: data and model loaded once per process and device."""
    from objectives.distributed import worker_device
    from objectives.models import get_resources

    device = device or worker_device(cfg.device)
    splits = load_splits(cfg.dataset, cfg.seed)
    res = get_resources(cfg.model, splits, cfg.max_length, cfg.cache_dir, cfg.prefix_cache_mb,
                        device, keep=cfg.models_in_memory)
    return TextClassificationTask(cfg, res)


def prepare(cfg: TextClassificationConfig) -> dict[str, Any]:
    """Load the data once (checking it) and return its fingerprint and split info."""
    splits = load_splits(cfg.dataset, cfg.seed)
    return {"data_fingerprint": splits.fingerprint, "data": splits.info}


def fingerprint(cfg: TextClassificationConfig) -> str:
    """The data fingerprint without loading the data."""
    return data_fingerprint(cfg.dataset, cfg.seed)


def validate_space(cfg: TextClassificationConfig, distributions: dict[str, Any]) -> None:
    """Check every sampled hyperparameter's name and range, also against the model's structure
    (against every model, when ``model`` itself is a categorical entry of the space).

    Raises:
        ValueError: naming the parameter, e.g. a freezing depth beyond the model's layers.
    """
    from optuna.distributions import CategoricalDistribution

    from objectives.models import describe_model

    models = [cfg.model]
    for name, dist in distributions.items():
        if name == "model":
            if not isinstance(dist, CategoricalDistribution) or not all(
                    isinstance(c, str) and c for c in dist.choices):
                raise ValueError("model: the model as a hyperparameter is a categorical entry of "
                                 "model names, e.g. {type: categorical, choices: [minilm, mpnet]}")
            models = list(dist.choices)
            continue
        TextParams.check_distribution(name, dist)
    for model in models:
        info = describe_model(model, "sequence-classification")  # also: the model exists
        info.check_length(cfg.max_length)
        if any(name in distributions for name in TrainParams.MODEL_CHECKED):
            info.check_space(distributions)


def split_model(cfg: TextClassificationConfig, params: dict[str, Any]) -> tuple[
        TextClassificationConfig, dict[str, Any]]:
    """The config with the model the trial sampled (``model`` in the space), and the rest."""
    import dataclasses

    if "model" not in params:
        return cfg, params
    rest = {k: v for k, v in params.items() if k != "model"}
    return dataclasses.replace(cfg, model=str(params["model"])), rest


def default_space(cfg: TextClassificationConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The automatic search space, sized to the data: batch sizes that give at least 25
    optimizer steps per epoch on the training rows; freezing at most half the model's layers
    (deeper freezing trains too little to pay at small budgets); ranges from practice."""
    from objectives.models import describe_model

    n_train = int(data.get("sizes", {}).get("train", 0))
    if cfg.cv_folds:
        n_train = (n_train + int(data.get("sizes", {}).get("validation", 0))) * (cfg.cv_folds - 1) // cfg.cv_folds
    batches = [b for b in (8, 16, 32) if n_train >= 25 * b] or [8]
    space: dict[str, Any] = {
        "learning_rate": {"type": "float", "low": 1.0e-5, "high": 2.0e-4, "log": True},
        "batch_size": {"type": "categorical", "choices": batches},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    }
    n_layers = describe_model(cfg.model, "sequence-classification").n_layers
    if n_layers >= 2:
        space["freeze_layers"] = {"type": "int", "low": 0, "high": n_layers // 2}
    return space


def recipe(cfg: TextClassificationConfig, names: list[str]) -> dict[str, Any]:
    """The usual recipe (BERT's paper and HF's examples): full fine-tuning at 5e-5 (LoRA at
    5e-4, r 8), batch 16, 10% warmup, weight decay 0.01, the model's own dropout."""
    lora = "r" in names or "lora_alpha" in names
    return {"learning_rate": 5e-4 if lora else 5e-5, "batch_size": 16, "freeze_layers": 0,
            "weight_decay": 0.01, "warmup_ratio": 0.1, "lr_scheduler_type": "linear",
            "dropout": 0.1, "finetuning": "lora" if lora else "full", "r": 8,
            "lora_alpha": 16, "lora_dropout": 0.1}


def objective(trial: optuna.Trial, params: dict[str, Any], cfg: TextClassificationConfig, *,
              resume: list[int] | None = None) -> float:
    """Fine-tune with ``params``; report ``cfg.metric`` at each fidelity step; return its best."""
    from objectives.objective import run_trial

    cfg, params = split_model(cfg, params)
    return run_trial(trial, TextParams.from_params(params), task_for(cfg), resume=resume)


def check_data(cfg: TextClassificationConfig) -> list[Any]:
    """The data checks of text classification (:mod:`objectives.checks`)."""
    from objectives.checks import check_dataset

    return check_dataset(cfg)


def export(cfg: TextClassificationConfig, params: dict[str, Any], *, n_examples: int,
           seeds: Sequence[int], include_validation: bool = False,
           output_dir: str | None = None, merge: bool = False) -> Any:
    """Retrain ``params`` with each seed, test each once, save the first seed's model.

    Returns:
        A :class:`objectives.final.FinalResult`: test accuracy, macro-F1 and loss per seed,
        per-class precision/recall/F1 and the confusion matrix for the model card.
    """
    import dataclasses

    from objectives.final import FinalResult
    from objectives.final import retrain

    cfg, params = split_model(cfg, params)
    task = task_for(cfg)
    splits = task.res.splits
    result = FinalResult(
        seeds=[], data=splits.info, trained_on="", n_examples=0,
        params=TextParams.from_params(params).to_dict(), task="text-classification",
        summary_metrics=("accuracy", "macro_f1", "loss"), label_names=list(splits.label_names),
    )

    def seeded(seed: int) -> TextClassificationTask:
        # Checkpoints belong to trials of the search, not to this retrain.
        return TextClassificationTask(
            dataclasses.replace(cfg, seed=seed, checkpoint_dir=None), task.res)

    retrain(seeded, TextParams.from_params(params), _test, n_examples=n_examples, seeds=seeds,
            include_validation=include_validation, output_dir=output_dir, merge=merge,
            tokenizer=task.res.tokenizer, result=result)
    result.card = _card(result)
    peft = result.saved == "lora-adapter"
    auto = "AutoPeftModelForSequenceClassification" if peft else "AutoModelForSequenceClassification"
    result.load = [
        f"from {'peft' if peft else 'transformers'} import {auto}",
        "from transformers import AutoTokenizer",
        "",
        *(["# The base model named in adapter_config.json must be reachable."] if peft else []),
        f'model = {auto}.from_pretrained("path/to/this/directory"'
        + (f", num_labels={len(splits.label_names)})" if peft else ")"),
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
    ]
    return result


def _test(model: Any, task: TextClassificationTask) -> dict[str, Any]:
    """The one evaluation on the held-out test split."""
    from objectives.core import outputs
    from objectives.devices import Precision
    from objectives.devices import resolve_precision
    from objectives.metrics import classification_metrics

    device = task.res.device
    precision = Precision(resolve_precision(task.config.precision, device), device)
    out = outputs(model, task, "test", device, precision)
    labels, preds = np.asarray(out["label"]), np.asarray(out["pred"])
    return {
        "loss": out["loss_sum"] / max(out["units"], 1),
        **classification_metrics(labels, preds, task.res.splits.label_names),
        "n_examples": len(labels),
    }


def _card(result: Any) -> list[str]:
    """Per-class scores and the confusion matrix of the saved model."""
    test = result.seeds[0].test
    names = result.label_names or []
    lines = ["", f"Per class, saved model (seed {result.seeds[0].seed}):", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in test["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                     f"{m['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, row in zip(names, test["confusion_matrix"], strict=True):
        lines.append(f"| **{label}** | " + " | ".join(str(x) for x in row) + " |")
    return lines
