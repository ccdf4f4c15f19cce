"""Labeled images: a folder with one subfolder per class, a CSV/JSONL of image path and label,
or the built-in digits; seeded, stratified train/validation/test splits; the data checks.

Images are decoded once (PIL), converted to RGB and kept as ``uint8`` arrays at their own size;
the task resizes them to its model's input size. Files that cannot be decoded are left out
(and reported by the ``unreadable-image`` check). This module never imports ``hpo``.

============================  ========  ===========================================================
code                          severity  what
============================  ========  ===========================================================
``unreadable-image``          error     a file that is missing or not a decodable image (left out)
``leakage``                   error     the same image (pixels) in two splits
``conflicting-labels``        error     the same image with different labels
``mixed-sizes``               warning   images of different sizes (all are resized to one)
``mixed-modes``               warning   images of different colour modes (all become RGB)
``train-duplicates``          warning   the same image more than once in the training split
``class-imbalance``           warning   largest / smallest class in train >= 3
``missing-class``             warning   a class absent from a split
============================  ========  ===========================================================
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.checks import Finding
from objectives.checks import check_class_balance
from objectives.data import DataError
from objectives.data import _sort_labels
from objectives.sources import SPLITS
from objectives.sources import SourceConfig
from objectives.sources import memoized_splits
from objectives.sources import source_fingerprint
from objectives.sources import split_rows

__all__ = ["IMAGE_EXTENSIONS", "ImageDataConfig", "ImageSplits", "check_images",
           "image_fingerprint", "load_image_splits"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_N_EXAMPLES = 3


@dataclass(frozen=True)
class ImageDataConfig(SourceConfig):
    """Images and their labels: ``name: digits``, ``path`` (a folder with one subfolder per
    class, or a CSV/JSONL file of image path and label), or pre-split folders/files."""

    image_column: str = field(default="image", metadata={
        "help": "CSV/JSONL column with the image's path (relative to the file's folder)"})
    label_column: str = field(default="label", metadata={"help": "CSV/JSONL column of the class"})

    BUILTINS: ClassVar[dict[str, str]] = {
        "digits": "scikit-learn's handwritten digits: 10 classes, 1,797 grey 8x8 images.",
    }
    FOLDERS: ClassVar[bool] = True
    EXTENSIONS: ClassVar[tuple[str, ...]] = (".csv", ".jsonl", ".json")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("image_column", "label_column"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise DataError(f"{key} must be a non-empty string, but got {getattr(self, key)!r}")


@dataclass
class _Rows:
    """Images read from one source, before splitting."""

    images: list[np.ndarray] = field(default_factory=list)  # H x W x 3, uint8
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # where each image came from
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) as stored
    modes: list[str] = field(default_factory=list)  # PIL mode as stored: L, RGB, RGBA, P...
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def add(self, image: np.ndarray, label: str, name: str, size: tuple[int, int], mode: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.names.append(name)
        self.sizes.append(size)
        self.modes.append(mode)

    def take(self, idx: np.ndarray) -> _Rows:
        pick = [int(i) for i in idx]
        return _Rows([self.images[i] for i in pick], [self.labels[i] for i in pick],
                     [self.names[i] for i in pick], [self.sizes[i] for i in pick],
                     [self.modes[i] for i in pick], [])


@dataclass(frozen=True)
class ImageSplits:
    """Train, validation and test images with labels ``0..K-1``."""

    images: dict[str, list[np.ndarray]]  # split -> H x W x 3 uint8 arrays
    labels: dict[str, np.ndarray]  # split -> int64 label indices
    names: dict[str, list[str]]  # split -> file (or built-in row) of each image
    sizes: dict[str, list[tuple[int, int]]]
    modes: dict[str, list[str]]
    unreadable: list[tuple[str, str]]
    label_names: list[str]
    fingerprint: str
    info: dict[str, Any]


def _open(path: Path) -> tuple[np.ndarray, tuple[int, int], str]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        size, mode = img.size, img.mode
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return rgb, size, mode


def _read_one(rows: _Rows, path: Path, label: str) -> None:
    try:
        image, size, mode = _open(path)
    except FileNotFoundError:
        rows.unreadable.append((str(path), "no such file"))
    except Exception as exc:  # PIL raises many types for a file that is not an image
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rows.unreadable.append((str(path), reason))
    else:
        rows.add(image, label, str(path), size, mode)


def _read_folder(root: Path) -> _Rows:
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"dataset folder {str(root)!r} has no class subfolders (expected one "
                        "subfolder of images per class)")
    rows = _Rows()
    for folder in classes:
        files = sorted(p for p in folder.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"dataset folder {str(root)!r}: class folder {folder.name!r} has no "
                            f"images ({', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
        for path in files:
            _read_one(rows, path, folder.name)
    return rows


def _table(path: Path, columns: tuple[str, str]) -> list[tuple[str, str]]:
    """(image path, label) per row of a CSV or JSONL file."""
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    out: list[tuple[str, str]] = []
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                records: list[dict[str, Any]] = list(reader)
                found = list(reader.fieldnames or [])
        else:
            records = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError:
                            raise DataError(f"dataset file {str(path)!r} line {n}: not valid JSON") from None
            found = sorted({k for r in records for k in r}) if records else []
    except UnicodeDecodeError:
        raise DataError(f"dataset file {str(path)!r}: not UTF-8 text") from None
    missing = [c for c in columns if c not in found]
    if missing:
        raise DataError(f"dataset file {str(path)!r} has no column "
                        f"{', '.join(repr(c) for c in missing)} (columns: "
                        f"{', '.join(repr(c) for c in found)}); set image_column/label_column")
    for n, r in enumerate(records, 1):
        image, label = r.get(columns[0]), r.get(columns[1])
        if image in (None, "") or label in (None, ""):
            raise DataError(f"dataset file {str(path)!r} row {n}: empty "
                            f"{columns[0] if image in (None, '') else columns[1]!r}")
        out.append((str(image), str(label).strip()))
    return out


def _read_table(path: Path, cfg: ImageDataConfig) -> _Rows:
    rows = _Rows()
    for image, label in _table(path, (cfg.image_column, cfg.label_column)):
        file = Path(image)
        _read_one(rows, file if file.is_absolute() else path.parent / file, label)
    return rows


def _read_source(path: str, cfg: ImageDataConfig) -> _Rows:
    p = Path(path)
    if p.suffix.lower() in cfg.EXTENSIONS:
        return _read_table(p, cfg)
    return _read_folder(p)


def _read_digits() -> _Rows:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = _Rows()
    for i, (img, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = np.round(np.asarray(img) * (255.0 / 16.0)).astype(np.uint8)
        rows.add(np.repeat(grey[:, :, None], 3, axis=2), str(int(target)), f"digits[{i}]",
                 (8, 8), "L")
    return rows


def _builtin_files(name: str) -> list[Path]:
    import sklearn

    return [Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"]


def image_fingerprint(cfg: ImageDataConfig, seed: int) -> str:
    """The data's identity (file contents, settings, seed) without decoding any image."""
    files = _builtin_files(cfg.name) if cfg.name is not None else []
    return source_fingerprint(cfg, seed, files)


def load_image_splits(cfg: ImageDataConfig, seed: int) -> ImageSplits:
    """Decode the images once (memoized per process) and split them, seeded and stratified.

    Raises:
        DataError: a missing folder or file, a class folder without images, a table without
            its columns, fewer than 2 classes, too few images for three splits.
    """
    return _memoized(cfg, seed)


def _load(cfg: ImageDataConfig, seed: int, fingerprint: str) -> ImageSplits:
    if cfg.name is not None:
        parts = {"": _read_digits()}
        where, source = f"builtin dataset {cfg.name!r}", {"name": cfg.name}
    else:
        parts = {split: _read_source(path, cfg) for split, path in cfg.sources()}
        where = f"dataset {cfg.path or cfg.train_path!r}"
        source = {k: v for k, v in cfg.to_dict().items()
                  if k in ("path", "train_path", "validation_path", "test_path") and v}
    unreadable = [u for rows in parts.values() for u in rows.unreadable]
    train_labels = set((parts[""] if "" in parts else parts["train"]).labels)
    if len(train_labels) < 2:
        found = ", ".join(repr(x) for x in sorted(train_labels)) or "none"
        raise DataError(f"{where} has {len(train_labels)} class(es) with readable images "
                        f"({found}); classification needs at least 2")
    label_names = _sort_labels({lab for rows in parts.values() for lab in rows.labels})
    index = {name: i for i, name in enumerate(label_names)}
    if "" in parts:
        rows = parts[""]
        y = np.array([index[x] for x in rows.labels], dtype=np.int64)
        idx = split_rows(len(rows.images), cfg, seed, y, where)
        split = {s: rows.take(idx[s]) for s in SPLITS}
        method = "stratified"
    else:
        split = {s: parts[s] for s in SPLITS}
        for s in SPLITS:
            if not split[s].images:
                raise DataError(f"dataset {getattr(cfg, s + '_path')!r} ({s}) has no readable images")
        method = "pre-split"
    labels = {s: np.array([index[x] for x in split[s].labels], dtype=np.int64) for s in SPLITS}
    info = {
        "source": source, "seed": seed, "fingerprint": fingerprint,
        "sizes": {s: len(split[s].images) for s in SPLITS},
        "label_names": label_names,
        "class_counts": {s: {label_names[i]: int(c) for i, c in
                             sorted(collections.Counter(labels[s].tolist()).items())}
                         for s in SPLITS},
        "split_method": method, "n_dropped_rows": len(unreadable),
    }
    return ImageSplits(
        images={s: split[s].images for s in SPLITS}, labels=labels,
        names={s: split[s].names for s in SPLITS}, sizes={s: split[s].sizes for s in SPLITS},
        modes={s: split[s].modes for s in SPLITS}, unreadable=unreadable,
        label_names=label_names, fingerprint=fingerprint, info=info,
    )


# --- checks ------------------------------------------------------------------------------------


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def _shown(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:_N_EXAMPLES])


def check_unreadable(unreadable: list[tuple[str, str]]) -> list[Finding]:
    """Files that are missing or cannot be decoded as images (they are left out)."""
    if not unreadable:
        return []
    shown = "; ".join(f"{Path(f).name}: {why}" for f, why in unreadable[:_N_EXAMPLES])
    return [Finding("unreadable-image", "error",
                    f"{len(unreadable)} file(s) are missing or not readable images ({shown}); "
                    "fix or remove them (with --allow they are left out)",
                    count=len(unreadable), examples=tuple(f for f, _ in unreadable[:_N_EXAMPLES]))]


def check_sizes_and_modes(sizes: list[tuple[int, int]], modes: list[str]) -> list[Finding]:
    """Images of different sizes or colour modes: all are converted, say so."""
    findings = []
    by_size = collections.Counter(sizes)
    if len(by_size) > 1:
        shown = ", ".join(f"{w}x{h} ({c})" for (w, h), c in by_size.most_common(_N_EXAMPLES))
        findings.append(Finding("mixed-sizes", "warning",
                                f"images come in {len(by_size)} sizes ({shown}, ...): each is "
                                "resized to the model's input size, so aspect ratios may change",
                                count=len(by_size)))
    by_mode = collections.Counter(modes)
    if len(by_mode) > 1:
        shown = ", ".join(f"{m} ({c})" for m, c in by_mode.most_common())
        findings.append(Finding("mixed-modes", "warning",
                                f"images come in {len(by_mode)} colour modes ({shown}): each is "
                                "converted to RGB (transparency is dropped)",
                                count=len(by_mode)))
    return findings


def check_image_duplicates(splits: ImageSplits) -> list[Finding]:
    """The same pixels in two splits (leakage), with two labels, or twice in train."""
    digests = {s: [_digest(x) for x in splits.images[s]] for s in SPLITS}
    findings = []
    first: dict[str, tuple[str, str]] = {}  # digest -> (split, name) where first seen
    labels_of: dict[str, set[int]] = collections.defaultdict(set)
    parts, leaked = [], []
    sets = {s: set(digests[s]) for s in SPLITS}
    for s in SPLITS:
        for earlier in SPLITS[: SPLITS.index(s)]:
            shared = [i for i, d in enumerate(digests[s]) if d in sets[earlier]]
            if shared:
                parts.append(f"{len(shared)} of {len(digests[s])} {s} images are also in {earlier}")
                leaked += [splits.names[s][i] for i in shared]
        for i, d in enumerate(digests[s]):
            first.setdefault(d, (s, splits.names[s][i]))
            labels_of[d].add(int(splits.labels[s][i]))
    if parts:
        findings.append(Finding("leakage", "error",
                                f"{'; '.join(parts)} (e.g. {_shown(leaked)}): validation/test "
                                "scores would reward memory; remove the copies",
                                count=len(leaked), examples=tuple(leaked[:_N_EXAMPLES])))
    conflicts = [first[d][1] for d, ls in labels_of.items() if len(ls) > 1]
    if conflicts:
        findings.append(Finding("conflicting-labels", "error",
                                f"{len(conflicts)} image(s) occur with different labels (e.g. "
                                f"{_shown(conflicts)}): fix or drop them",
                                count=len(conflicts), examples=tuple(conflicts[:_N_EXAMPLES])))
    counts = collections.Counter(digests["train"])
    extra = sum(c - 1 for c in counts.values() if c > 1)
    if extra:
        repeated = [splits.names["train"][digests["train"].index(d)]
                    for d, c in counts.items() if c > 1]
        findings.append(Finding("train-duplicates", "warning",
                                f"{extra} training image(s) repeat another training image (e.g. "
                                f"{_shown(repeated)})", count=extra,
                                examples=tuple(repeated[:_N_EXAMPLES])))
    return findings


def check_images(cfg: ImageDataConfig, seed: int) -> list[Finding]:
    """Every image check on the data of ``cfg``; errors first.

    Raises:
        DataError: the data cannot be read at all (bad input, not a finding).
    """
    splits = load_image_splits(cfg, seed)
    findings = check_unreadable(splits.unreadable)
    findings += check_image_duplicates(splits)
    findings += check_sizes_and_modes([x for s in SPLITS for x in splits.sizes[s]],
                                      [x for s in SPLITS for x in splits.modes[s]])
    findings += check_class_balance({s: splits.labels[s].tolist() for s in SPLITS},
                                    splits.label_names)
    return sorted(findings, key=lambda f: f.severity != "error")


_memoized = memoized_splits(image_fingerprint, _load)
