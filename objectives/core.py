"""The training core: one function trains any task on any device, and knows nothing of optuna.

:func:`train` takes typed hyperparameters, a task (data, model, loss, metrics: see
:class:`Task`) and a device, and calls ``on_eval`` at each fidelity step; ``on_eval`` decides
whether to stop (the optuna adapter in :mod:`objectives.objective` asks the pruner there). As in
nanoGPT's ``train.py``, the device, precision (autocast and gradient scaler), data-parallel
set-up and memory accounting are decided once at the top; the loop below is device-free.

Fidelity steps are training examples seen: each epoch's shuffled order is cut into
``evals_per_epoch`` equal segments and evaluation happens exactly at each segment's end, so a
batch-8 and a batch-32 trial report at the same steps. Batches are grouped by length (little
padding) and frozen layers run once per example (:mod:`objectives.fastpath`).

Under ``torchrun`` every rank trains on its shard of each batch (gradients averaged by
``DistributedDataParallel``), evaluation outputs are gathered, only rank 0 calls ``on_eval`` and
its decision is broadcast, so all ranks stop together.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import traceback
import warnings
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import Protocol

import numpy as np

from objectives import distributed
from objectives.devices import MemoryMeter
from objectives.devices import Precision
from objectives.devices import device_name
from objectives.devices import gib
from objectives.devices import is_out_of_memory
from objectives.devices import release_memory
from objectives.devices import resolve_precision
from objectives.record import EvalPoint
from objectives.record import TrialRecord

if TYPE_CHECKING:
    import torch

    from objectives.config import TrainConfig
    from objectives.fastpath import FastPaths
    from objectives.models import PrefixCache
    from objectives.params import TrainParams
    from objectives.structure import ModelStructure

__all__ = ["Batch", "NonFiniteLoss", "OutOfMemory", "Task", "TrainError", "TrainResult",
           "plan_segments", "train", "train_folds"]

_MEGA_BATCHES = 16  # length grouping: sort this many batches' worth of examples by length


@dataclass
class Batch:
    """One batch, ready for the model."""

    inputs: dict[str, Any]  # the model's keyword inputs, on the device
    targets: Any  # what the task's loss and metrics compare the outputs with
    units: int  # what the loss averages over: examples, or (for language models) tokens
    tokens: int = 0  # input tokens (0 for tasks without tokens)


class Task(Protocol):
    """What the core needs from a task (text classification, causal-LM SFT, images...)."""

    config: TrainConfig
    peft_task_type: str  # peft's TaskType name: SEQ_CLS, CAUSAL_LM, TOKEN_CLS, ...
    base_model: torch.nn.Module  # pretrained, frozen, in eval mode, on the device: never trained
    structure: ModelStructure  # of base_model
    fast: FastPaths | None  # which fast paths base_model supports (None: none)
    prefix_cache: PrefixCache
    key: tuple[Any, ...]  # identifies model + data, for cache keys

    def examples(self, split: str) -> Sequence[Any]: ...  # "train", "validation", "test"
    def lengths(self, split: str) -> np.ndarray: ...
    def collate(self, examples: Sequence[Any], device: str) -> Batch: ...
    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor: ...  # summed over units, fp32
    def collect(self, outputs: Any, batch: Batch) -> dict[str, Any]: ...  # per-example lists
    def metrics(self, collected: dict[str, Any]) -> dict[str, float]: ...


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    record: TrialRecord
    value: float | None  # the best value of the config's metric
    stopped: bool  # ``on_eval`` asked to stop
    model: Any = None  # the trained model when ``keep_model`` (a peft model for LoRA)


class TrainError(Exception):
    """A training run that cannot go on; ``record`` holds what it measured until then, and
    ``detail`` the original error's traceback as text, where one was replaced."""

    def __init__(self, message: str, record: TrialRecord, detail: str = "") -> None:
        super().__init__(message)
        self.record = record
        self.detail = detail


class NonFiniteLoss(TrainError):
    """The training loss became NaN or infinite."""


class OutOfMemory(TrainError):
    """The device ran out of memory; the configuration is infeasible there."""


def plan_segments(n_train: int, epochs: int, evals_per_epoch: int, seed: int) -> list[np.ndarray]:
    """The training order, cut into fidelity segments (one evaluation at the end of each)."""
    segments = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n_train)
        segments.extend(np.array_split(order, min(evals_per_epoch, n_train)))
    return segments


def _batches(segment: np.ndarray, lengths: np.ndarray, batch_size: int,
             rng: np.random.Generator) -> list[np.ndarray]:
    """Length-grouped batches: little padding, still a random order of batches."""
    chunk = batch_size * _MEGA_BATCHES
    batches = []
    for start in range(0, len(segment), chunk):
        part = segment[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def train(
    params: TrainParams,
    task: Task,
    *,
    on_eval: Callable[[EvalPoint], bool] | None = None,
    on_start: Callable[[TrialRecord], None] | None = None,
    resume: Path | None = None,
    checkpoint: Path | None = None,
    stop_at: int | None = None,
    train_on: Literal["train", "train+validation"] = "train",
    keep_model: bool = False,
    fast_paths: bool = True,
) -> TrainResult:
    """Train ``task``'s model with ``params`` on ``task.config.device``; evaluate at each step.

    Args:
        params: the hyperparameters (validated).
        task: the task (its config holds the device, precision, epochs, metric...).
        on_eval: called after each evaluation (restored ones of a resumed run included, whose
            answer is ignored); returns True to stop the run there. Rank 0 only.
        on_start: called once the run is planned, before the first step, with the record so
            far (device, precision, parameter counts, planned examples). Rank 0 only.
        resume: a checkpoint to go on from (see :mod:`objectives.checkpoints`).
        checkpoint: where to save a checkpoint after each evaluation but the last.
        stop_at: stop after this many training examples (the same run as without it up to
            there: same order, batches and learning-rate schedule).
        train_on: ``train+validation`` trains on both splits with the schedule planned on the
            training split (the final model of ``hpo export --include-validation``).
        keep_model: return the trained model (whole again, a peft model for LoRA).
        fast_paths: False recomputes the frozen layers at every step (same results, slower):
            the reference the fast paths are tested against.

    Raises:
        NonFiniteLoss: the training loss became NaN or infinite.
        OutOfMemory: the device ran out of memory (what the run held is released first).
    """

    device, precision, meter, record = _setup(task)
    steps = _steps(params, task, device, precision, distributed.current(), record, meter,
                   on_restored=on_eval, on_start=on_start, resume=resume, checkpoint=checkpoint,
                   stop_at=stop_at, train_on=train_on, keep_model=keep_model,
                   fast_paths=fast_paths)
    return _guarded(lambda: _drive([steps], on_eval)[0], params, device, meter, record)


def train_folds(
    params: TrainParams,
    tasks: Sequence[Task],
    *,
    on_eval: Callable[[EvalPoint], bool] | None = None,
    on_start: Callable[[TrialRecord], None] | None = None,
    fast_paths: bool = True,
) -> TrainResult:
    """Train one configuration on k folds in lockstep (``cv_folds``): at each fidelity step every
    fold's model has seen the same number of its training examples, and ``on_eval`` gets the
    mean of the folds' validation metrics there (so pruning compares running means at equal
    examples seen). The record is the folds' mean curve; ``folds`` says how many there were.

    Raises:
        NonFiniteLoss, OutOfMemory: as :func:`train`, for any fold.
    """
    setups = [_setup(task) for task in tasks]
    steps = [
        _steps(params, task, device, precision, distributed.current(), record, meter,
               on_restored=None, on_start=on_start if i == 0 else None, resume=None,
               checkpoint=None, stop_at=None, train_on="train", keep_model=False,
               fast_paths=fast_paths)
        for i, (task, (device, precision, meter, record)) in enumerate(zip(tasks, setups, strict=True))
    ]
    device, _, meter, first = setups[0]
    combined = TrialRecord(device=first.device, device_name=first.device_name,
                           precision=first.precision, world_size=first.world_size,
                           examples_seen=0, train_seconds=0.0, prefix_seconds=0.0,
                           folds=len(tasks))

    def drive() -> TrainResult:
        results = _drive(steps, on_eval, combined)
        records = [r.record for r in results]
        combined.planned_examples = records[0].planned_examples
        combined.trainable_params = records[0].trainable_params
        combined.total_params = records[0].total_params
        combined.prefix_cached = records[0].prefix_cached
        combined.train_seconds = sum(r.train_seconds or 0.0 for r in records)
        combined.prefix_seconds = sum(r.prefix_seconds or 0.0 for r in records)
        combined.trial_seconds = sum(r.trial_seconds or 0.0 for r in records)
        tokens = [r.tokens_seen for r in records if r.tokens_seen]
        combined.tokens_seen = sum(tokens) if tokens else None
        peaks = [r.peak_memory_mb for r in records if r.peak_memory_mb is not None]
        combined.peak_memory_mb = max(peaks) if peaks else None
        cfg = tasks[0].config
        best = combined.best_point(cfg.metric, cfg.minimize)
        combined.best_step = best.step if best is not None else None
        return TrainResult(record=combined, value=best.metrics[cfg.metric] if best else None,
                           stopped=results[0].stopped)

    return _guarded(drive, params, device, meter, combined)


def _setup(task: Task) -> tuple[str, Precision, MemoryMeter, TrialRecord]:
    """The device, precision and memory meter of a run, decided once, and its empty record."""
    cfg = task.config
    ctx = distributed.current()
    device = distributed.worker_device(cfg.device)
    precision = Precision(resolve_precision(cfg.precision, device), device)
    meter = MemoryMeter(device)
    meter.start()
    record = TrialRecord(device=device, device_name=device_name(device), precision=precision.name,
                         world_size=ctx.world_size if ctx.active else None, examples_seen=0,
                         train_seconds=0.0, prefix_seconds=0.0)
    return device, precision, meter, record


def _drive(steps: list[Any], on_eval: Callable[[EvalPoint], bool] | None,
           combined: TrialRecord | None = None) -> list[TrainResult]:
    """Run the runs ``steps`` (generators of evaluation points) in lockstep; at each step the
    one point (or, for several runs, their mean, appended to ``combined``) goes to ``on_eval``
    on rank 0, and its answer (stop or go on) to every run on every rank."""
    ctx = distributed.current()
    device = combined.device if combined is not None else None
    states: dict[int, Any] = {}  # each run's own random stream (dropout), across the switches

    def advance(i: int, stop: bool | None) -> EvalPoint:
        if len(steps) > 1 and i in states:
            _set_rng_states(states[i], device or "cpu")
        try:
            return next(steps[i]) if stop is None else steps[i].send(stop)
        finally:
            if len(steps) > 1:
                states[i] = _rng_states(device or "cpu")

    points = [advance(i, None) for i in range(len(steps))]
    while True:
        point = points[0] if len(points) == 1 else _mean(points)
        if combined is not None:
            combined.history.append(point)
            combined.examples_seen, combined.tokens_seen = point.step, point.tokens
        stop = bool(on_eval(point)) if on_eval is not None and ctx.is_main else False
        stop = bool(distributed.broadcast(stop, ctx))
        results: list[TrainResult] = []
        points = []
        for i in range(len(steps)):
            try:
                points.append(advance(i, stop))
            except StopIteration as done:
                results.append(done.value)
        if results:
            if points:  # a fold ended before the others: close them (same plan, so rare)
                for s in steps:
                    s.close()
            return results


def _mean(points: list[EvalPoint]) -> EvalPoint:
    """The folds' mean metrics at a step (the first fold's step: folds differ by a row or so)."""
    keys = set.intersection(*(set(p.metrics) for p in points))
    tokens = [p.tokens for p in points if p.tokens]
    return EvalPoint(step=points[0].step,
                     metrics={k: float(np.mean([p.metrics[k] for p in points])) for k in sorted(keys)},
                     seconds=sum(p.seconds for p in points), tokens=sum(tokens) if tokens else None)


def _guarded(run: Callable[[], TrainResult], params: TrainParams, device: str,
             meter: MemoryMeter, record: TrialRecord) -> TrainResult:
    """``run()``, with running out of memory turned into :class:`OutOfMemory` once everything
    the run held is released."""
    try:
        return run()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        detail = "".join(traceback.format_exception(exc))  # text: it holds no frame
    # Out of the except block, the traceback (and every tensor its frames held) is gone.
    release_memory(device)
    peak = meter.peak_bytes()
    record.peak_memory_mb = None if peak is None else round(peak / 2**20, 1)
    raise OutOfMemory(
        f"out of memory at batch_size={params.batch_size} on {device}, peak {gib(peak)}", record,
        detail,
    )


def _steps(
    params: TrainParams,
    task: Task,
    device: str,
    precision: Precision,
    ctx: distributed.DistContext,
    record: TrialRecord,
    meter: MemoryMeter,
    *,
    on_restored: Callable[[EvalPoint], bool] | None,
    on_start: Callable[[TrialRecord], None] | None,
    resume: Path | None,
    checkpoint: Path | None,
    stop_at: int | None,
    train_on: str,
    keep_model: bool,
    fast_paths: bool,
) -> Generator[EvalPoint, bool, TrainResult]:
    """One run, top to bottom: yields each evaluation and is sent back whether to stop there;
    returns the result (see :func:`train`)."""
    import torch

    from objectives.checkpoints import load_checkpoint
    from objectives.checkpoints import save_checkpoint
    from objectives.checkpoints import trial_number
    from objectives.fastpath import cls_top
    from objectives.structure import find_structure

    cfg = task.config
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(cfg.deterministic)
    scaler = precision.scaler()
    lora, batch_size = params.lora, params.batch_size

    # The trial's own model: a copy of the pretrained one that shares the weights frozen for the
    # whole run (the bottom `freeze_layers`), and trains the rest, now or once unfrozen.
    floor = params.freeze_layers
    model, shared = _fresh_model(task, floor, lora)
    for p in model.parameters():
        if id(p) not in shared:
            p.requires_grad_(True)
    _set_dropout(model, params.dropout)
    structure = find_structure(model)
    for m in structure.frozen(floor):
        m.requires_grad_(False)
    fast = task.fast if fast_paths else None
    n_layers = structure.n_layers
    top_first = fast is not None and floor < n_layers and fast.cls_top()
    if lora:
        model = _apply_lora(model, params, structure, floor, task.peft_task_type,
                            train_head=getattr(task, "lora_trains_head", True))
    trainable = [p for p in model.parameters() if p.requires_grad]  # now or once unfrozen
    augmented = bool(getattr(task, "augments", lambda _p: False)(params))
    prefix = _Prefix(task, structure, model, trainable, precision, device, fast,
                     usable=fast is not None and not lora and not augmented)
    schedule = _Unfreezing(params, n_layers)

    splits = ("train", "validation")
    examples = {s: task.examples(s) for s in splits}
    lengths = {s: task.lengths(s) for s in splits}
    n_train = len(examples["train"])
    train_examples, train_lengths = examples["train"], lengths["train"]
    if train_on == "train+validation":
        train_examples = [*examples["train"], *examples["validation"]]
        train_lengths = np.concatenate([lengths["train"], lengths["validation"]])

    record.trainable_params = sum(p.numel() for p in trainable)
    record.total_params = sum(p.numel() for p in model.parameters())
    optimizer = _optimizer(model, params, structure)
    segments = plan_segments(n_train, cfg.epochs, cfg.evals_per_epoch, cfg.seed)
    total_steps = sum(math.ceil(len(s) / batch_size) for s in segments)
    if train_on == "train+validation":
        segments = plan_segments(len(train_examples), cfg.epochs, cfg.evals_per_epoch, cfg.seed)
    warmup = int(round(params.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total_steps, warmup, params.lr_scheduler_type)
    )
    record.planned_examples = int(sum(len(s) for s in segments))
    # What the model costs to serve, before training changes anything but its weights' values.
    record.inference_ms = _inference_ms(model, task, device, precision)
    record.export_mb = round(
        sum(p.numel() for p in (trainable if lora else model.parameters())) * 4 / 2**20, 3)
    if on_start is not None and ctx.is_main:
        on_start(record)

    seen, tokens, start_segment = 0, 0, 0
    named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if resume is not None:
        loaded = load_checkpoint(resume, device)
        if loaded is not None:
            weights, optim_state, state, rng_states = loaded
            model.load_state_dict(weights, strict=False)
            optimizer.load_state_dict(optim_state)
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            record.history = [p for d in state["history"] if (p := EvalPoint.from_dict(d))]
            seen, tokens, start_segment = state["seen"], state["tokens"], state["segment"]
            record.train_seconds = float(state["train_seconds"])
            record.resumed_from = {"trial": trial_number(resume), "step": seen}
            _set_rng_states(rng_states, device)
            for point in record.history:
                if on_restored is not None and ctx.is_main:
                    on_restored(point)

    # The frozen bottom now (all layers but the top one, with gradual unfreezing), and its
    # outputs computed once (or taken from the cache).
    t_prefix = time.perf_counter()
    prefix.set_depth(schedule.depth(len(record.history)), train_on == "train+validation")
    record.prefix_seconds = time.perf_counter() - t_prefix
    record.prefix_cached = prefix.cache is not None
    model.train()
    prefix.freeze()
    net = _wrap(model, ctx, device)
    rng = np.random.default_rng([cfg.seed, 1])
    for seg_index in range(start_segment):  # a resumed run draws the batches it would have
        _batches(segments[seg_index], train_lengths, batch_size, rng)
    micro = cfg.micro_batch_size or batch_size
    stopped = False
    top = structure if top_first else None
    # The top layer for [CLS] only goes in first: swapping the replay in copies the layer list.
    with cls_top(top, training=True), prefix.swapped():
        for seg_index in range(start_segment, len(segments)):
            if stop_at is not None and seen >= stop_at:
                break
            t0 = time.perf_counter()
            for b, idx in enumerate(_batches(segments[seg_index], train_lengths, batch_size, rng)):
                if stop_at is not None:
                    idx = idx[: max(stop_at - seen, 0)]
                    if not len(idx):
                        break
                local, weight = idx, 1.0
                if ctx.active:  # this rank's shard; an empty one runs one example at weight 0
                    local = idx[ctx.rank :: ctx.world_size]
                    if not len(local):
                        local, weight = idx[:1], 0.0
                # Augmentation draws from the batch's own seed: a run reproduces, also resumed.
                draws = np.random.default_rng([cfg.seed, 2, seg_index, b]) if augmented else None
                chunks = [local[i : i + micro] for i in range(0, len(local), micro)]
                batches = [task.collate([train_examples[i] for i in c], device, rng=draws)
                           for c in chunks]
                units = sum(x.units for x in batches) * weight
                n_tokens = sum(x.tokens for x in batches) * weight
                if ctx.active:
                    units, n_tokens = _all_sum([units, n_tokens], device)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = torch.zeros((), device=device)
                for j, (chunk, batch) in enumerate(zip(chunks, batches, strict=True)):
                    inputs = prefix.inputs(batch.inputs, chunk, "train")
                    # Gradients are averaged across ranks once, after the last chunk.
                    sync = net.no_sync() if ctx.active and j + 1 < len(chunks) else contextlib.nullcontext()
                    with sync:
                        with precision.autocast():
                            out = net(**inputs)
                        part = task.loss(out, batch) * weight
                        scaler.scale(part / max(units, 1) * ctx.world_size).backward()
                    loss_sum += part.detach()
                finite = bool(torch.isfinite(loss_sum))
                if ctx.active:
                    finite = not distributed.any_rank(not finite, ctx)
                if not finite:
                    record.train_seconds += time.perf_counter() - t0
                    record.examples_seen = seen
                    raise NonFiniteLoss(
                        f"training loss is {loss_sum.item() / max(units, 1):.4g} after "
                        f"{seen} examples (learning_rate={params.learning_rate:.3g})", record
                    )
                if cfg.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += len(idx)
                tokens += int(n_tokens)
            metrics = evaluate(model, task, "validation", device, precision, structure=top,
                               prefix=prefix)
            prefix.freeze()
            record.train_seconds += time.perf_counter() - t0
            point = EvalPoint(step=seen, metrics=metrics, seconds=record.train_seconds,
                              tokens=tokens or None)
            record.history.append(point)
            record.examples_seen, record.tokens_seen = seen, tokens or None
            stop = bool((yield point))
            if checkpoint is not None and ctx.is_main and seg_index + 1 < len(segments):
                save_checkpoint(
                    checkpoint,
                    {n: p for n, p in named_trainable},
                    optimizer.state_dict(),
                    {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "history": [p.to_dict() for p in record.history], "seen": seen,
                     "tokens": tokens, "segment": seg_index + 1,
                     "train_seconds": record.train_seconds},
                    _rng_states(device),
                )
            if stop:
                stopped = True
                break
            depth = schedule.depth(len(record.history))
            if depth != prefix.depth:  # gradual unfreezing: one more layer trains from now
                t1 = time.perf_counter()
                prefix.set_depth(depth, train_on == "train+validation")
                prefix.freeze()
                net = _wrap(model, ctx, device)
                record.prefix_seconds += time.perf_counter() - t1

    best = record.best_point(cfg.metric, cfg.minimize)
    record.best_step = best.step if best is not None else None
    record.examples_seen, record.tokens_seen = seen, tokens or None
    record.trial_seconds = time.perf_counter() - t_start
    if tokens and record.train_seconds:
        record.tokens_per_second = tokens / record.train_seconds
    peak = meter.peak_bytes()
    record.peak_memory_mb = None if peak is None else round(peak / 2**20, 1)
    value = best.metrics[cfg.metric] if best is not None else None
    return TrainResult(record=record, value=value, stopped=stopped,
                       model=model if keep_model else None)


_LATENCY_EXAMPLES = 32  # the fixed batch every trial's inference latency is measured on
_LATENCY_REPEATS = 3


def _inference_ms(model: Any, task: Task, device: str, precision: Precision) -> float | None:
    """Milliseconds per example of the whole model in inference (the task's precision), on a
    fixed batch: the first validation examples, the median of a few timed passes after one to
    warm up. The same measure in every trial, so trials compare."""
    import torch

    examples = task.examples("validation")[:_LATENCY_EXAMPLES] or task.examples("train")[:_LATENCY_EXAMPLES]
    if not len(examples):
        return None
    batch = task.collate(list(examples), device)
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode(), precision.autocast():
        for i in range(_LATENCY_REPEATS + 1):
            _sync(device)
            t0 = time.perf_counter()
            model(**batch.inputs)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
    model.train(was_training)
    return round(float(np.median(times)) * 1000 / len(examples), 4)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _wrap(model: Any, ctx: distributed.DistContext, device: str) -> Any:
    """The model under DistributedDataParallel across ranks (built again whenever the set of
    trainable parameters changes), else the model itself."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[ctx.local_rank] if device.startswith("cuda") else None
    )


class _Unfreezing:
    """The frozen depth after ``n`` evaluations: ``freeze_layers`` for the whole run, or with
    ``unfreeze_every: u``, every layer but the top one at first, one layer fewer every ``u``
    evaluations, down to ``freeze_layers``."""

    def __init__(self, params: TrainParams, n_layers: int) -> None:
        self.floor, self.every = params.freeze_layers, params.unfreeze_every
        self.start = max(self.floor, n_layers - 1) if self.every else self.floor

    def depth(self, n_evals: int) -> int:
        if not self.every:
            return self.floor
        return max(self.floor, self.start - n_evals // self.every)


class _Prefix:
    """The model's frozen bottom at the current depth: which modules are frozen (and in eval
    mode, without dropout), and, where the fast path holds, their outputs computed once per
    example and fed to the layers above through a :class:`~objectives.fastpath.Replay`."""

    def __init__(self, task: Task, structure: ModelStructure, model: Any, trainable: list[Any],
                 precision: Precision, device: str, fast: FastPaths | None, usable: bool) -> None:
        self.task, self.structure, self.model = task, structure, model
        self.trainable = {id(p) for p in trainable}  # what the run trains, now or once unfrozen
        self.precision, self.device, self.fast, self.usable = precision, device, fast, usable
        self.depth = -1
        self.cache: dict[str, list[torch.Tensor]] | None = None
        self.first_only = False
        self.replay: Any = None
        self._swapped = False

    def set_depth(self, depth: int, with_validation: bool) -> None:
        """Freeze the bottom ``depth`` layers (with the embeddings when ``depth >= 1``), let the
        rest of what the run trains train, and compute (or look up) the frozen outputs."""
        from objectives.fastpath import Replay

        swapped = self._swapped
        if swapped:
            self._swap_out()
        self.depth = depth
        frozen = {id(p) for m in self.structure.frozen(depth) for p in m.parameters()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in self.trainable and id(p) not in frozen)
        fast, n = self.fast, self.structure.n_layers
        self.first_only = fast is not None and depth == n and fast.first_token_only()
        self.cache, self.replay = None, None
        if self.usable and depth > 0 and fast is not None and fast.prefix(depth, self.first_only):
            cache = _prefix_outputs(self.task, self.structure, self.model, depth,
                                    self.first_only, self.precision, self.device)
            if with_validation:
                cache = {**cache, "train": [*cache["train"], *cache["validation"]]}
            self.cache = cache
            self.replay = Replay(self.structure.layers[depth - 1], fast.tuple_len)
        if swapped:
            self._swap_in()

    def freeze(self) -> None:
        """Frozen modules in eval mode: no dropout, so their outputs are fixed and cacheable."""
        for m in self.structure.frozen(self.depth):
            m.eval()

    def inputs(self, inputs: dict[str, Any], idx: Sequence[int], split: str) -> dict[str, Any]:
        """The model's inputs for the examples ``idx`` of ``split``, with the cached outputs
        of the frozen bottom set on the replay module."""
        from objectives.fastpath import first_positions
        from objectives.fastpath import pad_states

        if self.replay is None or self.cache is None:
            return inputs
        self.replay.states = pad_states([self.cache[split][i] for i in idx])
        return first_positions(inputs) if self.first_only else inputs

    def _swap_in(self) -> None:
        if self.replay is not None:
            self._layers = self.structure.layers
            setattr(self.structure.parent, self.structure.layers_name,
                    type(self.structure.layers)([self.replay, *list(self._layers)[self.depth:]]))
        self._swapped = True

    def _swap_out(self) -> None:
        if self.replay is not None:
            setattr(self.structure.parent, self.structure.layers_name, self._layers)
        self._swapped = False

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The replay module in place of the frozen layers, for as long as training runs."""
        self._swap_in()
        try:
            yield
        finally:
            self._swap_out()


def evaluate(model: Any, task: Task, split: str, device: str, precision: Precision,
             **kw: Any) -> dict[str, float]:
    """The task's metrics on ``split`` (see :func:`outputs` for the arguments)."""
    return task.metrics(outputs(model, task, split, device, precision, **kw))


def outputs(
    model: Any,
    task: Task,
    split: str,
    device: str,
    precision: Precision,
    *,
    structure: ModelStructure | None = None,
    prefix: _Prefix | None = None,
) -> dict[str, Any]:
    """What the task collects from the model on ``split`` (loss sums, predictions...), in
    inference mode, batched by length; under data-parallel training every rank runs its shard
    and the outputs are gathered on every rank.

    Args:
        structure: run its top layer for the first position only (see
            :func:`objectives.fastpath.cls_top`); None: as it is.
        prefix: the frozen bottom whose cached outputs feed the model (see :func:`train`).
    """
    import torch

    from objectives.fastpath import cls_top

    ctx = distributed.current()
    examples = task.examples(split)
    order = np.argsort(task.lengths(split), kind="stable")
    if ctx.active:
        order = order[ctx.rank :: ctx.world_size]
    was_training = model.training
    model.eval()
    parts: list[dict[str, Any]] = []
    batch_size = task.config.eval_batch_size
    with torch.inference_mode(), precision.autocast(), cls_top(structure, training=False):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = task.collate([examples[i] for i in idx], device)
            inputs = prefix.inputs(batch.inputs, idx, split) if prefix is not None else batch.inputs
            part = task.collect(model(**inputs), batch)
            part["index"] = [int(i) for i in idx]
            parts.append(part)
    model.train(was_training)
    if ctx.active:
        parts = [p for rank_parts in distributed.all_gather(parts, ctx) for p in rank_parts]
    return _merge(parts)


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-batch outputs as one: lists concatenated in example order, numbers summed."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                out.setdefault(key, []).extend(value)
            else:
                out[key] = out.get(key, 0) + value
    if "index" in out:
        order = np.argsort(out["index"], kind="stable")
        n = len(order)
        for key, value in out.items():
            if isinstance(value, list) and len(value) == n:
                out[key] = [value[i] for i in order]
    return out


def _rng_states(device: str) -> dict[str, torch.Tensor]:
    """torch's random-generator states (dropout), so that a resumed run draws the same."""
    import torch

    states = {"cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, torch.Tensor], device: str) -> None:
    import torch

    if "cpu" in states:
        torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.startswith("cuda"):
        torch.cuda.set_rng_state(states["cuda"], device)


def _all_sum(values: list[float], device: str) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _prefix_outputs(task: Task, structure: ModelStructure, model: Any, k: int, first_only: bool,
                    precision: Precision, device: str) -> dict[str, list[torch.Tensor]]:
    """The frozen prefix's outputs for train and validation: from the cache, or computed (from
    the deepest shallower depth in the cache, when there is one) and put in the cache."""
    from objectives.fastpath import compute_prefix

    key = (task.key, k, precision.name, first_only)
    hit = task.prefix_cache.get(key)
    if hit is not None:
        return hit
    start: dict[str, Any] = {}
    if not first_only:
        for depth in range(k - 1, 0, -1):
            shallower = task.prefix_cache.get((task.key, depth, precision.name, False))
            if shallower is not None:
                start = {name: (depth, states) for name, states in shallower.items()}
                break
    out = {}
    for split in ("train", "validation"):
        examples, lengths = task.examples(split), task.lengths(split)
        order = np.argsort(lengths, kind="stable")
        size = task.config.eval_batch_size
        batches = [
            (idx, task.collate([examples[i] for i in idx], device).inputs)
            for idx in (order[s : s + size] for s in range(0, len(order), size))
        ]
        out[split] = compute_prefix(
            model, structure, batches, len(examples), k, lengths, precision.autocast,
            task.fast.tuple_len, first_only, start.get(split),
        )
    nbytes = sum(t.numel() * t.element_size() for states in out.values() for t in states)
    task.prefix_cache.put(key, out, nbytes)
    return out


def _fresh_model(task: Task, k: int, lora: bool) -> tuple[Any, set[int]]:
    """A trial's own copy of the pretrained model, never a reload from disk.

    The modules that a (non-LoRA) trial freezes are never written: the copy shares their weights
    with the base model instead of copying them (at freeze 6 of MiniLM, 88 of 91 MB). LoRA
    copies everything, as merging an adapter writes the base weights. Returns the copy and the
    ids of the shared parameters (they stay frozen).
    """
    import torch

    memo: dict[int, Any] = {}
    if k > 0 and not lora:
        for module in task.structure.frozen(k):
            for t in (*module.parameters(), *module.buffers()):
                memo[id(t)] = t
    shared = {i for i, t in memo.items() if isinstance(t, torch.nn.Parameter)}
    return copy.deepcopy(task.base_model, memo), shared


def _optimizer(model: Any, params: TrainParams, structure: ModelStructure) -> torch.optim.Optimizer:
    """AdamW over what the run trains (now or once unfrozen): no weight decay on biases and
    norms' weights (the 1-d tensors, as in BERT and HF Trainer); with ``layer_decay < 1``, layer
    ``i`` of ``n`` learns at ``learning_rate * layer_decay ** (n - 1 - i)`` and the embeddings
    at ``layer_decay ** n`` of it (the head and what follows the layers at the full rate)."""
    import torch

    n = structure.n_layers
    depth_of: dict[int, int] = {}  # parameter id -> its depth below the top (0: the top layer)
    if params.layer_decay < 1.0:
        for m in (*structure.pre, *structure.shared):
            depth_of.update({id(p): n for p in m.parameters()})
        for i, layer in enumerate(structure.layers):
            depth_of.update({id(p): n - 1 - i for p in layer.parameters()})
    groups: dict[tuple[int, bool], list[Any]] = {}
    for p in model.parameters():
        if p.requires_grad:  # frozen for the whole run: no gradient, no optimizer state
            groups.setdefault((depth_of.get(id(p), 0), p.ndim >= 2), []).append(p)
    lr = float(params.learning_rate)
    param_groups = [
        {"params": ps, "lr": lr * params.layer_decay ** depth,
         "weight_decay": float(params.weight_decay) if decays else 0.0}
        for (depth, decays), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]
    # One fused kernel for all tensors (as HF Trainer's default `adamw_torch_fused`): on CPU
    # torch's default is a per-tensor loop, 4x slower, ~15% of a full fine-tuning step.
    fused = all(p.device.type in ("cpu", "cuda") for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, lr=lr, fused=fused)


def _schedule(total: int, warmup: int, kind: str) -> Callable[[int], float]:
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


def _apply_lora(model: Any, params: TrainParams, structure: ModelStructure, k: int,
                task_type: str, train_head: bool = True) -> Any:
    """Wrap ``model`` with LoRA adapters (peft) on the layers above ``k``; the task's head
    (every module outside the backbone) trains fully when ``train_head`` (a new classifier),
    and stays frozen otherwise (a language model's head: the pretrained vocabulary)."""
    from peft import LoraConfig
    from peft import TaskType
    from peft import get_peft_model

    from objectives.structure import check_lora_targets
    from objectives.structure import default_lora_targets
    from objectives.structure import lora_target_names

    if params.target_modules is None:
        targets = default_lora_targets(structure)
    else:
        targets = check_lora_targets(structure, params.target_modules)
    extra: dict[str, Any] = {}
    n = structure.n_layers
    if 0 < k < n:
        extra = {"layers_to_transform": list(range(k, n)), "layers_pattern": structure.layers_name}
        if targets == "all-linear":  # peft takes no layer subset with all-linear: name them
            targets = lora_target_names(structure)
    head = [name for name, child in model.named_children()
            if child is not structure.backbone and any(True for _ in child.parameters())]
    if not train_head:
        head = []
    # GPT-2's linear layers are Conv1D, whose weight is stored transposed.
    conv1d = any(type(m).__name__ == "Conv1D" for m in structure.layers[0].modules())
    config = LoraConfig(
        task_type=TaskType[task_type],
        r=int(params.r),
        lora_alpha=params.lora_alpha,
        lora_dropout=float(params.lora_dropout),
        target_modules=targets,
        modules_to_save=head or None,
        fan_in_fan_out=conv1d,
        **extra,
    )
    with warnings.catch_warnings():
        # peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        return get_peft_model(model, config)
