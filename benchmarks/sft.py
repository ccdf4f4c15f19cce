"""Causal-LM SFT (issue 12): ``causal_lm_sft`` vs TRL's ``SFTTrainer`` + ``hyperparameter_search``.

Both sides fine-tune the packaged SmolLM2-135M-Instruct (``model: smollm2``) with LoRA on the
same built-in ``chitchat`` conversations (the same seeded train / validation split, the same
conversations kept: those with an answer token within ``max_length``), the same ``max_length``,
fp32 on the CPU with all cores:

- ours: :func:`objectives.core.train` (throughput) and :func:`hpo.runner.run_study` on a fresh
  SQLite file (the ``hpo run`` path: study creation, model load, tokenization, everything).
- TRL: ``SFTTrainer`` fed the same conversations as prompt-completion conversational rows
  (``{"prompt": [user turns], "completion": [assistant turn]}``), so that its completion-only
  loss scores exactly the assistant tokens ours scores (checked token by token below). The
  search is ``Trainer.hyperparameter_search(backend="optuna")`` with ``model_init`` (set on the
  trainer after construction: ``SFTTrainer`` takes no ``model_init`` argument) and
  ``hp_space``: ``model_init(trial)`` loads the model and wraps it in a peft ``LoraConfig``
  built from the trial's ``r``, ``lora_alpha`` and ``target_modules``; ``hp_space`` sets the
  learning rate, batch size and warmup ratio. TRL's CPU-unfriendly defaults are turned off as a
  fair user would: ``bf16=False`` (fp32 like ours), ``gradient_checkpointing=False``; no
  logging, no checkpoints.

The same search space (``search_spaces/sft_demo.yaml``, suggested in the same order on both
sides, so both draw the same start-up configurations), the same sampler (optuna TPE,
``n_startup_trials=3``, seeded per run) and pruner (``MedianPruner(n_startup_trials=3)``), the
same number of trials, 2 epochs with 2 evaluations per epoch (TRL: a callback asks for an
evaluation at the end of each half epoch, as ours evaluates), minimizing validation loss.

**The same validation loss.** Ours is the mean cross-entropy per assistant token over the
validation split. ``Trainer``'s ``eval_loss`` is the mean over batches of each batch's
per-token mean, weighted by examples: a different number whenever there is more than one
batch. The TRL side therefore gets a thin ``SFTTrainer`` subclass that adds up, during the
Trainer's own evaluation pass (no extra forward pass), each batch's loss times its assistant
tokens, and reports ``eval_token_loss`` = sum / tokens; the search minimizes that. The untrained
base model is evaluated on both sides first and the values must agree (to 1e-3).

Figures (each seed measured side by side, their order alternating):

1. **throughput**: assistant (answer) tokens per second of training in epoch 2, a fixed LoRA
   configuration on both sides. Ours: from the end of epoch 1's evaluation to the start of
   epoch 2's; TRL: ``on_epoch_begin`` to ``on_epoch_end`` with no evaluation. Goal ≥ 1.5×.
2. **search**: time (from the start of each side's run, data and model loading included) until
   the best validation loss so far reaches the TRL runs' median final best; TRL's median time /
   ours. Goal ≥ 3×.

Run: ``python -m benchmarks.sft [--quick]`` (``HPO_BENCH_OUT=dir`` also writes the raw JSON).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks._common import goal_line
from benchmarks._common import header
from benchmarks._common import load_average
from benchmarks._common import log
from benchmarks._common import median
from benchmarks._common import parser
from benchmarks._common import quiet
from benchmarks._common import save_json
from benchmarks._common import set_threads

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "search_spaces" / "sft_demo.yaml"
MODEL = "smollm2"
THROUGHPUT_TARGET = 1.5  # ours / TRL, answer tokens per second in epoch 2
SEARCH_TARGET = 3.0  # TRL's time to the target loss / ours
N_STARTUP = 3  # random trials before TPE models the space, on both sides
PRUNER_STARTUP = 3  # complete trials before the median pruner acts, on both sides
EVAL_BATCH_SIZE = 16  # ours' default for causal_lm_sft; TRL's per_device_eval_batch_size
AGREE = 1e-3  # the base model's validation loss must agree this closely on both sides
# The one LoRA configuration both sides train for the throughput figure.
FIXED: dict[str, Any] = {
    "learning_rate": 5e-4, "batch_size": 8, "r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
    "target_modules": "q_proj,v_proj", "warmup_ratio": 0.05, "weight_decay": 0.0,
    "lr_scheduler_type": "linear",
}
LORA_DROPOUT = 0.1  # ours' default (the space does not search it): the same on TRL's side
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"max_examples": 80, "max_length": 64, "epochs": 2, "evals_per_epoch": 2,
              "n_trials": 4, "seeds": [0]},
    "full": {"max_examples": 200, "max_length": 96, "epochs": 2, "evals_per_epoch": 2,
             "n_trials": 6, "seeds": [0, 1]},
}


# --- pure helpers (tested without a model) --------------------------------------------------


def prompt_completion(chat: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """A conversation as TRL's conversational prompt-completion row: every message before the
    last assistant turn is the prompt, that turn the completion (the turn ours scores; the
    chitchat conversations have exactly one).

    Raises:
        ValueError: no assistant turn, or more than one (TRL would not score the earlier ones).
    """
    turns = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    if len(turns) != 1:
        raise ValueError(f"expected one assistant turn, got {len(turns)}")
    last = turns[0]
    return {"prompt": [dict(m) for m in chat[:last]], "completion": [dict(chat[last])]}


def eval_targets(n_train: int, batch_size: int, epochs: int, evals_per_epoch: int) -> list[int]:
    """The optimizer steps after which TRL evaluates: the end of each of the ``evals_per_epoch``
    equal parts of every epoch (ours evaluates after each equal share of an epoch's examples),
    one batch of ``batch_size`` per step, the last batch of an epoch possibly short."""
    per_epoch = math.ceil(n_train / batch_size)
    out: list[int] = []
    for epoch in range(epochs):
        for k in range(1, evals_per_epoch + 1):
            # The step whose batch holds the last example of this part of the epoch.
            step = epoch * per_epoch + math.ceil(round(n_train * k / evals_per_epoch) / batch_size)
            if step not in out:
                out.append(step)
    return out


def best_so_far(events: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(time, loss) of each evaluation -> (time, best loss so far), only improvements."""
    out: list[tuple[float, float]] = []
    for t, loss in sorted(events):
        if not out or loss < out[-1][1]:
            out.append((t, loss))
    return out


def time_to(timeline: list[tuple[float, float]], target: float) -> float:
    """When the best loss so far first reaches ``target`` (inf: never)."""
    for t, loss in timeline:
        if loss <= target + 1e-9:
            return t
    return math.inf


# --- shared set-up --------------------------------------------------------------------------


def sft_config(settings: dict[str, Any], seed: int, evals_per_epoch: int | None = None) -> Any:
    from objectives.causal_lm_sft import SFTConfig

    return SFTConfig.from_dict({
        "model": MODEL,
        "dataset": {"name": "chitchat", "max_examples": settings["max_examples"]},
        "max_length": settings["max_length"],
        "epochs": settings["epochs"],
        "evals_per_epoch": evals_per_epoch or settings["evals_per_epoch"],
        "eval_batch_size": EVAL_BATCH_SIZE,
        "precision": "fp32",
        "device": "cpu",
        "cache_dir": None,
        "seed": seed,
    })


def kept_chats(settings: dict[str, Any], seed: int, tokenizer: Any) -> dict[str, list[Any]]:
    """Per split, the conversations ours trains and evaluates on: those with an answer token
    within ``max_length`` (ours drops the others, so TRL gets the same list)."""
    from objectives.sft_data import IGNORE
    from objectives.sft_data import ChatDataConfig
    from objectives.sft_data import encode_chat
    from objectives.sft_data import load_chat_splits

    splits = load_chat_splits(ChatDataConfig(name="chitchat",
                                             max_examples=settings["max_examples"]), seed)
    return {s: [c for c in splits.chats[s]
                if (encode_chat(tokenizer, c, settings["max_length"])[1] != IGNORE).any()]
            for s in ("train", "validation")}


@functools.lru_cache(maxsize=1)
def model_path() -> str:
    from objectives.models import resolve_model_path

    return resolve_model_path(MODEL)


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from objectives.sft_data import ensure_template

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    ensure_template(tokenizer)  # SmolLM2 has its own: only the pad token, where missing
    return tokenizer


def load_base() -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32)


def lora_model(r: int, alpha: float, targets: str, pad_id: int, fused_head: bool = False) -> Any:
    """What a TRL user's ``model_init`` returns: the model, fresh from disk, with a LoRA adapter.

    ``fused_head``: add TRL's fused LM head first. ``SFTTrainer``'s constructor patches the
    model it is given (its loss calls ``model(..., fused_lm_head=True)``), but a model from
    ``model_init`` never passes through the constructor: without this, the first training step
    of a search fails (``'CausalLMOutputWithPast' object has no attribute 'log_probs'``).
    """
    from peft import LoraConfig
    from peft import get_peft_model

    model = load_base()
    model.config.pad_token_id = pad_id  # what SFTTrainer's constructor mirrors onto the model
    if fused_head:
        from trl.trainer.utils import add_fused_lm_head

        # As SFTTrainer.__init__ does, on the base model before peft wraps it.
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    config = LoraConfig(task_type="CAUSAL_LM", r=int(r), lora_alpha=alpha,
                        lora_dropout=LORA_DROPOUT, target_modules=targets.split(","))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def trl_dataset(chats: list[Any]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([prompt_completion(c) for c in chats])


def trl_args(output_dir: str, settings: dict[str, Any], seed: int, **overrides: Any) -> Any:
    """SFTConfig a fair CPU user writes: fp32 (TRL defaults to bf16), no gradient checkpointing
    (TRL's default; it recomputes activations to save memory), no logging, no checkpoints."""
    from trl import SFTConfig

    values: dict[str, Any] = {
        "output_dir": output_dir,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "max_length": settings["max_length"],
        "num_train_epochs": settings["epochs"],
        "per_device_eval_batch_size": EVAL_BATCH_SIZE,
        "max_grad_norm": 1.0,  # ours' default too
        "weight_decay": 0.0,
        "lr_scheduler_type": "linear",
        "seed": seed,
        "data_seed": seed,
        **overrides,
    }
    return SFTConfig(**values)


@functools.lru_cache(maxsize=1)
def token_loss_trainer() -> type:
    """``SFTTrainer`` reporting ``eval_token_loss``: the mean loss per assistant token over the
    whole evaluation set (ours' ``val_loss``), added up from the batches of the Trainer's own
    evaluation pass, and the time of each evaluation."""
    from trl import SFTTrainer

    class TokenLossSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, clock: list[Any] | None = None, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._token_sums: list[float] | None = None
            self.clock = clock if clock is not None else []  # (start, end, token loss)

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if self._token_sums is not None and not model.training:
                loss = out[0] if return_outputs else out
                n = int((inputs["labels"][:, 1:] != -100).sum())  # the positions scored
                self._token_sums[0] += float(loss) * n
                self._token_sums[1] += n
            return out

        def evaluate(self, *args: Any, **kw: Any) -> dict[str, float]:
            t0 = time.perf_counter()
            self._token_sums = [0.0, 0]
            try:
                metrics = super().evaluate(*args, **kw)
            finally:
                total, n = self._token_sums
                self._token_sums = None
            metrics["eval_token_loss"] = total / max(n, 1)
            self.clock.append((t0, time.perf_counter(), metrics["eval_token_loss"]))
            return metrics

    return TokenLossSFTTrainer


def half_epoch_evals(n_train: int, epochs: int, evals_per_epoch: int,
                     begins: list[float] | None = None) -> Any:
    """A callback that asks for an evaluation at each of :func:`eval_targets`' steps (the
    trial's batch size is read when training begins; ``begins`` gets the time of each
    trial's first step)."""
    from transformers import TrainerCallback

    class EvalEveryPart(TrainerCallback):
        targets: set[int] = set()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.targets = set(eval_targets(n_train, args.train_batch_size, epochs,
                                            evals_per_epoch))
            if begins is not None:
                begins.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step in self.targets:
                control.should_evaluate = True

    return EvalEveryPart()


class _Clock:
    """Patches ``objectives.core.evaluate``: (start, end, val_loss) of each evaluation of ours."""

    def __enter__(self) -> list[tuple[float, float, float]]:
        from objectives import core

        self.events: list[tuple[float, float, float]] = []
        self.original = core.evaluate

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            result = self.original(*args, **kwargs)
            self.events.append((t0, time.perf_counter(), result["val_loss"]))
            return result

        core.evaluate = timed
        return self.events

    def __exit__(self, *exc: Any) -> None:
        from objectives import core

        core.evaluate = self.original


# --- the same measure, the same tokens --------------------------------------------------------


def check_same_measure(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Evaluate the untrained base model on both sides; compare the scored tokens one by one."""
    import numpy as np
    from transformers import PrinterCallback

    from objectives.causal_lm_sft import task_for
    from objectives.core import evaluate
    from objectives.devices import Precision
    from objectives.sft_data import IGNORE

    task = task_for(sft_config(settings, seed))
    ours = evaluate(task.base_model, task, "validation", "cpu", Precision("fp32", "cpu"))
    tokenizer = load_tokenizer()
    chats = kept_chats(settings, seed, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        model = load_base()
        trainer = token_loss_trainer()(
            model=model, args=trl_args(out, settings, seed), processing_class=tokenizer,
            train_dataset=trl_dataset(chats["train"]),
            eval_dataset=trl_dataset(chats["validation"]))
        trainer.remove_callback(PrinterCallback)
        metrics = trainer.evaluate()
        # Trainer's own eval_loss averages per batch: with smaller batches it drifts apart.
        trainer.args.per_device_eval_batch_size = 4
        small = trainer.evaluate()
        mismatched = 0
        for split, data in (("train", trainer.train_dataset), ("validation", trainer.eval_dataset)):
            encoded = task.examples(split)
            assert len(encoded) == len(data), (split, len(encoded), len(data))
            for (ids, labels), row in zip(encoded, data, strict=True):
                theirs = np.asarray(row["labels"])  # the completion mask, folded into labels
                same = (len(row["input_ids"]) == len(ids)
                        and np.array_equal(np.asarray(row["input_ids"]), ids)
                        and np.array_equal(theirs, labels))
                mismatched += not same
        answer = {s: int(sum((lab != IGNORE).sum() for _, lab in task.examples(s)))
                  for s in ("train", "validation")}
    out_row = {"ours_val_loss": ours["val_loss"], "trl_eval_loss": metrics["eval_loss"],
               "trl_token_loss": metrics["eval_token_loss"], "mismatched_rows": mismatched,
               "trl_eval_loss_batch4": small["eval_loss"],
               "trl_token_loss_batch4": small["eval_token_loss"],
               "answer_tokens": answer, "n": {s: len(task.examples(s)) for s in answer},
               "tokens": {s: int(task.lengths(s).sum()) for s in answer}}
    out_row["agree"] = abs(out_row["ours_val_loss"] - out_row["trl_token_loss"]) <= AGREE
    return out_row


# --- 1. throughput ----------------------------------------------------------------------------


def _count_padding(box: dict[str, int], ids: Any, mask: Any) -> None:
    box["slots"] += int(ids.numel())
    box["tokens"] += int(mask.sum())


def run_ours_throughput(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    from objectives.causal_lm_sft import task_for
    from objectives.core import train
    from objectives.params import TrainParams

    task = task_for(sft_config(settings, seed, evals_per_epoch=1))
    answer = int(sum(int((lab[1:] != -100).sum()) for _, lab in task.examples("train")))
    pad = {"slots": 0, "tokens": 0}
    collate = task.collate
    missing = object()

    def counted(examples: Any, device: str, rng: Any = missing) -> Any:
        # The training loop passes `rng`; evaluations and the latency probe do not.
        batch = collate(examples, device) if rng is missing else collate(examples, device, rng=rng)
        if rng is not missing:
            _count_padding(pad, batch.inputs["input_ids"], batch.inputs["attention_mask"])
        return batch

    task.collate = counted  # type: ignore[method-assign]
    params = TrainParams.from_params(FIXED)
    t0 = time.perf_counter()
    try:
        with _Clock() as evals:
            result = train(params, task)
    finally:
        del task.collate
    (_, e1, _), (s2, _, _) = evals[0], evals[1]
    epoch2 = s2 - e1
    return {"epoch2_s": epoch2, "answer_tokens": answer, "tok_per_s": answer / epoch2,
            "epoch1_s": e1 - t0, "padding": 1 - pad["tokens"] / max(pad["slots"], 1),
            "final_val_loss": result.record.history[-1].metrics["val_loss"]}


def run_trl_throughput(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    from transformers import PrinterCallback
    from transformers import TrainerCallback

    times: dict[str, list[float]] = {"begin": [], "end": []}

    class Epochs(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times["begin"].append(time.perf_counter())

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times["end"].append(time.perf_counter())

    t0 = time.perf_counter()
    tokenizer = load_tokenizer()
    chats = kept_chats(settings, seed, tokenizer)
    model = lora_model(FIXED["r"], FIXED["lora_alpha"], FIXED["target_modules"],
                       tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as out:
        trainer = token_loss_trainer()(
            model=model,
            args=trl_args(out, settings, seed, learning_rate=FIXED["learning_rate"],
                          per_device_train_batch_size=FIXED["batch_size"],
                          warmup_steps=float(FIXED["warmup_ratio"]),  # below 1: a ratio
                          eval_strategy="no"),
            processing_class=tokenizer, train_dataset=trl_dataset(chats["train"]),
            callbacks=[Epochs()])
        trainer.remove_callback(PrinterCallback)
        answer = int(sum(sum(x != -100 for x in row["labels"][1:]) for row in trainer.train_dataset))
        pad = {"slots": 0, "tokens": 0}
        collator = trainer.data_collator

        def counted(examples: Any) -> Any:
            batch = collator(examples)
            _count_padding(pad, batch["input_ids"], batch["attention_mask"])
            return batch

        trainer.data_collator = counted
        trainer.train()
    epoch2 = times["end"][1] - times["begin"][1]
    return {"epoch2_s": epoch2, "answer_tokens": answer, "tok_per_s": answer / epoch2,
            "epoch1_s": times["end"][0] - t0, "padding": 1 - pad["tokens"] / max(pad["slots"], 1)}


# --- 2. search --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _space() -> Any:
    from hpo.search_space import load_search_space

    return load_search_space(str(SPACE))


def suggest(trial: Any) -> dict[str, Any]:
    """The space of ours, suggested in the same order (what ``hpo run`` does)."""
    return _space().sample(trial)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = list(t.intermediate_values.values())
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": t.params,
                     "best": min(values) if values else None, "n_evals": len(values),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete else None})
    return rows


def run_ours_search(seed: int, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from hpo.config import config_from_dict
    from hpo.runner import run_study
    from objectives.models import clear_resources

    clear_resources()  # a new `hpo run` process: the model and tokens not yet loaded
    cfg = config_from_dict({
        "study": f"bench-sft-{seed}",
        "storage": f"sqlite:///{work}/ours-{seed}.db",
        "objective": "causal_lm_sft",
        "model": MODEL,
        "dataset": {"name": "chitchat", "max_examples": settings["max_examples"]},
        "max_length": settings["max_length"],
        "epochs": settings["epochs"],
        "evals_per_epoch": settings["evals_per_epoch"],
        "eval_batch_size": EVAL_BATCH_SIZE,
        "metric": "val_loss",
        "sampler": {"name": "tpe", "n_startup_trials": N_STARTUP, "seed": seed},
        "pruner": {"name": "median", "n_startup_trials": PRUNER_STARTUP},
        "search_space": str(SPACE),
        "n_trials": settings["n_trials"],
        "cache_dir": str(work / f"cache-{seed}"),
        "precision": "fp32",
        "device": "cpu",
        "seed": 0,
    })
    t0 = time.perf_counter()
    with _Clock() as evals:
        # Pinned to all cores, as TRL's side: unpinned, the worker splits the cores among the
        # live hpo workers of the whole machine (/tmp/hpo-workers-<uid>), counting other
        # users' unrelated `hpo run`s.
        run_study(cfg, quiet=True, threads=os.cpu_count() or 1)
    total = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    trials = study.get_trials(deepcopy=False)
    return {
        "seconds": total,
        "events": [(end - t0, loss) for _, end, loss in evals],
        "eval_seconds": sum(end - start for start, end, _ in evals),
        "n_evals": len(evals),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "trials": trial_rows(study),
    }


def run_trl_search(seed: int, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    import optuna
    from transformers import PrinterCallback

    t0 = time.perf_counter()
    studies: list[Any] = []
    clock: list[tuple[float, float, float]] = []
    inits: list[float] = []
    begins: list[float] = []
    tokenizer = load_tokenizer()
    chats = kept_chats(settings, 0, tokenizer)  # data seed 0 on both sides, as ours' `seed: 0`
    pad_id = tokenizer.pad_token_id

    def model_init(trial: Any) -> Any:
        t = time.perf_counter()
        if trial is None:
            model = lora_model(8, 16, "q_proj,v_proj", pad_id)
        else:
            studies[:] = [trial.study]
            p = suggest(trial)
            model = lora_model(p["r"], p["lora_alpha"], p["target_modules"], pad_id,
                               fused_head=True)
        inits.append(time.perf_counter() - t)
        return model

    def hp_space(trial: Any) -> dict[str, Any]:
        p = suggest(trial)  # the values model_init drew: optuna returns them again
        return {"learning_rate": p["learning_rate"],
                "per_device_train_batch_size": p["batch_size"],
                "warmup_steps": float(p["warmup_ratio"])}  # below 1: a ratio of the steps

    trainer = token_loss_trainer()(
        model=model_init(None),
        args=trl_args(str(work / f"trl-{seed}"), settings, 0, eval_strategy="no",
                      warmup_steps=0.0),  # a float, so the sampled ratio is not cast to int
        processing_class=tokenizer,
        train_dataset=trl_dataset(chats["train"]),
        eval_dataset=trl_dataset(chats["validation"]),
        callbacks=[half_epoch_evals(len(chats["train"]), settings["epochs"],
                                    settings["evals_per_epoch"], begins)],
        clock=clock,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.model_init = model_init  # SFTTrainer has no model_init argument: set it after
    trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_token_loss"],
        n_trials=settings["n_trials"],
        direction="minimize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(n_startup_trials=N_STARTUP, seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP),
    )
    states = [t.state.name.lower() for t in studies[0].get_trials(deepcopy=False)]
    return {
        "seconds": time.perf_counter() - t0,
        "events": [(end - t0, loss) for _, end, loss in clock],
        "eval_seconds": sum(end - start for start, end, _ in clock),
        "n_evals": len(clock),
        "model_init_seconds": sum(inits),
        "first_step_at": (begins[0] - t0) if begins else None,  # data prep + trainer set-up
        "trials": trial_rows(studies[0]),
        "complete": states.count("complete"),
        "pruned": states.count("pruned"),
    }


# --- the run ----------------------------------------------------------------------------------


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())


def run(quick: bool) -> list[str]:
    quiet()
    set_threads()
    settings = SETTINGS["quick" if quick else "full"]
    header("sft: causal_lm_sft vs TRL SFTTrainer + hyperparameter_search", quick)
    load_start = load_average()
    t_all = time.perf_counter()
    log(f"smollm2 + LoRA, chitchat {settings['max_examples']} conversations (70/15/15), max "
        f"length {settings['max_length']}, {settings['epochs']} epochs x "
        f"{settings['evals_per_epoch']} evals, {settings['n_trials']} trials, seeds "
        f"{settings['seeds']}, fp32, space {SPACE.name}")

    check = check_same_measure(settings, 0)
    log(f"same measure, untrained base model: ours val_loss {check['ours_val_loss']:.5f}, TRL "
        f"per-token {check['trl_token_loss']:.5f} (stock eval_loss {check['trl_eval_loss']:.5f}, "
        f"per-batch mean; at eval batch 4: stock {check['trl_eval_loss_batch4']:.5f}, per-token "
        f"{check['trl_token_loss_batch4']:.5f}); "
        f"|diff| {abs(check['ours_val_loss'] - check['trl_token_loss']):.2e} "
        f"({'agree' if check['agree'] else 'DISAGREE'}); rows whose ids or scored tokens differ: "
        f"{check['mismatched_rows']}; train {check['n']['train']} conversations, "
        f"{check['answer_tokens']['train']} answer tokens of {check['tokens']['train']}; "
        f"validation {check['n']['validation']}, {check['answer_tokens']['validation']} answer "
        f"tokens")
    if not check["agree"] or check["mismatched_rows"]:
        raise SystemExit("the two sides do not score the same tokens the same way")

    # 1. throughput
    rows = []
    for i, seed in enumerate(settings["seeds"]):
        order = ("ours", "trl") if i % 2 == 0 else ("trl", "ours")
        row: dict[str, Any] = {"seed": seed}
        for side in order:
            row[side] = (run_ours_throughput if side == "ours" else run_trl_throughput)(settings, seed)
        row["ratio"] = row["ours"]["tok_per_s"] / row["trl"]["tok_per_s"]
        rows.append(row)
        log(f"throughput seed {seed}: ours {row['ours']['tok_per_s']:6.1f} answer tok/s (epoch 2 "
            f"{row['ours']['epoch2_s']:.1f} s, padding {row['ours']['padding']:.0%}), TRL "
            f"{row['trl']['tok_per_s']:6.1f} (epoch 2 {row['trl']['epoch2_s']:.1f} s, padding "
            f"{row['trl']['padding']:.0%}); {row['ours']['answer_tokens']} / "
            f"{row['trl']['answer_tokens']} answer tokens per epoch -> {row['ratio']:.2f}x "
            f"[{load_average()}]")
    throughput = median([r["ratio"] for r in rows])

    # 2. search
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, seed in enumerate(settings["seeds"]):
            order = ("trl", "ours") if i % 2 == 0 else ("ours", "trl")
            for side in order:
                r = (run_trl_search if side == "trl" else run_ours_search)(seed, settings, work)
                r["seed"] = seed
                r["timeline"] = best_so_far(r["events"])
                runs[side].append(r)
                final = r["timeline"][-1] if r["timeline"] else (math.nan, math.nan)
                for t in r["trials"]:
                    log(f"   trial {t['number']} {t['state']:8s} best {t['best'] or 0:.4f} after "
                        f"{t['n_evals']} evals, {t['seconds'] or 0:6.1f} s: {_params(t['params'])}")
                extra = (f", model_init {r['model_init_seconds']:.1f} s in all, first training "
                         f"step at {r['first_step_at']:.1f} s" if "model_init_seconds" in r else "")
                log(f"search seed {seed} {side:4s}: {r['seconds']:6.1f} s, {r['complete']} complete, "
                    f"{r['pruned']} pruned, {r['n_evals']} evals taking {r['eval_seconds']:.1f} s "
                    f"({r['eval_seconds'] / r['seconds']:.0%}){extra}; best val loss "
                    f"{final[1]:.4f} first at {final[0]:.1f} s [{load_average()}]")
    target = median([r["timeline"][-1][1] for r in runs["trl"] if r["timeline"]])
    times = {side: [time_to(r["timeline"], target) for r in rs] for side, rs in runs.items()}
    trl_t, ours_t = median(times["trl"]), median(times["ours"])
    speedup = trl_t / ours_t if ours_t > 0 else math.inf
    for side in ("trl", "ours"):
        shown = ", ".join("never" if math.isinf(t) else f"{t:.1f} s" for t in times[side])
        log(f"{side:4s} time to val loss {target:.4f}: {shown} (median {median(times[side]):.1f} s)")

    lines = [
        goal_line("sft-throughput", f"{throughput:.2f}x", f">= {THROUGHPUT_TARGET:g}x",
                  throughput >= THROUGHPUT_TARGET),
        goal_line("sft-search", "not reached" if math.isinf(ours_t) else f"{speedup:.2f}x",
                  f">= {SEARCH_TARGET:g}x", speedup >= SEARCH_TARGET),
    ]
    log(f"total {time.perf_counter() - t_all:.0f} s; {load_start} at the start, "
        f"{load_average()} at the end")
    save_json("sft", {"quick": quick, "settings": settings, "fixed": FIXED, "check": check,
                      "throughput": {"rows": rows, "ratio": throughput},
                      "search": {"target_val_loss": target, "time_to_target": times,
                                 "speedup": speedup, "runs": runs},
                      "load_start": load_start})
    for line in lines:
        log(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    run(parser(__doc__, "80 conversations, max length 64, 4 trials, one seed").parse_args(argv).quick)


if __name__ == "__main__":
    main()
