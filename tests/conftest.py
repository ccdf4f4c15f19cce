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
    from tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """``tiny_family(name)``: the tiny model of an architecture family (built once a session)."""
    from tiny_models import save_tiny

    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = save_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return built[family]

    return get


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    """80 labeled rows in one CSV file (hpo splits it)."""
    return write_csv(tmp_path / "reviews.csv", make_rows(80))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
