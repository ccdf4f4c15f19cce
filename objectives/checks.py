"""Data checks for text classification: problems that make results wrong, and ones worth a look.

Each check is a pure function over plain lists (texts, labels, token lengths) and returns
:class:`Finding` objects; :func:`check_dataset` reads a config's data once and runs them all.

============================  ========  ===========================================================
code                          severity  what
============================  ========  ===========================================================
``label-column``              error     the label (or text) column is missing from a data file
``too-few-classes``           error     fewer than 2 distinct labels
``leakage``                   error     the same text in train and validation/test, or in
                                        validation and test (scores measure memory, not skill)
``conflicting-labels``        error     the same text with different labels
``empty-texts``               warning   empty or whitespace-only texts (dropped before splitting)
``missing-labels``            warning   rows without a label (dropped before splitting)
``train-duplicates``          warning   exact duplicate texts inside the training split
``class-imbalance``           warning   largest / smallest class in train >= ``max_ratio``
``missing-class``             warning   a class absent from a split
``truncated``                 warning   texts longer than ``max_length`` tokens (cut in training)
============================  ========  ===========================================================

Texts are compared exactly (no case folding or whitespace normalisation): these are the copies
that certainly leak. This module never imports ``hpo``.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

if TYPE_CHECKING:
    from objectives.data import DatasetConfig
    from objectives.text_classification import TextClassificationConfig

__all__ = [
    "Finding",
    "check_class_balance",
    "check_classes",
    "check_columns",
    "check_conflicting_labels",
    "check_dataset",
    "check_empty_texts",
    "check_leakage",
    "check_train_duplicates",
    "check_truncation",
]

Severity = Literal["error", "warning"]
_N_EXAMPLES = 3  # examples quoted per finding
_QUOTE = 60  # characters quoted per example
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Finding:
    """One problem in the data: a stable ``code``, its severity and a one-line message."""

    code: str  # stable identifier, e.g. "leakage"
    severity: Severity  # "error": results would be wrong; "warning": worth a look
    message: str  # one line, with counts and examples
    count: int = 0  # rows (or texts) concerned
    examples: tuple[str, ...] = ()  # a few of them, quoted as they are

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able mapping."""
        out = asdict(self)
        out["examples"] = list(self.examples)
        return out

    def __str__(self) -> str:
        return f"{self.severity}: {self.code}: {self.message}"


def _quote(text: str) -> str:
    one_line = " ".join(str(text).split())
    return repr(one_line if len(one_line) <= _QUOTE else one_line[: _QUOTE - 3] + "...")


def _eg(examples: Sequence[str]) -> str:
    return ", e.g. " + ", ".join(_quote(x) for x in examples[:_N_EXAMPLES]) if examples else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- raw rows (before cleaning and splitting) --------------------------------------------------


def check_columns(columns: Sequence[str], text_column: str, label_column: str, where: str) -> list[Finding]:
    """The text and label columns exist in a data file with ``columns``."""
    missing = [c for c in (label_column, text_column) if c not in columns]
    if not missing:
        return []
    names = ", ".join(repr(c) for c in missing)
    return [
        Finding(
            "label-column",
            "error",
            f"{where} has no column {names} (columns: {', '.join(repr(c) for c in columns)}); "
            "set text_column/label_column",
            count=len(missing),
        )
    ]


def check_empty_texts(texts: Sequence[Any], labels: Sequence[Any], where: str) -> list[Finding]:
    """Empty or whitespace-only texts, and rows without a label (both are dropped on loading)."""
    findings = []
    empty = [i for i, t in enumerate(texts) if _missing(t) or not str(t).strip()]
    if empty:
        blank = sum(1 for i in empty if not _missing(texts[i]))
        findings.append(
            Finding(
                "empty-texts",
                "warning",
                f"{where}: {_plural(len(empty), 'row')} of {len(texts)} with an empty or "
                f"whitespace-only text ({blank} whitespace/empty strings, {len(empty) - blank} "
                "missing); they are dropped before splitting",
                count=len(empty),
                examples=tuple(f"row {i}" for i in empty[:_N_EXAMPLES]),
            )
        )
    unlabeled = [i for i, lab in enumerate(labels) if _missing(lab) or not str(lab).strip()]
    if unlabeled:
        findings.append(
            Finding(
                "missing-labels",
                "warning",
                f"{where}: {_plural(len(unlabeled), 'row')} of {len(labels)} without a label; "
                "they are dropped before splitting",
                count=len(unlabeled),
                examples=tuple(f"row {i}" for i in unlabeled[:_N_EXAMPLES]),
            )
        )
    return findings


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- the splits ------------------------------------------------------------------------------


def check_classes(labels: Sequence[Any], where: str) -> list[Finding]:
    """At least 2 distinct labels."""
    distinct = sorted({str(x) for x in labels})
    if len(distinct) >= 2:
        return []
    found = ", ".join(repr(x) for x in distinct) or "none"
    return [
        Finding(
            "too-few-classes",
            "error",
            f"{where} has {len(distinct)} distinct label(s) ({found}); classification needs at "
            "least 2",
            count=len(distinct),
        )
    ]


def check_train_duplicates(train_texts: Sequence[str]) -> list[Finding]:
    """Exact duplicate texts inside the training split (they weigh those examples more)."""
    counts = collections.Counter(train_texts)
    repeated = [t for t, c in counts.most_common() if c > 1]
    if not repeated:
        return []
    extra = sum(counts[t] - 1 for t in repeated)
    return [
        Finding(
            "train-duplicates",
            "warning",
            f"{_plural(extra, 'training row')} repeat another training text "
            f"({_plural(len(repeated), 'distinct text')} occur more than once){_eg(repeated)}",
            count=extra,
            examples=tuple(repeated[:_N_EXAMPLES]),
        )
    ]


def check_leakage(texts: dict[str, Sequence[str]]) -> list[Finding]:
    """Texts of validation or test that also occur in an earlier split (train, then validation).

    Args:
        texts: the texts of each split, by name ("train", "validation", "test").
    """
    seen = {name: set(texts.get(name, ())) for name in SPLITS}
    parts = []
    examples: list[str] = []
    total = 0
    for later, earlier in (("validation", "train"), ("test", "train"), ("test", "validation")):
        shared = [t for t in texts.get(later, ()) if t in seen[earlier]]
        if shared:
            total += len(shared)
            parts.append(f"{len(shared)} of {len(texts[later])} {later} texts are also in {earlier}")
            examples.extend(t for t in dict.fromkeys(shared) if t not in examples)
    if not parts:
        return []
    return [
        Finding(
            "leakage",
            "error",
            f"{'; '.join(parts)}{_eg(examples)}: validation/test scores would reward memory; "
            "remove the duplicates (deduplicate the data before splitting)",
            count=total,
            examples=tuple(examples[:_N_EXAMPLES]),
        )
    ]


def check_conflicting_labels(
    texts: dict[str, Sequence[str]],
    labels: dict[str, Sequence[int]],
    label_names: Sequence[str],
) -> list[Finding]:
    """The same text with different labels, anywhere in the data."""
    by_text: dict[str, set[int]] = collections.defaultdict(set)
    rows: collections.Counter[str] = collections.Counter()
    for name in texts:
        for text, label in zip(texts[name], labels[name], strict=True):
            by_text[text].add(int(label))
            rows[text] += 1
    conflicts = [t for t, ls in by_text.items() if len(ls) > 1]
    if not conflicts:
        return []
    shown = [
        f"{_quote(t)} ({'/'.join(str(label_names[i]) for i in sorted(by_text[t]))})"
        for t in conflicts[:_N_EXAMPLES]
    ]
    n_rows = sum(rows[t] for t in conflicts)
    return [
        Finding(
            "conflicting-labels",
            "error",
            f"{_plural(len(conflicts), 'text')} ({n_rows} rows) carry different labels, e.g. "
            f"{', '.join(shown)}: fix or drop them",
            count=len(conflicts),
            examples=tuple(conflicts[:_N_EXAMPLES]),
        )
    ]


def check_class_balance(
    labels: dict[str, Sequence[int]], label_names: Sequence[str], max_ratio: float = 3.0
) -> list[Finding]:
    """Class counts of the training split: imbalance, and classes missing from a split.

    Args:
        labels: label indices of each split, by name.
        label_names: index to label name.
        max_ratio: warn when the largest training class is at least this many times the
            smallest.
    """
    findings = []
    train = collections.Counter(int(x) for x in labels.get("train", ()))
    counts = {str(name): train.get(i, 0) for i, name in enumerate(label_names)}
    present = [c for c in counts.values() if c > 0]
    if len(present) >= 2 and max(present) >= max_ratio * min(present):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        findings.append(
            Finding(
                "class-imbalance",
                "warning",
                f"training classes are imbalanced ({max(present) / min(present):.1f}:1): {shown}; "
                "accuracy flatters the majority class, consider metric val_f1",
                count=min(present),
            )
        )
    for name in SPLITS:
        if name not in labels:
            continue
        have = {int(x) for x in labels[name]}
        absent = [str(label_names[i]) for i in range(len(label_names)) if i not in have]
        if absent:
            findings.append(
                Finding(
                    "missing-class",
                    "warning",
                    f"the {name} split has no example of {', '.join(repr(a) for a in absent)} "
                    f"({len(labels[name])} rows)",
                    count=len(absent),
                    examples=tuple(absent[:_N_EXAMPLES]),
                )
            )
    return findings


def check_truncation(
    lengths: Sequence[int], texts: Sequence[str], max_length: int, min_share: float = 0.0
) -> list[Finding]:
    """Texts with more than ``max_length`` tokens (special tokens included): they are cut.

    Args:
        lengths: token counts, untruncated, one per text.
        texts: the texts, for examples.
        max_length: the config's ``max_length``.
        min_share: warn only when more than this share of texts is cut (0: any).
    """
    long = [i for i, n in enumerate(lengths) if n > max_length]
    share = len(long) / len(lengths) if len(lengths) else 0.0
    if not long or share <= min_share:
        return []
    longest = max(lengths)
    return [
        Finding(
            "truncated",
            "warning",
            f"{len(long)} of {len(lengths)} texts ({share:.1%}) are longer than max_length "
            f"{max_length} tokens and get cut (longest: {longest} tokens)"
            f"{_eg([texts[i] for i in long])}",
            count=len(long),
            examples=tuple(texts[i] for i in long[:_N_EXAMPLES]),
        )
    ]


# --- one config's data ---------------------------------------------------------------------


def _raw_sources(ds: DatasetConfig) -> list[tuple[str, str | None, str]]:
    """(description, path or None for a built-in, split name or '') per source file."""
    if ds.name is not None:
        return [(f"builtin dataset {ds.name!r}", None, "")]
    if ds.path is not None:
        return [(f"dataset file {ds.path!r}", ds.path, "")]
    return [
        (f"dataset file {getattr(ds, key)!r} ({split})", getattr(ds, key), split)
        for split, key in zip(SPLITS, ("train_path", "validation_path", "test_path"), strict=True)
    ]


def _check_raw(ds: DatasetConfig) -> list[Finding]:
    """Columns, classes, empty texts and missing labels, on the rows as stored (before cleaning).

    Raises:
        objectives.data.DataError: a file is missing or unreadable (bad input, not a finding).
    """
    import datasets

    from objectives.data import DataError
    from objectives.data import _loader_for
    from objectives.data import _read_builtin

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    findings: list[Finding] = []
    for where, path, split in _raw_sources(ds):
        if path is None:
            assert ds.name is not None, "Should not reach: a source without a path is a built-in."
            texts, labels = _read_builtin(ds.name)
        else:
            try:
                data = datasets.load_dataset(
                    _loader_for(path, "path"), data_files=os.path.abspath(path), split="train"
                )
            except DataError:
                raise
            except Exception as exc:  # the csv/json/parquet readers raise many unrelated types
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DataError(f"cannot read {where}: {reason}") from exc
            columns = check_columns(data.column_names, ds.text_column, ds.label_column, where)
            if columns:
                findings.extend(columns)
                continue
            texts, labels = list(data[ds.text_column]), list(data[ds.label_column])
        findings.extend(check_empty_texts(texts, labels, where))
        if split in ("", "train"):  # validation and test files may hold fewer classes
            usable = [
                lab
                for text, lab in zip(texts, labels, strict=True)
                if not _missing(text) and str(text).strip() and not _missing(lab) and str(lab).strip()
            ]
            findings.extend(check_classes(usable, where))
    return findings


def token_lengths(model: str, texts: Sequence[str]) -> list[int]:
    """Untruncated token counts (special tokens included) with the model's tokenizer.

    Raises:
        ValueError: the model's tokenizer cannot be loaded.
    """
    from objectives.models import quiet_transformers
    from objectives.models import resolve_model_path

    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    except ValueError as exc:
        if type(exc).__name__ == "PackagedModelError":
            raise
        raise ValueError(f"model {model!r}: cannot load its tokenizer "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    except Exception as exc:  # OSError, and whatever a broken folder makes transformers raise
        raise ValueError(
            f"model {model!r}: not a local model directory and not reachable as a hub id "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    # The tokenizer warns about sequences beyond the model's maximum: that is what we count.
    tokenizer.model_max_length = int(1e12)
    ids = tokenizer(list(texts), truncation=False, padding=False)["input_ids"]
    return [len(x) for x in ids]


def check_dataset(cfg: TextClassificationConfig) -> list[Finding]:
    """Run every check on the data of ``cfg`` (its dataset, seed, model and max length).

    Returns:
        The findings, errors first; an empty list for clean data.

    Raises:
        objectives.data.DataError: a data file is missing or unreadable (bad input, not a
            finding).
        ValueError: the model's tokenizer cannot be loaded.

    Example:
        >>> cfg = TextClassificationConfig.from_dict({"dataset": {"name": "trec"}})
        >>> [f.code for f in check_dataset(cfg)]
        ['class-imbalance']
    """
    from objectives.data import load_splits

    findings = _check_raw(cfg.dataset)
    if any(f.severity == "error" for f in findings):
        return findings  # the data cannot even be loaded
    splits = load_splits(cfg.dataset, cfg.seed)
    texts = {name: list(getattr(splits, name)["text"]) for name in SPLITS}
    labels = {name: list(getattr(splits, name)["label"]) for name in SPLITS}
    findings += check_leakage(texts)
    findings += check_conflicting_labels(texts, labels, splits.label_names)
    findings += check_train_duplicates(texts["train"])
    findings += check_class_balance(labels, splits.label_names)
    every = [t for name in SPLITS for t in texts[name]]
    findings += check_truncation(token_lengths(cfg.model, every), every, cfg.max_length)
    return sorted(findings, key=lambda f: f.severity != "error")
