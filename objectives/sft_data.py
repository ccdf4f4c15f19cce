"""Chat and instruction data for causal-LM supervised fine-tuning: conversations as lists of
``{role, content}`` messages, read from JSONL / JSON / CSV / parquet (a ``messages`` column, or
``prompt`` and ``response`` columns) through ``datasets``, or the built-in ``chitchat`` pairs;
seeded train/validation/test splits; the chat template and the assistant-token mask; the
data checks.

============================  ========  ===========================================================
code                          severity  what
============================  ========  ===========================================================
``unknown-role``              error     a message whose role is not system, user or assistant
``no-answer``                 error     a conversation with no assistant turn, or only empty ones
                                        (nothing to learn from it)
``answer-cut``                error     a conversation whose every answer token lies beyond
                                        ``max_length`` (truncation would leave nothing to learn)
``leakage``                   error     the same conversation in two splits
``empty-turns``               warning   empty messages beside a non-empty answer
``train-duplicates``          warning   the same conversation more than once in train
``truncated``                 warning   conversations longer than ``max_length`` tokens (their
                                        end is cut: the share, and the longest)
============================  ========  ===========================================================

Training drops the conversations an error finding names (``hpo run --allow``); the loss counts
only assistant tokens (each answer and its end-of-turn marker), never the system or user ones.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import ClassVar

import numpy as np

from objectives.checks import Finding
from objectives.data import DataError
from objectives.data import read_error
from objectives.sources import SPLITS
from objectives.sources import SourceConfig
from objectives.sources import memoized_splits
from objectives.sources import package_dir
from objectives.sources import source_fingerprint
from objectives.sources import split_rows

__all__ = ["ChatDataConfig", "ChatSplits", "FALLBACK_TEMPLATE", "ROLES", "check_chats",
           "encode_chat", "load_chat_splits", "chat_fingerprint", "ensure_template"]

ROLES = ("system", "user", "assistant")
IGNORE = -100
_N = 3
_SHORT = 32  # chitchat: words per turn of the pair picked, where the conversation has such
Message = dict[str, str]

# The plain template for tokenizers without one: role headers, the answer ends with EOS.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatDataConfig(SourceConfig):
    """Conversations: ``name: chitchat``, ``path`` (one file split here) or pre-split files."""

    messages_column: str = field(default="messages", metadata={
        "help": "column holding each conversation as a list of {role, content}"})
    prompt_column: str = field(default="prompt", metadata={
        "help": "with no messages column: the user's prompt"})
    response_column: str = field(default="response", metadata={
        "help": "with no messages column: the assistant's answer"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "a system message put first in every conversation that has none; null: none "
        "(the chat template may add its own)"})

    BUILTINS: ClassVar[dict[str, str]] = {
        "chitchat": "BYU chit-chat conversations: one adjacent pair of turns (a user's turn, "
        "the reply; turns of at most 32 words where the conversation has them) per "
        "conversation, 7,168 conversations, exact duplicates dropped.",
    }
    EXTENSIONS: ClassVar[tuple[str, ...]] = (".jsonl", ".json", ".csv", ".parquet",
                                             ".jsonl.gz", ".json.gz", ".csv.gz")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("messages_column", "prompt_column", "response_column"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise DataError(f"dataset.{key} must be a column name, got {value!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise DataError(f"dataset.system_prompt must be a string or null, got {self.system_prompt!r}")


@dataclass(frozen=True)
class ChatSplits:
    """Conversations per split, each a list of ``{"role", "content"}`` messages."""

    chats: dict[str, list[list[Message]]]
    names: dict[str, list[str]]  # "file:row" of each conversation
    fingerprint: str
    info: dict[str, Any]
    # Conversations that an error finding names (unknown roles, no answer), by split: read
    # for the checks, left out of training.
    rejected: dict[str, list[tuple[str, list[Message]]]] = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------


def _builtin_file(name: str) -> Path:
    return package_dir("chitchat_dataset", name) / "dataset.json"


def _read_chitchat(path: Path) -> tuple[list[list[Message]], list[str]]:
    """One adjacent pair of turns per conversation (a fixed choice, among the pairs of turns of
    at most 32 words where there are some: the dataset does not depend on the study's seed), a
    turn's utterances joined; exact duplicate pairs dropped."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rng = np.random.default_rng(0)
    chats, names, seen = [], [], set()
    for key in sorted(data):
        turns = [" ".join(str(u.get("text", "")).strip() for u in turn).strip()
                 for turn in data[key].get("messages", [])]
        turns = [t for t in turns if t]
        if len(turns) < 2:
            continue
        short = [i for i in range(len(turns) - 1)
                 if len(turns[i].split()) <= _SHORT and len(turns[i + 1].split()) <= _SHORT]
        i = int(rng.choice(short)) if short else int(rng.integers(len(turns) - 1))
        pair = (turns[i], turns[i + 1])
        if pair in seen:
            continue
        seen.add(pair)
        chats.append([{"role": "user", "content": pair[0]},
                      {"role": "assistant", "content": pair[1]}])
        names.append(f"chitchat:{key}")
    return chats, names


def _as_messages(value: Any, where: str) -> list[Message]:
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: the messages cell is not a JSON list of "
                            "{role, content}") from None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise DataError(f"{where}: messages must be a list of {{role, content}} objects, got "
                        f"{type(value).__name__}")
    out = []
    for m in value:
        if "role" not in m or "content" not in m:
            raise DataError(f"{where}: a message without 'role' or 'content' (keys: "
                            f"{', '.join(map(str, m))})")
        content = m["content"]
        out.append({"role": str(m["role"]).strip(), "content": "" if content is None else str(content)})
    return out


def _read_file(path: str, key: str, cfg: ChatDataConfig) -> tuple[list[list[Message]], list[str]]:
    import datasets

    from objectives.data import _loader_for

    if not Path(path).exists():
        raise DataError(f"dataset file {path!r} ({key}) does not exist")
    loader = _loader_for(path, key)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        data = datasets.load_dataset(loader, data_files=os.path.abspath(path), split="train")
    except Exception as e:  # the readers raise many unrelated types
        raise DataError(f"cannot read dataset file {path!r} as {loader}: {read_error(e)}") from e
    columns = data.column_names
    name = Path(path).name
    if cfg.messages_column in columns:
        rows = data[cfg.messages_column]
        return ([_as_messages(v, f"dataset file {path!r} row {i + 1}") for i, v in enumerate(rows)],
                [f"{name}:{i + 1}" for i in range(len(rows))])
    missing = [c for c in (cfg.prompt_column, cfg.response_column) if c not in columns]
    if missing:
        raise DataError(
            f"dataset file {path!r} has no column {cfg.messages_column!r} and no "
            f"{' and no '.join(repr(c) for c in missing)} (columns: "
            f"{', '.join(repr(c) for c in columns)}); set messages_column, or "
            "prompt_column and response_column")
    chats = []
    for p, r in zip(data[cfg.prompt_column], data[cfg.response_column], strict=True):
        chats.append([{"role": "user", "content": "" if p is None else str(p)},
                      {"role": "assistant", "content": "" if r is None else str(r)}])
    return chats, [f"{name}:{i + 1}" for i in range(len(chats))]


def chat_fingerprint(cfg: ChatDataConfig, seed: int) -> str:
    """The data's identity (file contents, settings, seed) without reading it."""
    files = [_builtin_file(cfg.name)] if cfg.name is not None else []
    return source_fingerprint(cfg, seed, files)


def problems(chat: list[Message]) -> list[str]:
    """The error codes a conversation earns (empty: usable)."""
    out = []
    if any(m["role"] not in ROLES for m in chat):
        out.append("unknown-role")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in chat):
        out.append("no-answer")
    return out


def load_chat_splits(cfg: ChatDataConfig, seed: int) -> ChatSplits:
    """Read and split the conversations (memoized per process).

    Raises:
        DataError: a missing or unreadable file, missing columns, malformed messages, too few
            conversations.
    """
    return _memoized(cfg, seed)


def _load(cfg: ChatDataConfig, seed: int, fingerprint: str) -> ChatSplits:
    if cfg.name is not None:
        raw = {"": _read_chitchat(_builtin_file(cfg.name))}
        source: dict[str, Any] = {"name": cfg.name}
        where = f"builtin dataset {cfg.name!r}"
    else:
        raw = {split: _read_file(path, f"{split}_path" if split else "path", cfg)
               for split, path in cfg.sources()}
        source = {k: v for k, v in cfg.to_dict().items()
                  if k in ("path", "train_path", "validation_path", "test_path") and v}
        where = f"dataset {cfg.path or cfg.train_path!r}"
    if cfg.system_prompt:
        for chats, _ in raw.values():
            for chat in chats:
                if not chat or chat[0]["role"] != "system":
                    chat.insert(0, {"role": "system", "content": cfg.system_prompt})
    parts: dict[str, tuple[list[list[Message]], list[str]]] = {}
    if "" in raw:
        chats, names = raw[""]
        if not chats:
            raise DataError(f"{where} has no conversations")
        idx = split_rows(len(chats), cfg, seed, where=where)
        parts = {s: ([chats[i] for i in idx[s]], [names[i] for i in idx[s]]) for s in SPLITS}
        method = "random"
    else:
        for s in SPLITS:
            if not raw[s][0]:
                raise DataError(f"dataset file {getattr(cfg, s + '_path')!r} ({s}) has no rows")
        parts = raw
        method = "pre-split"
    kept: dict[str, tuple[list[list[Message]], list[str]]] = {}
    rejected: dict[str, list[tuple[str, list[Message]]]] = {}
    for s in SPLITS:
        chats, names = parts[s]
        good = [i for i, c in enumerate(chats) if not problems(c)]
        rejected[s] = [(names[i], chats[i]) for i in range(len(chats)) if problems(chats[i])]
        kept[s] = ([chats[i] for i in good], [names[i] for i in good])
    for s in SPLITS:
        if not kept[s][0]:
            raise DataError(f"{where}: the {s} split has no conversation with an answer from "
                            "the assistant (hpo check-data lists the problems)")
    info = {
        "source": source, "seed": seed, "fingerprint": fingerprint,
        "sizes": {s: len(kept[s][0]) for s in SPLITS},
        "split_method": method,
        "n_dropped_rows": sum(len(r) for r in rejected.values()),
        "turns": {s: sum(len(c) for c in kept[s][0]) for s in SPLITS},
    }
    return ChatSplits(chats={s: kept[s][0] for s in SPLITS}, names={s: kept[s][1] for s in SPLITS},
                      fingerprint=fingerprint, info=info, rejected=rejected)


# --- the chat template and the mask ----------------------------------------------------------


def ensure_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the plain :data:`FALLBACK_TEMPLATE` when it has no chat template (and
    a pad token when it has none). Returns True when the fallback was set."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_TEMPLATE
    return True


def _render(tokenizer: Any, messages: list[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def answer_spans(tokenizer: Any, chat: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the template renders it, and the character spans of the assistant's
    turns (each answer with what the template puts after it up to the next turn: the
    end-of-turn marker the model must learn to emit).

    Each turn's span is found by rendering the conversation up to it: the text before the
    answer is the render of the earlier messages with the generation prompt, the text through
    it the render including it.

    Raises:
        DataError: a template whose renders of a conversation's beginnings are not beginnings
            of its whole render (the mask could not be placed).
    """
    full = _render(tokenizer, chat)
    spans = []
    for i, m in enumerate(chat):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, chat[:i], generation_prompt=True) if i else ""
        through = _render(tokenizer, chat[: i + 1])
        if not full.startswith(through) or not through.startswith(before):
            raise DataError("the tokenizer's chat template renders a conversation's start "
                            "differently from the whole: the assistant tokens cannot be found")
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans


def encode_chat(tokenizer: Any, chat: list[Message], max_length: int | None
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids, labels (the id on assistant tokens, -100 elsewhere) cut at ``max_length``,
    and the untruncated length.

    A token is the assistant's when its first character lies in an answer span.
    """
    text, spans = answer_spans(tokenizer, chat)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    for pos, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(a <= start < b for a, b in spans):
            labels[pos] = ids[pos]
    n = len(ids)
    if max_length is not None and n > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels, n


# --- checks ----------------------------------------------------------------------------------


def _quote(chat: list[Message]) -> str:
    first = next((m["content"] for m in chat if m.get("role") == "user"), None)
    text = " ".join(str(first if first is not None else (chat[0]["content"] if chat else "")).split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _key(chat: list[Message]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in chat], ensure_ascii=False)


def check_chats(splits: ChatSplits, lengths: dict[str, list[tuple[int, int]]] | None,
                max_length: int) -> list[Finding]:
    """Every check on conversations; errors first.

    Args:
        lengths: per split, for each kept conversation, ``(tokens, first answer token)`` of its
            untruncated encoding; None skips the length checks.
    """
    findings: list[Finding] = []
    rejected = [(name, chat) for s in SPLITS for name, chat in splits.rejected.get(s, [])]
    unknown = [(n, c) for n, c in rejected if "unknown-role" in problems(c)]
    if unknown:
        roles = sorted({m["role"] for _, c in unknown for m in c if m["role"] not in ROLES})
        findings.append(Finding(
            "unknown-role", "error",
            f"{len(unknown)} conversation(s) have a role the chat template does not know "
            f"({', '.join(repr(r) for r in roles[:_N])}; first at {unknown[0][0]}): roles must be "
            f"{', '.join(ROLES)}", count=len(unknown), examples=tuple(roles[:_N])))
    no_answer = [(n, c) for n, c in rejected if "no-answer" in problems(c)]
    if no_answer:
        findings.append(Finding(
            "no-answer", "error",
            f"{len(no_answer)} conversation(s) have no assistant turn or only empty ones "
            f"(first at {no_answer[0][0]}): nothing to learn from them",
            count=len(no_answer), examples=tuple(n for n, _ in no_answer[:_N])))
    empty = [n for s in SPLITS for n, c in zip(splits.names[s], splits.chats[s], strict=True)
             if any(not m["content"].strip() for m in c)]
    if empty:
        findings.append(Finding(
            "empty-turns", "warning",
            f"{len(empty)} conversation(s) have empty messages beside an answer, e.g. "
            f"{', '.join(empty[:_N])}", count=len(empty), examples=tuple(empty[:_N])))
    keys = {s: [_key(c) for c in splits.chats[s]] for s in SPLITS}
    seen = {s: set(keys[s]) for s in SPLITS}
    parts, leaked = [], []
    for later, earlier in (("validation", "train"), ("test", "train"), ("test", "validation")):
        shared = [i for i, k in enumerate(keys[later]) if k in seen[earlier]]
        if shared:
            parts.append(f"{len(shared)} of {len(keys[later])} {later} conversations are also "
                         f"in {earlier}")
            leaked += [_quote(splits.chats[later][i]) for i in shared]
    if parts:
        findings.append(Finding("leakage", "error",
                                f"{'; '.join(parts)}, e.g. {', '.join(leaked[:_N])}: validation "
                                "loss would reward memory; deduplicate",
                                count=len(leaked), examples=tuple(leaked[:_N])))
    counts = collections.Counter(keys["train"])
    extra = sum(c - 1 for c in counts.values() if c > 1)
    if extra:
        first = dict(zip(keys["train"], splits.chats["train"], strict=True))
        shown = [_quote(first[k]) for k, c in counts.items() if c > 1][:_N]
        findings.append(Finding("train-duplicates", "warning",
                                f"{extra} training conversation(s) repeat another, e.g. "
                                f"{', '.join(shown)}", count=extra, examples=tuple(shown)))
    if lengths is not None:
        findings += _check_lengths(splits, lengths, max_length)
    return sorted(findings, key=lambda f: f.severity != "error")


def _check_lengths(splits: ChatSplits, lengths: dict[str, list[tuple[int, int]]],
                   max_length: int) -> list[Finding]:
    findings = []
    total = sum(len(v) for v in lengths.values())
    long = [(s, i) for s in SPLITS for i, (n, _) in enumerate(lengths[s]) if n > max_length]
    cut = [(s, i) for s in SPLITS for i, (_, first) in enumerate(lengths[s]) if first >= max_length]
    if cut:
        shown = [f"{splits.names[s][i]} (answer starts at token {lengths[s][i][1]})"
                 for s, i in cut[:_N]]
        findings.append(Finding(
            "answer-cut", "error",
            f"{len(cut)} conversation(s) have every answer token beyond max_length {max_length}, "
            f"e.g. {', '.join(shown)}: truncation leaves nothing to learn; raise max_length or "
            "shorten the prompts", count=len(cut), examples=tuple(shown)))
    if long:
        longest = max(n for v in lengths.values() for n, _ in v)
        findings.append(Finding(
            "truncated", "warning",
            f"{len(long)} of {total} conversations ({100 * len(long) / max(total, 1):.1f}%) are "
            f"longer than max_length {max_length} tokens (longest: {longest}); their ends are "
            f"cut, e.g. {', '.join(_quote(splits.chats[s][i]) for s, i in long[:_N])}",
            count=len(long), examples=tuple(_quote(splits.chats[s][i]) for s, i in long[:_N])))
    return findings


def chat_lengths(tokenizer: Any, chats: Sequence[list[Message]]) -> list[tuple[int, int]]:
    """Per conversation: its untruncated token count and the position of its first answer
    token (the count when it has none)."""
    out = []
    for chat in chats:
        ids, labels, n = encode_chat(tokenizer, chat, None)
        first = np.flatnonzero(labels != IGNORE)
        out.append((n, int(first[0]) if len(first) else n))
    return out


_memoized = memoized_splits(chat_fingerprint, _load)
