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


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer ViT (32x32 inputs, hidden 32) saved like a hub model."""
    from tiny_models import save_tiny_vit

    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small EfficientNet-Lite (random weights) saved in hpo's own format."""
    from tiny_models import save_tiny_efficientnet

    return save_tiny_efficientnet(tmp_path_factory.mktemp("tiny-cnn"))


def make_image(kind: int, seed: int, size: int = 16, mode: str = "RGB"):  # noqa: ANN201
    """A PIL image whose class shows in its pixels: a bright block left, right or at the top."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    half = size // 2
    if kind == 0:
        x[:, :half] += 150
    elif kind == 1:
        x[:, half:] += 150
    else:
        x[:half] += 150
    img = Image.fromarray(x)
    return img.convert(mode) if mode != "RGB" else img


def write_image_folder(root: Path, n_per_class: int = 12, classes: tuple[str, ...] = ("left", "right", "top"),
                       seed: int = 0) -> Path:
    """One subfolder of PNG images per class."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            make_image(k, seed * 1000 + k * 100 + i).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """36 images of 3 classes in one folder per class (hpo splits them)."""
    return write_image_folder(tmp_path / "images")


def make_sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Tagged sentences whose entities follow their words (learnable): names are PER, cities LOC."""
    rng = random.Random(seed)
    names, cities = ["alice", "bob", "carol", "dave"], ["paris", "rome", "london", "berlin"]
    out = []
    for i in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 8)):
            r = rng.random()
            if r < 0.2:
                words.append(rng.choice(names))
                tags.append("B-PER")
            elif r < 0.35:
                words += ["new", rng.choice(cities)]
                tags += ["B-LOC", "I-LOC"]
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        words.append(f"id{i}")
        tags.append("O")
        out.append((words, tags))
    return out


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    lines = []
    for words, tags in sentences:
        lines += [f"{w}\t{t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def conll_file(tmp_path: Path) -> Path:
    """80 tagged sentences in one CoNLL-style file (hpo splits them)."""
    return write_conll(tmp_path / "ner.conll", make_sentences(80))


@pytest.fixture
def scores_csv(tmp_path: Path) -> Path:
    """80 texts with a score that follows their sentiment words (learnable)."""
    rows = make_rows(80)
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "score"])
        for row in rows:
            words = row["text"].split()
            score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
            writer.writerow([row["text"], score / 4])
    return path


@pytest.fixture(scope="session")
def tiny_wordpiece(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT whose tokenizer knows the words of the test data (see tiny_models)."""
    from tiny_models import save_tiny_wordpiece

    return save_tiny_wordpiece(tmp_path_factory.mktemp("tiny-wordpiece"))
