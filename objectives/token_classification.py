"""Tag every word of a sentence (named entities, BIO): the ``token_classification`` objective.

Any ``AutoModelForTokenClassification`` encoder (the packaged MiniLM by default) gets a new
head over the data's tags. Sentences come as words (:mod:`objectives.token_data`); the
tokenizer splits them into word pieces and each word's tag sits on its first piece (the other
pieces and the special tokens are ignored by the loss, label -100). The loss averages over
tagged words; the validation metrics are ``val_loss``, entity-level ``val_f1`` /
``val_precision`` / ``val_recall`` (seqeval's definition) and word-level ``val_accuracy``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.config import TrainConfig
from objectives.params import TrainParams
from objectives.token_data import TokenDataConfig
from objectives.token_data import entity_scores
from objectives.token_data import load_token_splits
from objectives.token_data import token_fingerprint

if TYPE_CHECKING:
    import optuna
    import torch

    from objectives.core import Batch
    from objectives.token_data import TokenSplits

__all__ = ["METRICS", "TokenClassificationConfig", "TokenClassificationTask", "check_data",
           "export", "fingerprint", "objective", "prepare", "task_for", "validate_space"]

METRICS = {"val_loss": "minimize", "val_f1": "maximize", "val_precision": "maximize",
           "val_recall": "maximize", "val_accuracy": "maximize"}
_SPLITS = ("train", "validation", "test")
IGNORE = -100


@dataclass(frozen=True)
class TokenClassificationConfig(TrainConfig):
    """Fixed settings of a token-classification study (everything that is not searched)."""

    dataset: TokenDataConfig = field(
        default_factory=lambda: TokenDataConfig(name="wnut16"),
        metadata={"help": "built-in dataset name, or CoNLL-style / JSONL files"})
    max_length: int = field(default=64, metadata={
        "help": "word pieces per sentence; the words beyond are neither trained nor scored"})

    METRICS: ClassVar[dict[str, str]] = METRICS

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 4:
            raise ValueError(f"max_length must be an integer >= 4, got {self.max_length!r}")

    @classmethod
    def _convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        if "dataset" in d:
            d["dataset"] = TokenDataConfig.from_dict(d["dataset"])
        return d


@dataclass
class TokenResources:
    """What a worker loads once: tokenizer, model, the sentences as word pieces with labels."""

    key: tuple[Any, ...]
    tokenizer: Any
    base_model: torch.nn.Module
    structure: Any
    splits: TokenSplits
    encoded: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # (piece ids, labels) per sentence
    prefix_cache: Any
    device: str
    pad_id: int
    fast: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def align(tokenizer: Any, words: list[list[str]], tags: list[list[int]],
          max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Word pieces of each sentence and a label per piece: the word's tag on its first piece,
    -100 on the others and on special tokens."""
    if not words:
        return []
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    out = []
    for i, sent_tags in enumerate(tags):
        ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        labels = np.full(len(ids), IGNORE, dtype=np.int64)
        previous = None
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w != previous:
                labels[pos] = sent_tags[w]
            previous = w
        out.append((ids, labels))
    return out


def _load_model(path: str, label_names: list[str]) -> Any:
    import torch
    from transformers import AutoModelForTokenClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same new head in every process (run, worker, export)
        return AutoModelForTokenClassification.from_pretrained(
            path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)}, ignore_mismatched_sizes=True)


def get_token_resources(cfg: TokenClassificationConfig, device: str) -> TokenResources:
    """Load (once per process, model, data and device) the tokenizer, model and pieces."""
    from transformers import AutoTokenizer

    from objectives.models import PrefixCache
    from objectives.models import cached_resources
    from objectives.models import quiet_transformers
    from objectives.models import remember
    from objectives.models import resolve_model_path
    from objectives.structure import find_structure

    splits = load_token_splits(cfg.dataset, cfg.seed)
    key = ("tokens", cfg.model, cfg.max_length, splits.fingerprint, device)
    found = cached_resources(key)
    if found is not None:
        return found  # type: ignore[return-value]
    quiet_transformers()
    path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path, add_prefix_space=True) if _bpe(path) else \
        AutoTokenizer.from_pretrained(path)
    base = _load_model(path, splits.label_names)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    base.to(device)
    encoded = {s: align(tokenizer, splits.words[s], splits.tags[s], cfg.max_length)
               for s in _SPLITS}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    res = TokenResources(key=key, tokenizer=tokenizer, base_model=base,
                         structure=find_structure(base), splits=splits, encoded=encoded,
                         prefix_cache=PrefixCache(cfg.prefix_cache_mb * 2**20), device=device,
                         pad_id=int(pad))
    remember(res, cfg.models_in_memory)  # type: ignore[arg-type]
    return res


def _bpe(path: str) -> bool:
    """Byte-level BPE tokenizers (RoBERTa, GPT-2) need add_prefix_space for split words."""
    import json
    from pathlib import Path

    try:
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return False
    return model_type in ("roberta", "gpt2", "longformer", "bart", "deberta")


class TokenClassificationTask:
    """Piece ids in, a tag distribution per piece out; cross-entropy over the first piece of
    each word; loss, entity-level F1/precision/recall and word accuracy."""

    peft_task_type = "TOKEN_CLS"

    def __init__(self, config: TokenClassificationConfig, res: TokenResources) -> None:
        self.config = config
        self.res = res
        self.base_model = res.base_model
        self.structure = res.structure
        self.prefix_cache = res.prefix_cache
        self.key = res.key
        self.label_names = res.splits.label_names
        if res.fast is None:
            res.fast = self._fast_paths()
        self.fast = res.fast

    def _fast_paths(self) -> Any:
        from objectives.fastpath import FastPaths

        # Sentences of one length: the head reads every position, and a padded position's
        # output is not compared (it is neither trained nor scored).
        split = "validation" if len(self.examples("validation")) else "train"
        lengths = self.lengths(split)
        common = np.bincount(lengths).argmax()
        probe = [self.examples(split)[i] for i in np.flatnonzero(lengths == common)[:4]]
        batch = self.collate(probe, self.res.device)
        return FastPaths(self.base_model, self.structure,
                         (batch.inputs, np.array([len(ids) for ids, _ in probe])))

    def examples(self, split: str) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        return self.res.encoded[split]

    def lengths(self, split: str) -> np.ndarray:
        return np.fromiter((len(ids) for ids, _ in self.res.encoded[split]), dtype=np.int64,
                           count=len(self.res.encoded[split]))

    def collate(self, examples: Sequence[tuple[np.ndarray, np.ndarray]], device: str,
                rng: np.random.Generator | None = None) -> Batch:
        import torch

        from objectives.core import Batch

        width = max(len(ids) for ids, _ in examples)
        ids = np.full((len(examples), width), self.res.pad_id, dtype=np.int64)
        labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=np.int64)
        for i, (x, y) in enumerate(examples):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = x, y, 1
        return Batch(
            inputs={"input_ids": torch.from_numpy(ids).to(device),
                    "attention_mask": torch.from_numpy(mask).to(device)},
            targets=torch.from_numpy(labels).to(device),
            units=int((labels != IGNORE).sum()),  # the loss averages over tagged words
            tokens=int(mask.sum()),
        )

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        logits = outputs.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")

    def collect(self, outputs: Any, batch: Batch) -> dict[str, Any]:
        """Per sentence: the predicted and gold tag ids of its (kept) words."""
        pred = outputs.logits.float().argmax(-1).cpu().numpy()
        gold = batch.targets.cpu().numpy()
        keep = gold != IGNORE
        return {
            "loss_sum": float(self.loss(outputs, batch)), "units": batch.units,
            "pred": [pred[i][keep[i]].tolist() for i in range(len(gold))],
            "gold": [gold[i][keep[i]].tolist() for i in range(len(gold))],
        }

    def scores(self, collected: dict[str, Any]) -> dict[str, Any]:
        names = self.label_names
        gold = [[names[x] for x in s] for s in collected["gold"]]
        pred = [[names[x] for x in s] for s in collected["pred"]]
        out = entity_scores(gold, pred)
        flat_g = [x for s in collected["gold"] for x in s]
        flat_p = [x for s in collected["pred"] for x in s]
        out["accuracy"] = float(np.mean(np.asarray(flat_g) == np.asarray(flat_p))) if flat_g else 0.0
        out["loss"] = collected["loss_sum"] / max(collected["units"], 1)
        return out

    def metrics(self, collected: dict[str, Any]) -> dict[str, float]:
        s = self.scores(collected)
        return {"val_loss": s["loss"], "val_f1": s["f1"], "val_precision": s["precision"],
                "val_recall": s["recall"], "val_accuracy": s["accuracy"]}


def task_for(cfg: TokenClassificationConfig, device: str | None = None) -> TokenClassificationTask:
    """The task of ``cfg`` on this worker: data and model loaded once per process and device."""
    from objectives.distributed import worker_device

    device = device or worker_device(cfg.device)
    return TokenClassificationTask(cfg, get_token_resources(cfg, device))


def prepare(cfg: TokenClassificationConfig) -> dict[str, Any]:
    """Read the sentences once (checking them); their fingerprint and split info."""
    splits = load_token_splits(cfg.dataset, cfg.seed)
    return {"data_fingerprint": splits.fingerprint, "data": splits.info}


def fingerprint(cfg: TokenClassificationConfig) -> str:
    return token_fingerprint(cfg.dataset, cfg.seed)


def validate_space(cfg: TokenClassificationConfig, distributions: dict[str, Any]) -> None:
    """Check every hyperparameter's name and range, also against the model's structure."""
    from objectives.models import check_space

    check_space(cfg, distributions, TrainParams, "token-classification")


def objective(trial: optuna.Trial, params: dict[str, Any], cfg: TokenClassificationConfig, *,
              resume: list[int] | None = None) -> float:
    """Fine-tune with ``params``; report ``cfg.metric`` at each fidelity step; return its best."""
    from objectives.objective import run_trial

    return run_trial(trial, TrainParams.from_params(params), task_for(cfg), resume=resume)


def check_data(cfg: TokenClassificationConfig) -> list[Any]:
    """The tagged-sentence checks (:mod:`objectives.token_data`), truncation with the model's
    tokenizer.

    Raises:
        objectives.data.DataError: a file cannot be read (bad input, not a finding).
        ValueError: the model's tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    from objectives.models import quiet_transformers
    from objectives.models import resolve_model_path
    from objectives.token_data import check_tagged
    from objectives.token_data import piece_lengths

    splits = load_token_splits(cfg.dataset, cfg.seed)
    quiet_transformers()
    path = resolve_model_path(cfg.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **({"add_prefix_space": True} if _bpe(path) else {}))
    except OSError as exc:
        raise ValueError(f"model {cfg.model!r}: not a local model directory and not reachable "
                         f"as a hub id ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    lengths = piece_lengths(tokenizer, [w for s in _SPLITS for w in splits.words[s]])
    return check_tagged(splits, lengths, cfg.max_length)


def export(cfg: TokenClassificationConfig, params: dict[str, Any], *, n_examples: int,
           seeds: Sequence[int], include_validation: bool = False,
           output_dir: str | None = None, merge: bool = False) -> Any:
    """Retrain ``params`` with each seed, test each once, save the first seed's model.

    Returns:
        A :class:`objectives.final.FinalResult`: entity-level F1, precision, recall, word
        accuracy and loss per seed, and per-entity-type scores for the model card.
    """
    from objectives.final import FinalResult
    from objectives.final import retrain

    task = task_for(cfg)
    splits = task.res.splits
    typed = TrainParams.from_params(params)
    result = FinalResult(
        seeds=[], data=splits.info, trained_on="", n_examples=0, params=typed.to_dict(),
        task="token-classification", summary_metrics=("f1", "precision", "recall", "accuracy", "loss"),
        label_names=list(splits.label_names),
    )

    def seeded(seed: int) -> TokenClassificationTask:
        return TokenClassificationTask(
            dataclasses.replace(cfg, seed=seed, checkpoint_dir=None), task.res)

    retrain(seeded, typed, _test, n_examples=n_examples, seeds=seeds,
            include_validation=include_validation, output_dir=output_dir, merge=merge,
            tokenizer=task.res.tokenizer, result=result)
    result.card = _card(result)
    peft = result.saved == "lora-adapter"
    auto = "AutoPeftModelForTokenClassification" if peft else "AutoModelForTokenClassification"
    result.load = [
        f"from {'peft' if peft else 'transformers'} import {auto}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {auto}.from_pretrained("path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        "# tags: model.config.id2label; read each word's tag at its first word piece",
    ]
    return result


def _test(model: Any, task: TokenClassificationTask) -> dict[str, Any]:
    """The one evaluation on the held-out test split."""
    from objectives.core import outputs
    from objectives.devices import Precision
    from objectives.devices import resolve_precision

    device = task.res.device
    precision = Precision(resolve_precision(task.config.precision, device), device)
    out = outputs(model, task, "test", device, precision)
    scores = task.scores(out)
    return {**scores, "n_examples": len(out["gold"])}


def _card(result: Any) -> list[str]:
    test = result.seeds[0].test
    lines = ["", f"Entity-level scores per type, saved model (seed {result.seeds[0].seed}; "
             "an entity counts when its type and every word match, as in seqeval):", "",
             "| entity type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in test["per_type"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                     f"{m['support']} |")
    return lines
