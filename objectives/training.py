"""The training loop of one trial, top to bottom.

Fidelity steps are counted in training examples seen: each epoch's shuffled order is cut into
``evals_per_epoch`` equal segments, and evaluation happens exactly at each segment's end, so a
batch-8 and a batch-32 trial report at the same steps.

Work that would repeat is done once: the frozen prefix (embeddings and the bottom
``freeze_layers`` layers, in eval mode, so without dropout) runs once per example, and its
outputs feed every epoch and evaluation of the trial, and later trials with the same depth.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

import numpy as np
import optuna

if TYPE_CHECKING:
    import torch

    from objectives.models import Encoded
    from objectives.models import Resources
    from objectives.text_classification import TextClassificationConfig

__all__ = ["fine_tune", "evaluate", "macro_f1", "plan_segments"]

_LOG = logging.getLogger("hpo.objectives")
_MEGA_BATCHES = 16  # length grouping: sort this many batches' worth of examples by length


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over ``n_classes`` (classes absent from both count as 0)."""
    f1s = []
    for c in range(n_classes):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def plan_segments(
    n_train: int, epochs: int, evals_per_epoch: int, seed: int
) -> list[np.ndarray]:
    """The training order, cut into fidelity segments (one evaluation at the end of each)."""
    segments = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n_train)
        segments.extend(np.array_split(order, min(evals_per_epoch, n_train)))
    return segments


def _batches(
    segment: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Length-grouped batches: little padding, still a random order of batches."""
    chunk = batch_size * _MEGA_BATCHES
    batches = []
    for start in range(0, len(segment), chunk):
        part = segment[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


# --- inputs: token ids, or cached frozen-prefix outputs -------------------------------------


def _pad_ids(ids: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(x) for x in ids)
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


def _pad_hidden(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(s.shape[0] for s in states)
    out = states[0].new_zeros((len(states), width, states[0].shape[1]))
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


class _Passthrough:
    """Stands in for the embeddings while the model trains on cached prefix outputs."""

    def __new__(cls) -> Any:
        import torch

        class Passthrough(torch.nn.Module):
            def forward(self, inputs_embeds: torch.Tensor | None = None, **_: Any) -> Any:
                return inputs_embeds

        return Passthrough()


def supports_prefix_cache(model: Any) -> bool:
    """BERT-style encoders (embeddings + encoder.layer) can be split after layer k."""
    base = getattr(model, "base_model", None)
    return (
        base is not None
        and hasattr(base, "embeddings")
        and hasattr(getattr(base, "encoder", None), "layer")
    )


def _cls_only(model: Any, k: int, n_layers: int) -> bool:
    # With every layer frozen, BERT's pooler reads only the first token: keep only that.
    return k == n_layers and getattr(model.config, "model_type", "") == "bert"


def compute_prefix(
    model: Any,
    enc: Encoded,
    k: int,
    pad_id: int,
    batch_size: int,
    autocast: Any,
    start: tuple[int, list[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Outputs of the embeddings and the bottom ``k`` layers, one [length, hidden] per example.

    ``start=(j, outputs)``: go on from the outputs of the bottom ``j < k`` layers (a shallower
    cached prefix) instead of from the embeddings; only layers ``j..k`` run.
    """
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    base = model.base_model
    keep_first = _cls_only(model, k, len(base.encoder.layer))
    j, states = start if start is not None else (0, None)
    order = np.argsort(enc.lengths, kind="stable")
    out: list[torch.Tensor | None] = [None] * len(enc)
    with torch.inference_mode(), autocast():
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            if states is None:
                ids, mask = _pad_ids([enc.ids[i] for i in idx], pad_id)
                hidden = base.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
            else:
                hidden, mask = _pad_hidden([states[i] for i in idx])
            attn = create_bidirectional_mask(
                config=base.config, inputs_embeds=hidden, attention_mask=mask
            )
            for layer in base.encoder.layer[j:k]:
                hidden = layer(hidden, attn)
            hidden = hidden.float()
            for row, i in enumerate(idx):
                n = 1 if keep_first else len(enc.ids[i])
                out[i] = hidden[row, :n].clone()
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def _suffix_only(model: Any, k: int) -> Iterator[None]:
    """Run only the layers above ``k``: the embeddings pass cached outputs through."""
    import torch

    base = model.base_model
    embeddings, layers = base.embeddings, base.encoder.layer
    base.embeddings = _Passthrough()
    base.encoder.layer = torch.nn.ModuleList(list(layers)[k:])
    try:
        yield
    finally:
        base.embeddings, base.encoder.layer = embeddings, layers


def _cls_top_applies(model: Any) -> bool:
    # BertForSequenceClassification reads the top layer's first row only (through the pooler).
    return (
        type(model).__name__ == "BertForSequenceClassification"
        and getattr(model.base_model, "pooler", None) is not None
        and not getattr(model.config, "is_decoder", False)
        and not getattr(model.config, "chunk_size_feed_forward", 0)
    )


def _cls_top_layer(layer: Any) -> Any:
    """``layer`` (a BertLayer) computed for the [CLS] row only: keys and values still see every
    token, but the query, attention output and feed-forward (3/4 of the layer) run on one row.
    The same outputs as the whole layer for that row; the pooler reads nothing else.

    In training, each dropout draws its mask for the whole layer's shape and keeps the first
    row: the random stream, and so the run, stays the same as with the whole layer.
    """
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    def drop(x: torch.Tensor, p: float, full: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if p <= 0:
            return x
        keep = like.new_empty(full).bernoulli_(1 - p)[:, :, :1] if len(full) == 4 else (
            like.new_empty(full).bernoulli_(1 - p)[:, :1])
        return x * keep / (1 - p)

    class ClsTop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(
            self, hidden_states: torch.Tensor, attention_mask: Any = None, *_: Any, **__: Any
        ) -> torch.Tensor:
            sa, so, out = self.layer.attention.self, self.layer.attention.output, self.layer.output
            b, t, h = hidden_states.shape
            d = sa.attention_head_size
            cls = hidden_states[:, :1]
            q = sa.query(cls).view(b, 1, -1, d).transpose(1, 2)
            k = sa.key(hidden_states).view(b, t, -1, d).transpose(1, 2)
            v = sa.value(hidden_states).view(b, t, -1, d).transpose(1, 2)
            mask = attention_mask
            if mask is not None and mask.dim() == 4:
                mask = mask[:, :, :1]
            p = sa.dropout.p if sa.training else 0.0
            if p > 0:  # as sdpa's math path does it, with the whole layer's dropout draw
                scores = torch.matmul(q, k.transpose(2, 3)) * sa.scaling
                if mask is not None:
                    scores = (scores.masked_fill(~mask, float("-inf"))
                              if mask.dtype == torch.bool else scores + mask)
                probs = drop(scores.softmax(-1), p, (b, q.shape[1], t, t), v)
                attn = torch.matmul(probs.to(v.dtype), v).transpose(1, 2)
            else:
                attend = ALL_ATTENTION_FUNCTIONS.get_interface(
                    sa.config._attn_implementation, eager_attention_forward
                )
                attn, _w = attend(sa, q, k, v, mask, scaling=sa.scaling, dropout=0.0)
            x = so.dense(attn.reshape(b, 1, -1))
            x = so.LayerNorm(drop(x, so.dropout.p if so.training else 0.0, (b, t, h), x) + cls)
            y = out.dense(self.layer.intermediate(x))
            return out.LayerNorm(drop(y, out.dropout.p if out.training else 0.0, (b, t, h), y) + x)

    return ClsTop()


def _replays_dropout(layer: Any) -> bool:
    # Dropouts other than BERT's own three (e.g. LoRA's on the query input) would draw fewer
    # random numbers on one row and change the run.
    import torch

    own = {id(layer.attention.self.dropout), id(layer.attention.output.dropout),
           id(layer.output.dropout)}
    return all(
        m.p == 0 or id(m) in own for m in layer.modules() if isinstance(m, torch.nn.Dropout)
    )


@contextlib.contextmanager
def _cls_top(base: Any | None, training: bool) -> Iterator[None]:
    """Run the top encoder layer of ``base`` (a BertModel, or None: no change) for [CLS] only:
    always in evaluation; in training when it gives the same run (see :func:`_replays_dropout`).
    """
    layers = base.encoder.layer if base is not None else []
    if not len(layers):
        yield
        return
    top = layers[-1]
    wrapped = type(top).__name__ == "ClsTop"  # an outer context did it already
    if wrapped or (training and top.training and not _replays_dropout(top)):
        yield
        return
    layers[-1] = _cls_top_layer(top)
    try:
        yield
    finally:
        layers[-1] = top


# --- evaluation ---------------------------------------------------------------------------


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    f1: float
    predictions: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {"val_loss": self.loss, "val_accuracy": self.accuracy, "val_f1": self.f1}


def evaluate(
    model: Any,
    inputs: list[Any],
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    pad_id: int,
    autocast: Any,
    cached: bool,
) -> EvalResult:
    """Loss, accuracy and macro-F1 on one split, in inference mode, batched by length."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    lengths = np.array([len(x) for x in inputs])
    order = np.argsort(lengths, kind="stable")
    preds = np.zeros(len(inputs), dtype=np.int64)
    total = 0.0
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    top = inner.base_model if _cls_top_applies(inner) else None
    with torch.inference_mode(), autocast(), _cls_top(top, training=False):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = _forward(model, [inputs[i] for i in idx], pad_id, cached)
            y = torch.from_numpy(labels[idx])
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            preds[idx] = logits.argmax(-1).numpy()
    model.train(was_training)
    return EvalResult(
        loss=total / max(len(inputs), 1),
        accuracy=float(np.mean(preds == labels)) if len(labels) else 0.0,
        f1=macro_f1(labels, preds, n_classes),
        predictions=preds,
    )


def _forward(model: Any, batch: list[Any], pad_id: int, cached: bool) -> torch.Tensor:
    import torch

    if cached:
        hidden, mask = _pad_hidden(batch)
        return model(inputs_embeds=hidden, attention_mask=mask).logits
    ids, mask = _pad_ids(batch, pad_id)
    return model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits


# --- checkpoints --------------------------------------------------------------------------


def _checkpoint_path(cfg: TextClassificationConfig, study: str, number: int) -> Path:
    assert cfg.checkpoint_dir is not None
    return Path(cfg.checkpoint_dir) / study / f"trial-{number}.pt"


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a worker killed mid-write leaves the previous checkpoint


def _find_checkpoint(
    trial: optuna.Trial, cfg: TextClassificationConfig
) -> tuple[int, Path] | None:
    if cfg.checkpoint_dir is None:
        return None
    attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    for number in reversed(attrs.get("retry_history", [])):
        path = _checkpoint_path(cfg, trial.study.study_name, number)
        if path.exists():
            return number, path
    return None


# --- the trial ----------------------------------------------------------------------------


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates it, slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _native_bf16_here() -> bool:
    return native_bf16()


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where the CPU runs it natively, else ``fp32``; others as given.

    Measured here (``python -m benchmarks.precision``, BENCHMARKS.md): bf16 autocast trains
    1.6x faster on an AVX512-BF16 CPU with the same best validation loss and accuracy.
    """
    if precision == "auto":
        return "bf16" if _native_bf16_here() else "fp32"
    return precision


def _autocast(precision: str) -> Any:
    import torch

    precision = resolve_precision(precision)
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _optimizer(model: Any, hp: dict[str, Any]) -> torch.optim.Optimizer:
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen: no gradient, no optimizer state
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(hp["weight_decay"])},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel for all tensors (as HF Trainer's default `adamw_torch_fused`): on CPU
    # torch's default is a per-tensor loop, 4x slower, ~15% of a full fine-tuning step.
    fused = all(p.device.type in ("cpu", "cuda") for p in [*decay, *no_decay])
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=float(hp["learning_rate"]), fused=fused
    )


def _schedule(total: int, warmup: int, kind: str) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return factor


def _set_dropout(model: Any, p: float | None) -> None:
    import torch

    if p is None:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = float(p)


def _apply_lora(model: Any, hp: dict[str, Any], k: int, n_layers: int) -> Any:
    from peft import LoraConfig
    from peft import TaskType
    from peft import get_peft_model

    targets = [t.strip() for t in str(hp["target_modules"]).split(",") if t.strip()]
    extra: dict[str, Any] = {}
    if 0 < k < n_layers:
        extra = {"layers_to_transform": list(range(k, n_layers)), "layers_pattern": "layer"}
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=int(hp["r"]),
        lora_alpha=int(hp["lora_alpha"]),
        lora_dropout=float(hp["lora_dropout"]),
        target_modules=targets,
        **extra,
    )
    with warnings.catch_warnings():
        # peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        return get_peft_model(model, config)


def _fresh_model(base_model: Any, k: int, lora: bool) -> tuple[Any, set[int]]:
    """A trial's own copy of the pretrained model, never a reload from disk.

    The embeddings and bottom ``k`` layers that a (non-LoRA) trial freezes are never written:
    the copy shares their weights with the base model instead of copying them (at freeze 6 of
    MiniLM, 88 of 91 MB). LoRA copies everything, as merging an adapter writes the base
    weights. Returns the copy and the ids of the shared parameters (they stay frozen).
    """
    import torch

    memo: dict[int, Any] = {}
    if k > 0 and not lora and supports_prefix_cache(base_model):
        base = base_model.base_model
        for module in (base.embeddings, *list(base.encoder.layer)[:k]):
            for t in (*module.parameters(), *module.buffers()):
                memo[id(t)] = t
    shared = {i for i, t in memo.items() if isinstance(t, torch.nn.Parameter)}
    return copy.deepcopy(base_model, memo), shared


def fine_tune(
    trial: optuna.Trial,
    hp: dict[str, Any],
    cfg: TextClassificationConfig,
    res: Resources,
    *,
    use_prefix_cache: bool = True,
    stop_at: int | None = None,
    train_on: Literal["train", "train+validation"] = "train",
    on_model: Callable[[Any], None] | None = None,
) -> float:
    """Train one configuration, reporting ``cfg.metric`` at each fidelity step.

    ``use_prefix_cache=False`` recomputes the frozen layers at every step (same results,
    slower): the reference the cache is tested against.

    The final retrain of ``hpo export`` uses the other keywords: ``stop_at`` stops after that
    many training examples (the same run as the search's up to there: same order, batches and
    learning-rate schedule); ``train_on="train+validation"`` trains on both splits, keeping the
    search's schedule (planned on the training split); ``on_model`` is called with the trained
    model (whole again, a peft model for LoRA) before the function returns.

    Raises:
        optuna.TrialPruned: when the pruner stops the trial (user attrs are set first).
        FloatingPointError: on a NaN or infinite training loss.
    """
    import torch
    import torch.nn.functional as F

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.deterministic)
    precision = resolve_precision(cfg.precision)
    autocast = _autocast(precision)
    n_classes = len(res.splits.label_names)
    train_enc, val_enc = res.encoded["train"], res.encoded["validation"]
    n_layers = res.num_layers
    k = int(hp["freeze_layers"])
    lora = hp["finetuning"] == "lora"
    batch_size = int(hp["batch_size"])

    model, shared = _fresh_model(res.base_model, k, lora)
    for p in model.parameters():
        if id(p) not in shared:
            p.requires_grad_(True)
    _set_dropout(model, hp["dropout"])
    splittable = supports_prefix_cache(model)
    cls_base = model.base_model if _cls_top_applies(model) else None  # before LoRA wraps it
    frozen: list[Any] = []
    if k > 0 and splittable:
        base = model.base_model
        frozen = [base.embeddings, *list(base.encoder.layer)[:k]]
        for m in frozen:
            m.requires_grad_(False)
    elif k > 0:
        raise ValueError(f"freeze_layers={k} needs a BERT-style encoder; {type(model).__name__}")
    if lora:
        model = _apply_lora(model, hp, k, n_layers)
    use_cache = bool(frozen) and not lora and splittable and use_prefix_cache

    # Inputs: token ids, or the frozen prefix's outputs computed once.
    t_prefix = time.perf_counter()
    if use_cache:
        key = (res.key, k, precision)
        cached = res.prefix_cache.get(key)
        if cached is None:
            # Go on from the deepest shallower prefix in the cache, if any: layers run once.
            start: dict[str, Any] = {}
            for depth in range(k - 1, 0, -1):
                shallower = res.prefix_cache.get((res.key, depth, precision))
                if shallower is not None:
                    start = {name: (depth, states) for name, states in shallower.items()}
                    break
            cached = {
                name: compute_prefix(model, enc, k, res.pad_id, cfg.eval_batch_size, autocast,
                                     start=start.get(name))
                for name, enc in (("train", train_enc), ("validation", val_enc))
            }
            size = sum(t.numel() * t.element_size() for v in cached.values() for t in v)
            res.prefix_cache.put(key, cached, size)
        train_inputs, val_inputs = cached["train"], cached["validation"]
    else:
        train_inputs, val_inputs = train_enc.ids, val_enc.ids
    prefix_seconds = time.perf_counter() - t_prefix
    train_labels = train_enc.labels
    if train_on == "train+validation":
        train_inputs = [*train_inputs, *val_inputs]
        train_labels = np.concatenate([train_enc.labels, val_enc.labels])
    lengths = np.array([len(x) for x in train_inputs])

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    optimizer = _optimizer(model, hp)
    segments = plan_segments(len(train_enc), cfg.epochs, cfg.evals_per_epoch, cfg.seed)
    total_steps = sum(math.ceil(len(s) / batch_size) for s in segments)
    if train_on == "train+validation":
        segments = plan_segments(len(train_inputs), cfg.epochs, cfg.evals_per_epoch, cfg.seed)
    warmup = int(round(float(hp["warmup_ratio"]) * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total_steps, warmup, str(hp["lr_scheduler_type"]))
    )
    planned = int(sum(len(s) for s in segments))
    trial.set_user_attr("planned_examples", planned)
    trial.set_user_attr("precision", precision)
    trial.set_user_attr("trainable_params", int(trainable))
    trial.set_user_attr("total_params", int(total_params))

    sign = 1.0 if cfg.metric == "val_loss" else -1.0
    history: list[dict[str, float]] = []
    seen = 0
    start_segment = 0
    train_seconds = 0.0
    resumed = _find_checkpoint(trial, cfg)
    if resumed is not None:
        number, path = resumed
        state = torch.load(path, weights_only=False)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, seen, start_segment = state["history"], state["seen"], state["segment"]
        for h in history:
            trial.report(h[cfg.metric], int(h["step"]))
        trial.set_user_attr("resumed_from", {"trial": number, "step": seen})

    def record(prune_reason: str | None) -> None:
        best = min(history, key=lambda h: sign * h[cfg.metric]) if history else None
        attrs: dict[str, Any] = {
            "examples_seen": seen,
            "train_seconds": round(train_seconds, 3),
            "prefix_seconds": round(prefix_seconds, 3),
            "history": history,
            "prefix_cached": use_cache,
        }
        if best is not None:
            attrs.update(
                {
                    "val_loss": best["val_loss"],
                    "val_accuracy": best["val_accuracy"],
                    "val_f1": best["val_f1"],
                    "best_step": int(best["step"]),
                }
            )
        for key_, value in attrs.items():
            trial.set_user_attr(key_, value)

    model.train()
    for m in frozen:
        m.eval()  # frozen layers: no dropout, so their outputs are fixed and cacheable
    rng = np.random.default_rng([cfg.seed, 1])
    # Names as in the whole model: inside _suffix_only the layers are renumbered.
    named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    context = _suffix_only(model, k) if use_cache else contextlib.nullcontext()
    with context, _cls_top(cls_base, training=True):
        for seg_index in range(start_segment, len(segments)):
            if stop_at is not None and seen >= stop_at:
                break
            segment = segments[seg_index]
            t0 = time.perf_counter()
            for idx in _batches(segment, lengths, batch_size, rng):
                if stop_at is not None:
                    idx = idx[: max(stop_at - seen, 0)]
                    if not len(idx):
                        break
                with autocast():
                    logits = _forward(model, [train_inputs[i] for i in idx], res.pad_id, use_cache)
                loss = F.cross_entropy(logits.float(), torch.from_numpy(train_labels[idx]))
                if not torch.isfinite(loss):
                    train_seconds += time.perf_counter() - t0
                    record(None)
                    raise FloatingPointError(
                        f"training loss is {loss.detach().item()} after {seen} examples "
                        f"(learning_rate={hp['learning_rate']:.3g})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                seen += len(idx)
            result = evaluate(
                model, val_inputs, val_enc.labels, n_classes, cfg.eval_batch_size,
                res.pad_id, autocast, use_cache,
            )
            for m in frozen:
                m.eval()
            train_seconds += time.perf_counter() - t0
            history.append(
                {"step": seen, **result.as_dict(), "seconds": round(train_seconds, 3)}
            )
            value = result.as_dict()[cfg.metric]
            trial.report(value, seen)
            if cfg.checkpoint_dir is not None and seg_index + 1 < len(segments):
                _save_checkpoint(
                    _checkpoint_path(cfg, trial.study.study_name, trial.number),
                    {
                        "trainable": {n: p.detach() for n, p in named_trainable},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history,
                        "seen": seen,
                        "segment": seg_index + 1,
                    },
                )
            if trial.should_prune():
                record("pruned")
                raise optuna.TrialPruned(f"pruned at {seen} examples ({cfg.metric}={value:.4f})")
    record(None)
    trial.set_user_attr("trial_seconds", round(time.perf_counter() - t_start, 3))
    if cfg.checkpoint_dir is not None:
        path = _checkpoint_path(cfg, trial.study.study_name, trial.number)
        path.unlink(missing_ok=True)
    if on_model is not None:
        on_model(model)
    best = min(history, key=lambda h: sign * h[cfg.metric])
    return float(best[cfg.metric])
