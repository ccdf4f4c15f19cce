"""Shared fixtures: a tiny BERT built from a config, and small labeled CSV files."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

POSITIVE = "good great fine superb lovely brilliant charming moving clever funny".split()
NEGATIVE = "bad awful dull boring weak clumsy tedious bland messy silly".split()
FILLER = "the a movie film plot cast story scenes acting script was is and but very".split()


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short synthetic reviews whose label follows their sentiment words (learnable)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = POSITIVE if label == "pos" else NEGATIVE
        text = " ".join(
            rng.choice(FILLER) if rng.random() < 0.6 else rng.choice(words)
            for _ in range(rng.randint(4, 12))
        )
        rows.append({"text": f"{text} {rng.choice(words)} review {i}", "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, str] = ("text", "label")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row["text"], row["label"]])
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved like a hub model."""
    import torch
    from transformers import BertConfig
    from transformers import BertForSequenceClassification
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["review"]))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[str(i) for i in range(10)]]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    """80 labeled rows in one CSV file (hpo splits it)."""
    return write_csv(tmp_path / "reviews.csv", make_rows(80))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
