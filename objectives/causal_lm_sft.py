"""Supervised fine-tuning of a causal language model on chat or instruction data: the
``causal_lm_sft`` objective.

Any ``AutoModelForCausalLM`` (the packaged SmolLM2-135M-Instruct by default, ``model:
smollm2``) is fine-tuned, fully or with LoRA, on conversations (:mod:`objectives.sft_data`).
The tokenizer's chat template formats each conversation (a plain template when it has none)
and the loss counts only the assistant's tokens: logits are computed at exactly the positions
that predict one (transformers' boolean ``logits_to_keep``), not over the whole sequence.
Metrics: ``val_loss`` (mean cross-entropy per assistant token) and ``val_perplexity``
(its exponential); the trial records tokens seen and tokens per second.

The training loop, pruning, devices, LoRA, freezing (decoder blocks) and gradient accumulation
(``micro_batch_size``) are the core's (:mod:`objectives.core`); this module is the task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.config import TrainConfig
from objectives.params import TrainParams
from objectives.sft_data import IGNORE
from objectives.sft_data import ChatDataConfig
from objectives.sft_data import chat_fingerprint
from objectives.sft_data import load_chat_splits

if TYPE_CHECKING:
    import optuna
    import torch

    from objectives.core import Batch
    from objectives.sft_data import ChatSplits

__all__ = ["METRICS", "SFTConfig", "SFTTask", "check_data", "export", "fingerprint", "objective",
           "prepare", "task_for", "validate_space"]

METRICS = {"val_loss": "minimize", "val_perplexity": "minimize"}
_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """Fixed settings of a causal-LM SFT study (everything that is not searched)."""

    model: str = field(default="smollm2", metadata={
        "help": "smollm2 (the packaged SmolLM2-135M-Instruct), a local Hugging Face causal-LM "
        "folder or a hub id"})
    dataset: ChatDataConfig = field(
        default_factory=lambda: ChatDataConfig(name="chitchat"),
        metadata={"help": "built-in chitchat, or files with a messages column or prompt and "
                  "response columns"})
    max_length: int = field(default=256, metadata={
        "help": "tokens per conversation (template included); the rest is cut"})
    eval_batch_size: int = field(default=16, metadata={
        "help": "conversations per evaluation batch"})
    micro_batch_size: int | None = field(default=8, metadata={
        "help": "conversations per forward pass; a larger batch_size accumulates gradients "
        "(memory stays bounded; steps still count examples); null: the whole batch"})
    samples: int = field(default=4, metadata={
        "help": "held-out prompts answered greedily in the exported model card; 0: none"})
    max_new_tokens: int = field(default=48, metadata={
        "help": "tokens generated per reply in the model card"})

    METRICS: ClassVar[dict[str, str]] = METRICS

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, low in (("max_length", 8), ("samples", 0), ("max_new_tokens", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")

    @classmethod
    def _convert(cls, d: dict[str, Any]) -> dict[str, Any]:
        if "dataset" in d:
            d["dataset"] = ChatDataConfig.from_dict(d["dataset"])
        return d


@dataclass
class SFTResources:
    """What a worker loads once: tokenizer (with a chat template), model, encoded conversations."""

    key: tuple[Any, ...]
    tokenizer: Any
    base_model: torch.nn.Module
    structure: Any
    splits: ChatSplits
    encoded: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # (ids, labels) per conversation
    prefix_cache: Any
    device: str
    pad_id: int
    fallback_template: bool
    keep_mask: bool  # the model computes logits at the positions a boolean mask selects
    dropped: int = 0  # conversations whose answer truncation cut away entirely
    extra: dict[str, Any] = field(default_factory=dict)


def _load_tokenizer(path: str) -> tuple[Any, bool]:
    from transformers import AutoTokenizer

    from objectives.sft_data import ensure_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model {path!r}: its tokenizer cannot be loaded "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    fallback = ensure_template(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer, fallback


def _supports_keep_mask(model: Any, device: str) -> bool:
    """Whether ``model`` takes a boolean ``logits_to_keep`` (B, T) mask and returns logits for
    the selected positions only (transformers 5's Llama, Qwen2, Mistral, GPT-2, ...)."""
    import inspect

    import torch

    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return False
    ids = torch.zeros((2, 3), dtype=torch.long, device=device)
    keep = torch.tensor([[True, False, True], [False, True, False]], device=device)
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                        logits_to_keep=keep)
    except Exception:  # noqa: BLE001 (any failure means: not supported, use full logits)
        return False
    return tuple(out.logits.shape[:-1]) == (3,)


def get_sft_resources(cfg: SFTConfig, device: str) -> SFTResources:
    """Load (once per process, model, data and device) the tokenizer, model and encodings."""
    import torch
    from transformers import AutoModelForCausalLM

    from objectives.models import PrefixCache
    from objectives.models import cached_resources
    from objectives.models import quiet_transformers
    from objectives.models import remember
    from objectives.models import resolve_model_path
    from objectives.sft_data import encode_chat
    from objectives.structure import find_structure

    splits = load_chat_splits(cfg.dataset, cfg.seed)
    key = ("sft", cfg.model, cfg.max_length, splits.fingerprint, device)
    found = cached_resources(key)
    if found is not None:
        return found  # type: ignore[return-value]
    quiet_transformers()
    path = resolve_model_path(cfg.model)
    tokenizer, fallback = _load_tokenizer(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    base.to(device)
    encoded: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    dropped = 0
    for s in _SPLITS:
        rows = [encode_chat(tokenizer, chat, cfg.max_length)[:2] for chat in splits.chats[s]]
        kept = [r for r in rows if (r[1] != IGNORE).any()]
        dropped += len(rows) - len(kept)
        if not kept:
            from objectives.data import DataError

            raise DataError(f"max_length {cfg.max_length} cuts away every answer of the {s} split "
                            "(hpo check-data shows the lengths)")
        encoded[s] = kept
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    res = SFTResources(key=key, tokenizer=tokenizer, base_model=base,
                       structure=find_structure(base), splits=splits, encoded=encoded,
                       prefix_cache=PrefixCache(0), device=device, pad_id=int(pad),
                       fallback_template=fallback, keep_mask=_supports_keep_mask(base, device),
                       dropped=dropped)
    remember(res, cfg.models_in_memory)  # type: ignore[arg-type]
    return res


class SFTTask:
    """Token ids in, next-token logits out; cross-entropy on the assistant's tokens only."""

    peft_task_type = "CAUSAL_LM"
    lora_trains_head = False  # the LM head is the (tied) vocabulary: LoRA leaves it frozen

    def __init__(self, config: SFTConfig, res: SFTResources) -> None:
        self.config = config
        self.res = res
        self.base_model = res.base_model
        self.structure = res.structure
        self.prefix_cache = res.prefix_cache
        self.key = res.key
        self.fast = None  # no frozen-prefix replay for decoders (rotary positions, masks)

    def examples(self, split: str) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        return self.res.encoded[split]

    def lengths(self, split: str) -> np.ndarray:
        return np.fromiter((len(ids) for ids, _ in self.res.encoded[split]), dtype=np.int64,
                           count=len(self.res.encoded[split]))

    def collate(self, examples: Sequence[tuple[np.ndarray, np.ndarray]], device: str,
                rng: np.random.Generator | None = None) -> Batch:
        import torch

        from objectives.core import Batch

        width = max(len(ids) for ids, _ in examples)
        ids = np.full((len(examples), width), self.res.pad_id, dtype=np.int64)
        labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=np.int64)
        for i, (x, y) in enumerate(examples):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = x, y, 1
        # Position t predicts token t + 1: keep the positions whose next token is an answer's.
        keep = np.zeros((len(examples), width), dtype=bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE
        inputs: dict[str, Any] = {"input_ids": torch.from_numpy(ids).to(device),
                                  "attention_mask": torch.from_numpy(mask).to(device),
                                  "use_cache": False}
        if self.res.keep_mask:
            inputs["logits_to_keep"] = torch.from_numpy(keep).to(device)
            targets = torch.from_numpy(labels[:, 1:][keep[:, :-1]]).to(device)
        else:
            targets = torch.from_numpy(labels).to(device)
        return Batch(inputs=inputs, targets=targets, units=int(keep.sum()), tokens=int(mask.sum()))

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        """Cross-entropy summed over the assistant tokens (fp32)."""
        import torch.nn.functional as F

        logits = outputs.logits
        if self.res.keep_mask:  # (kept positions, vocab): already the answer's predictions
            return F.cross_entropy(logits.float(), batch.targets, reduction="sum")
        logits = logits[:, :-1].float()
        targets = batch.targets[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")

    def collect(self, outputs: Any, batch: Batch) -> dict[str, Any]:
        return {"loss_sum": float(self.loss(outputs, batch)), "units": batch.units,
                "n": [1] * int(batch.inputs["input_ids"].shape[0])}

    def metrics(self, collected: dict[str, Any]) -> dict[str, float]:
        loss = collected["loss_sum"] / max(collected["units"], 1)
        return {"val_loss": loss, "val_perplexity": _perplexity(loss)}


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def task_for(cfg: SFTConfig, device: str | None = None) -> SFTTask:
    """The task of ``cfg`` on this worker: data and model loaded once per process and device."""
    from objectives.distributed import worker_device

    device = device or worker_device(cfg.device)
    return SFTTask(cfg, get_sft_resources(cfg, device))


def prepare(cfg: SFTConfig) -> dict[str, Any]:
    """Read the conversations once (checking them); their fingerprint and split info."""
    splits = load_chat_splits(cfg.dataset, cfg.seed)
    return {"data_fingerprint": splits.fingerprint, "data": splits.info}


def fingerprint(cfg: SFTConfig) -> str:
    return chat_fingerprint(cfg.dataset, cfg.seed)


def validate_space(cfg: SFTConfig, distributions: dict[str, Any]) -> None:
    """Check every hyperparameter's name and range, also against the model's structure."""
    from objectives.models import check_space

    check_space(cfg, distributions, TrainParams, "causal-lm")


def objective(trial: optuna.Trial, params: dict[str, Any], cfg: SFTConfig, *,
              resume: list[int] | None = None) -> float:
    """Fine-tune with ``params``; report ``cfg.metric`` at each fidelity step; return its best."""
    from objectives.objective import run_trial

    return run_trial(trial, TrainParams.from_params(params), task_for(cfg), resume=resume)


def check_data(cfg: SFTConfig) -> list[Any]:
    """The conversation checks (:mod:`objectives.sft_data`), lengths with the model's tokenizer
    and chat template.

    Raises:
        objectives.data.DataError: a file cannot be read (bad input, not a finding).
        ValueError: the model's tokenizer cannot be loaded.
    """
    from objectives.models import quiet_transformers
    from objectives.models import resolve_model_path
    from objectives.sft_data import chat_lengths
    from objectives.sft_data import check_chats

    splits = load_chat_splits(cfg.dataset, cfg.seed)
    quiet_transformers()
    tokenizer, _ = _load_tokenizer(resolve_model_path(cfg.model))
    lengths = {s: chat_lengths(tokenizer, splits.chats[s]) for s in _SPLITS}
    return check_chats(splits, lengths, cfg.max_length)


def export(cfg: SFTConfig, params: dict[str, Any], *, n_examples: int, seeds: Sequence[int],
           include_validation: bool = False, output_dir: str | None = None,
           merge: bool = False) -> Any:
    """Retrain ``params`` with each seed, test each once, save the first seed's model (a LoRA
    adapter, or merged with ``merge``) with the tokenizer and its chat template.

    Returns:
        A :class:`objectives.final.FinalResult`: test loss and perplexity per seed; the model
        card shows greedy replies of the saved model to held-out prompts beside the references.
    """
    from objectives.final import FinalResult
    from objectives.final import retrain

    task = task_for(cfg)
    typed = TrainParams.from_params(params)
    result = FinalResult(
        seeds=[], data=task.res.splits.info, trained_on="", n_examples=0,
        params=typed.to_dict(), task="text-generation", summary_metrics=("loss", "perplexity"),
    )

    def seeded(seed: int) -> SFTTask:
        return SFTTask(dataclasses.replace(cfg, seed=seed, checkpoint_dir=None), task.res)

    retrain(seeded, typed, _test, n_examples=n_examples, seeds=seeds,
            include_validation=include_validation, output_dir=output_dir, merge=merge,
            tokenizer=task.res.tokenizer, result=result)
    result.card = _card(result, task.res.fallback_template)
    peft = result.saved == "lora-adapter"
    auto = "AutoPeftModelForCausalLM" if peft else "AutoModelForCausalLM"
    result.load = [
        f"from {'peft' if peft else 'transformers'} import {auto}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {auto}.from_pretrained("path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        'messages = [{"role": "user", "content": "Hi! How are you?"}]',
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
        'return_tensors="pt", return_dict=True)',
        "reply = model.generate(**ids, max_new_tokens=48, do_sample=False)",
        'print(tokenizer.decode(reply[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]
    return result


def _test(model: Any, task: SFTTask) -> dict[str, Any]:
    """The one evaluation on the held-out test split, and greedy replies to a few of its
    prompts."""
    from objectives.core import outputs
    from objectives.devices import Precision
    from objectives.devices import resolve_precision

    device = task.res.device
    precision = Precision(resolve_precision(task.config.precision, device), device)
    out = outputs(model, task, "test", device, precision)
    loss = out["loss_sum"] / max(out["units"], 1)
    return {"loss": loss, "perplexity": _perplexity(loss), "n_examples": len(out["n"]),
            "answer_tokens": int(out["units"]),
            "samples": generate_samples(model, task, task.config.samples, precision)}


def generate_samples(model: Any, task: SFTTask, n: int, precision: Any) -> list[dict[str, str]]:
    """Greedy replies of ``model`` to the first ``n`` test conversations' last prompts."""
    import torch

    tokenizer = task.res.tokenizer
    out = []
    was_training = model.training
    model.eval()
    for chat in task.res.splits.chats["test"][:n]:
        last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
        prompt = chat[:last]
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(task.res.device)
        with torch.inference_mode(), precision.autocast():
            ids = model.generate(**enc, max_new_tokens=task.config.max_new_tokens, do_sample=False,
                                 pad_token_id=task.res.pad_id, use_cache=True)
        reply = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        out.append({"prompt": user, "reply": reply.strip(), "reference": chat[last]["content"]})
    model.train(was_training)
    return out


def _cell(text: str, limit: int = 160) -> str:
    one = " ".join(str(text).split()).replace("|", "\\|")
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _card(result: Any, fallback_template: bool) -> list[str]:
    first = result.seeds[0]
    lines = ["", f"Test: {first.test['n_examples']} conversations, {first.test['answer_tokens']} "
             "answer tokens; loss is the mean cross-entropy per assistant token (prompt and "
             "system tokens are not scored), perplexity its exponential."]
    if fallback_template:
        lines += ["", "The base tokenizer had no chat template: the plain `### User:` / "
                  "`### Assistant:` template was used and is saved with the tokenizer."]
    samples = first.test.get("samples") or []
    if samples:
        lines += ["", f"Greedy replies of the saved model (seed {first.seed}) to held-out prompts:",
                  "", "| prompt | reply | reference |", "|---|---|---|"]
        lines += [f"| {_cell(s['prompt'])} | {_cell(s['reply'])} | {_cell(s['reference'])} |"
                  for s in samples]
    return lines
