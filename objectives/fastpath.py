"""Fast paths that skip work whose result is known, each checked on the model before use.

**Frozen-prefix cache.** With the embeddings and the bottom ``k`` layers frozen and in eval mode
(no dropout), their outputs never change: :func:`compute_prefix` computes them once per example,
and during training the model runs with ``layers[:k]`` replaced by one :class:`Replay` module
that returns the cached outputs of layer ``k - 1`` for the batch. The model's own forward still
builds its masks and position encodings, so this works for any architecture whose layers run in
order (see :mod:`objectives.structure`); when every layer is frozen and the head reads only the
first position, only that position is kept and fed.

**Top layer for the first token.** When the head reads only the first position of the top
layer (BERT's pooler, RoBERTa's and ELECTRA's classification heads), the top layer's queries,
attention output and feed-forward (3/4 of it) need to run for that position only
(:func:`cls_top_layer`, for layers with BERT's anatomy).

Both are verified on the real model by :class:`FastPaths` before a trial uses them: the fast
and the plain computation of a few examples must give the same outputs, else the plain path
runs. A test shows both give the same numbers for a tiny model of every family.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from objectives.structure import ModelStructure

__all__ = ["FastPaths", "Replay", "compute_prefix", "replaying", "cls_top"]

_LOG = logging.getLogger("hpo.objectives")
_PROBE_EXAMPLES = 4


class _StopForward(Exception):
    """Raised by a hook once the layer whose output we want has run: skip the rest."""


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def Replay(layer: Any, tuple_len: int) -> Any:  # noqa: N802 (a module factory)
    """A module that stands in for ``layers[:k]``: it returns ``self.states`` (the cached outputs
    of layer ``k - 1`` for the batch) in the container its ``layer`` returns (a tensor, or a
    tuple of ``tuple_len``). Other attributes (e.g. a decoder layer's ``attention_type``) read
    through to ``layer``."""
    import torch

    class _Replay(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.__dict__["_layer"] = layer  # not a submodule: its weights stay out of the model
            self.states: torch.Tensor | None = None
            self.tuple_len = tuple_len

        def forward(self, hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
            assert self.states is not None, "Replay.states not set for this batch"
            if self.tuple_len:
                return (self.states, *([None] * (self.tuple_len - 1)))
            return self.states

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.__dict__["_layer"], name)

    return _Replay()


@contextlib.contextmanager
def replaying(structure: ModelStructure, replay: Any, start: int) -> Iterator[None]:
    """Run ``replay`` in place of ``layers[:start]`` (the layers above run as they are)."""
    import torch

    layers = structure.layers
    setattr(structure.parent, structure.layers_name,
            torch.nn.ModuleList([replay, *list(layers)[start:]]))
    try:
        yield
    finally:
        setattr(structure.parent, structure.layers_name, layers)


def pad_states(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-example ``[length, hidden]`` states as one zero-padded ``[batch, width, hidden]``."""
    import torch

    return torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True)


def first_positions(inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch's inputs cut to the first position (``[batch, length]`` tensors only)."""
    return {k: (v[:, :1] if hasattr(v, "dim") and v.dim() == 2 else v) for k, v in inputs.items()}


def _tuple_len(structure: ModelStructure, model: Any, inputs: dict[str, Any]) -> int:
    import torch

    seen: list[Any] = []

    def hook(_m: Any, _a: Any, out: Any) -> None:
        seen.append(out)
        raise _StopForward

    handle = structure.layers[0].register_forward_hook(hook)
    try:
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            model(**inputs)
    finally:
        handle.remove()
    return len(seen[0]) if seen and isinstance(seen[0], tuple) else 0


def compute_prefix(
    model: Any,
    structure: ModelStructure,
    batches: Sequence[tuple[np.ndarray, dict[str, Any]]],
    n_examples: int,
    k: int,
    lengths: np.ndarray,
    autocast: Callable[[], Any],
    tuple_len: int,
    first_only: bool = False,
    start: tuple[int, Sequence[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """The outputs of layer ``k - 1`` (embeddings and ``layers[:k]``), one ``[length, hidden]``
    tensor per example (``[1, hidden]`` with ``first_only``), in fp32 on the model's device.

    Args:
        batches: ``(example indices, model inputs)`` covering every example once.
        lengths: each example's length (rows kept per example).
        start: ``(j, outputs of layer j - 1)`` from a shallower cached depth ``j < k``: only
            layers ``j..k - 1`` run.
    """
    import torch

    out: list[torch.Tensor | None] = [None] * n_examples
    captured: list[torch.Tensor] = []

    def hook(_m: Any, _a: Any, output: Any) -> None:
        captured.append(_hidden(output))
        raise _StopForward

    handle = structure.layers[k - 1].register_forward_hook(hook)
    j, states = start if start is not None else (0, None)
    replay = Replay(structure.layers[j - 1], tuple_len) if states is not None else None
    swap = replaying(structure, replay, j) if replay is not None else contextlib.nullcontext()
    try:
        with torch.inference_mode(), autocast(), swap:
            for idx, inputs in batches:
                if replay is not None:
                    replay.states = pad_states([states[i] for i in idx])
                captured.clear()
                with contextlib.suppress(_StopForward):
                    model(**inputs)
                hidden = captured[0].float()
                for row, i in enumerate(idx):
                    n = 1 if first_only else int(lengths[i])
                    out[i] = hidden[row, :n].clone()
    finally:
        handle.remove()
    return out  # type: ignore[return-value]


# --- the top layer for the first position only (BERT anatomy) -----------------------------


def _has_bert_anatomy(layer: Any) -> bool:
    sa = getattr(getattr(layer, "attention", None), "self", None)
    so = getattr(getattr(layer, "attention", None), "output", None)
    out = getattr(layer, "output", None)
    return all(
        hasattr(x, a)
        for x, names in ((sa, ("query", "key", "value", "dropout", "attention_head_size",
                               "scaling", "config")),
                         (so, ("dense", "LayerNorm", "dropout")),
                         (out, ("dense", "LayerNorm", "dropout")),
                         (layer, ("intermediate",)))
        for a in names
    )


def cls_top_layer(layer: Any) -> Any:
    """``layer`` (BERT anatomy) computed for the first row only: keys and values still see every
    token, but the query, attention output and feed-forward (3/4 of the layer) run on one row.
    The same outputs as the whole layer for that row.

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
    # Dropouts other than the layer's own three (e.g. LoRA's on the query input) would draw
    # fewer random numbers on one row and change the run.
    import torch

    own = {id(layer.attention.self.dropout), id(layer.attention.output.dropout),
           id(layer.output.dropout)}
    return all(
        m.p == 0 or id(m) in own for m in layer.modules() if isinstance(m, torch.nn.Dropout)
    )


@contextlib.contextmanager
def cls_top(structure: ModelStructure | None, training: bool) -> Iterator[None]:
    """Run the top layer of ``structure`` (None: no change) for the first row only: always in
    evaluation; in training when it gives the same run (see :func:`_replays_dropout`)."""
    if structure is None or not len(structure.layers):
        yield
        return
    layers = structure.layers
    top = layers[-1]
    wrapped = type(top).__name__ == "ClsTop"  # an outer context did it already
    if wrapped or (training and top.training and not _replays_dropout(top)):
        yield
        return
    layers[-1] = cls_top_layer(top)
    try:
        yield
    finally:
        layers[-1] = top


# --- the checks ---------------------------------------------------------------------------


class FastPaths:
    """Which fast paths a model supports, found once per model by running both computations.

    Args:
        model: the base model (eval mode, on its device); probes restore whatever they change.
        structure: its structure.
        probe: model inputs of a few examples, and their lengths.
    """

    def __init__(self, model: Any, structure: ModelStructure,
                 probe: tuple[dict[str, Any], np.ndarray]) -> None:
        self.model = model
        self.structure = structure
        self.inputs, self.lengths = probe
        self._memo: dict[Any, bool] = {}
        self.tuple_len = _tuple_len(structure, model, self.inputs)

    def _logits(self, **kw: Any) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.model(**kw).logits.float()

    def _same(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        import torch

        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4))

    def _check(self, key: Any, fn: Callable[[], bool]) -> bool:
        if key not in self._memo:
            try:
                self._memo[key] = bool(fn())
            except Exception as exc:  # a path that cannot run is a path that does not apply
                _LOG.debug("fast path %s does not apply: %s", key, exc)
                self._memo[key] = False
            if not self._memo[key]:
                _LOG.debug("fast path %s does not apply to %s: plain path", key,
                           type(self.model).__name__)
        return self._memo[key]

    def first_token_only(self) -> bool:
        """Whether the head reads only the first position of the top layer's output."""
        import torch

        def probe() -> bool:
            plain = self._logits(**self.inputs)

            def scramble(_m: Any, _a: Any, output: Any) -> Any:
                hidden = _hidden(output).clone()
                rest = hidden[:, 1:]
                # A generator of its own: a probe inside a trial must not move the trial's seed.
                gen = torch.Generator(device=rest.device).manual_seed(0)
                hidden[:, 1:] = torch.randn(rest.shape, generator=gen, device=rest.device,
                                            dtype=rest.dtype) * 3
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handle = self.structure.layers[-1].register_forward_hook(scramble)
            try:
                other = self._logits(**self.inputs)
            finally:
                handle.remove()
            return self._same(plain, other)

        return self._check("first-token", probe)

    def prefix(self, k: int, first_only: bool) -> bool:
        """Whether replaying cached outputs of ``layers[:k]`` gives the plain outputs."""

        def probe() -> bool:
            plain = self._logits(**self.inputs)
            n = len(self.lengths)
            states = compute_prefix(
                self.model, self.structure, [(np.arange(n), self.inputs)], n, k, self.lengths,
                contextlib.nullcontext, self.tuple_len, first_only,
            )
            replay = Replay(self.structure.layers[k - 1], self.tuple_len)
            replay.states = pad_states(states)
            inputs = first_positions(self.inputs) if first_only else self.inputs
            with replaying(self.structure, replay, k):
                fast = self._logits(**inputs)
            return self._same(plain, fast)

        return self._check(("prefix", k, first_only), probe)

    def cls_top(self) -> bool:
        """Whether the top layer may run for the first position only."""

        def probe() -> bool:
            if not (_has_bert_anatomy(self.structure.layers[-1]) and self.first_token_only()):
                return False
            plain = self._logits(**self.inputs)
            with cls_top(self.structure, training=False):
                fast = self._logits(**self.inputs)
            return self._same(plain, fast)

        return self._check("cls-top", probe)
