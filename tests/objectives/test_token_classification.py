"""token_classification: CoNLL / JSONL data, first-piece alignment, entity-level F1 against
seqeval, the checks, freezing with the prefix cache, forgetting knobs, a study that prunes and
exports, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_sentences
from conftest import write_conll
from task_studies import invoke
from task_studies import run_study
from task_studies import states

from objectives.core import train
from objectives.data import DataError
from objectives.params import TrainParams
from objectives.token_classification import IGNORE
from objectives.token_classification import TokenClassificationConfig
from objectives.token_classification import align
from objectives.token_classification import task_for
from objectives.token_data import TokenDataConfig
from objectives.token_data import check_tagged
from objectives.token_data import entities
from objectives.token_data import entity_scores
from objectives.token_data import load_token_splits


def config(model: str, dataset: dict[str, Any], **kw: Any) -> TokenClassificationConfig:
    return TokenClassificationConfig.from_dict({
        "model": model, "dataset": dataset, "max_length": 32, "epochs": 2, "evals_per_epoch": 2,
        "cache_dir": None, "precision": "fp32", **kw})


def test_conll_and_jsonl_read_the_same(conll_file: Path, tmp_path: Path) -> None:
    sentences = make_sentences(80)
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n"
                                                for w, t in sentences))
    a = load_token_splits(TokenDataConfig(path=str(conll_file)), 0)
    b = load_token_splits(TokenDataConfig(path=str(tmp_path / "ner.jsonl")), 0)
    assert a.label_names == b.label_names == ["O", "B-LOC", "I-LOC", "B-PER"]
    assert a.words == b.words and a.tags == b.tags
    assert a.info["sizes"] == {"train": 56, "validation": 12, "test": 12}
    # Spaces instead of a tab, and a -DOCSTART- line, read the same.
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("-DOCSTART- O\n\n" + conll_file.read_text().replace("\t", "   "))
    c = load_token_splits(TokenDataConfig(path=str(spaced)), 0)
    assert c.words == a.words and c.tags == a.tags


def test_builtin_wnut16_has_no_repeated_sentence() -> None:
    s = load_token_splits(TokenDataConfig(name="wnut16"), 0)
    assert len(s.label_names) == 21 and s.label_names[0] == "O"
    assert sum(s.info["sizes"].values()) + s.info["n_dropped_rows"] == 2394
    assert "leakage" not in [f.code for f in check_tagged(s, [10] * sum(s.info["sizes"].values()), 64)]


def test_a_line_with_three_fields_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conll"
    bad.write_text("Alice\tB-PER\nlives\tO\tVERB\n")
    with pytest.raises(DataError, match=r"^dataset file '.*bad.conll' line 2: expected 2 fields "
                       r"\(token and tag, separated by a tab or spaces\), got 3: 'lives\\tO\\tVERB'$"):
        load_token_splits(TokenDataConfig(path=str(bad)), 0)
    jl = tmp_path / "bad.jsonl"
    jl.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: 2 tokens but 1 tags$"):
        load_token_splits(TokenDataConfig(path=str(jl)), 0)


def test_cli_bad_tag_line_exits_2(tmp_path: Path, tiny_wordpiece: str) -> None:
    import yaml

    bad = write_conll(tmp_path / "ner.conll", make_sentences(30))
    bad.write_text(bad.read_text() + "Rome\tB-LOC\textra\n")
    (tmp_path / "space.yaml").write_text("learning_rate: {type: float, low: 1e-4, high: 1e-2}\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "study": "x", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "token_classification",
        "model": tiny_wordpiece, "dataset": {"path": str(bad)}, "search_space": str(tmp_path / "space.yaml"),
        "n_trials": 1}))
    result = invoke("run", "--config", str(tmp_path / "s.yaml"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "expected 2 fields" in lines[0] and "got 3" in lines[0], result.output


def test_labels_sit_on_the_first_piece_of_each_word(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "plot", "##film", "##cast"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    words = [["goodfilm", "great", "plotcast"]]  # 2 pieces, 1 piece, 2 pieces
    (ids, labels), = align(tokenizer, words, [[1, 0, 2]], 32)
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert pieces == ["[CLS]", "good", "##film", "great", "plot", "##cast", "[SEP]"]
    assert labels.tolist() == [IGNORE, 1, IGNORE, 0, 2, IGNORE, IGNORE]
    (ids, labels), = align(tokenizer, words, [[1, 0, 2]], 4)  # truncated: the last word is gone
    assert labels.tolist() == [IGNORE, 1, IGNORE, IGNORE]


KNOWN = [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # an I- that no B- opens starts an entity
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),
    (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["O", "O"], []),
]


@pytest.mark.parametrize(("tags", "expected"), KNOWN)
def test_entities_known_cases(tags: list[str], expected: list[tuple[str, int, int]]) -> None:
    assert entities(tags) == expected


def test_entity_scores_match_seqeval_on_random_taggings() -> None:
    from seqeval.metrics import f1_score
    from seqeval.metrics import precision_score
    from seqeval.metrics import recall_score

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC", "B-MISC"]
    for _ in range(50):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 6))]
        pred = [[t if rng.random() < 0.6 else rng.choice(tags) for t in s] for s in gold]
        ours = entity_scores(gold, pred)
        assert ours["f1"] == pytest.approx(f1_score(gold, pred, zero_division=0))
        assert ours["precision"] == pytest.approx(precision_score(gold, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(recall_score(gold, pred, zero_division=0))


def test_checks_find_each_planted_problem(tmp_path: Path, conll_file: Path) -> None:
    clean = load_token_splits(TokenDataConfig(path=str(conll_file)), 0)
    assert [f.code for f in check_tagged(clean, [10] * 80, 32)] == []
    sentences = make_sentences(40) + [(["zed", "x"], ["PER", "O"]), (["y", "q"], ["O", "I-LOC"])]
    for i, split in enumerate(("train", "validation", "test")):
        part = sentences if split == "train" else make_sentences(10, seed=i) + sentences[:1]
        write_conll(tmp_path / f"{split}.conll", part)
    cfg = TokenDataConfig(**{f"{s}_path": str(tmp_path / f"{s}.conll") for s in ("train", "validation", "test")})
    splits = load_token_splits(cfg, 0)
    found = {f.code: f for f in check_tagged(splits, [40] + [10] * 999, 32)}
    assert found["bio-scheme"].severity == "error" and "'PER'" in found["bio-scheme"].message
    assert "train.conll:" in found["bio-scheme"].message
    assert found["i-without-b"].severity == "warning" and "I-LOC after O" in found["i-without-b"].message
    assert found["leakage"].severity == "error"
    assert "1 of 11 validation sentences are also in train" in found["leakage"].message
    assert found["truncated"].count == 1
    only_o = tmp_path / "o.conll"
    write_conll(only_o, [([f"w{i}", "x"], ["O", "O"]) for i in range(20)])
    o = load_token_splits(TokenDataConfig(path=str(only_o)), 0)
    assert [f.code for f in check_tagged(o, [4] * 20, 32)][0] == "no-entities"


def test_fast_and_plain_paths_train_the_same(tiny_wordpiece: str, conll_file: Path) -> None:
    task = task_for(config(tiny_wordpiece, {"path": str(conll_file)}))
    params = TrainParams.from_params({"freeze_layers": 1, "batch_size": 8, "learning_rate": 3e-3})
    fast = train(params, task)
    plain = train(params, task, fast_paths=False)
    assert fast.record.prefix_cached and not plain.record.prefix_cached
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
        assert a.metrics["val_f1"] == b.metrics["val_f1"]
    assert set(fast.record.history[0].metrics) == {"val_loss", "val_f1", "val_precision",
                                                   "val_recall", "val_accuracy"}


def test_the_model_learns_the_entities(tiny_wordpiece: str, conll_file: Path) -> None:
    task = task_for(config(tiny_wordpiece, {"path": str(conll_file)}, epochs=6, evals_per_epoch=1))
    result = train(TrainParams.from_params({"batch_size": 8, "learning_rate": 5e-3}), task)
    f1 = [p.metrics["val_f1"] for p in result.record.history]
    assert f1[-1] > 0.5 and f1[-1] > f1[0]


def test_gradual_unfreezing_and_layer_decay_run_with_the_cache(tiny_wordpiece: str, conll_file: Path) -> None:
    from objectives.structure import find_structure

    task = task_for(config(tiny_wordpiece, {"path": str(conll_file)}))
    params = TrainParams.from_params({"batch_size": 8, "learning_rate": 3e-3, "unfreeze_every": 2,
                                      "layer_decay": 0.7})
    fast = train(params, task, keep_model=True)
    plain = train(params, task, fast_paths=False)
    assert fast.record.prefix_cached
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    bottom = find_structure(fast.model).layers[0]
    assert any(not torch.equal(a, b) for a, b in
               zip(bottom.parameters(), task.structure.layers[0].parameters(), strict=True))


@pytest.mark.slow
def test_study_prunes_and_exports(tiny_wordpiece: str, tmp_path: Path) -> None:
    from transformers import AutoModelForTokenClassification
    from transformers import AutoTokenizer

    data = write_conll(tmp_path / "ner.conll", make_sentences(80))
    url, study = run_study(tmp_path / "study", "token_classification",
                           {"model": tiny_wordpiece, "dataset": {"path": str(data)}, "max_length": 32})
    assert states(study).get("PRUNED", 0) >= 1 and states(study).get("COMPLETE", 0) >= 1
    out = tmp_path / "model"
    result = invoke("export", "--storage", url, "--study", "s", "-o", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test_summary"]) == {"f1", "precision", "recall", "accuracy", "loss"}
    assert metrics["validation_check"]["match"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "| PER |" in card
    # The saved model and tokenizer tag the test split as recorded.
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    splits = load_token_splits(TokenDataConfig(path=str(data)), 0)
    names = model.config.id2label
    gold, pred = [], []
    for words, tags in zip(splits.words["test"], splits.tags["test"], strict=True):
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=32,
                        return_tensors="pt")
        with torch.inference_mode():
            out_ids = model(**enc).logits[0].argmax(-1).tolist()
        firsts = [i for i, w in enumerate(enc.word_ids(0)) if w is not None
                  and (i == 0 or enc.word_ids(0)[i - 1] != w)]
        pred.append([names[out_ids[i]] for i in firsts])
        gold.append([splits.label_names[t] for t in tags[: len(firsts)]])
    assert entity_scores(gold, pred)["f1"] == pytest.approx(metrics["test"]["f1"])
    assert np.isfinite(metrics["test"]["loss"])


@pytest.mark.slow
def test_packaged_minilm_on_wnut16_learns() -> None:
    cfg = TokenClassificationConfig.from_dict({
        "model": "minilm", "dataset": {"name": "wnut16", "max_examples": 500}, "epochs": 1,
        "evals_per_epoch": 2})
    task = task_for(cfg)
    result = train(TrainParams.from_params({"freeze_layers": 2, "batch_size": 16,
                                            "learning_rate": 1e-3}), task)
    losses = [p.metrics["val_loss"] for p in result.record.history]
    assert losses[-1] < losses[0] and result.record.prefix_cached


def test_sentence_and_balance_checks(tmp_path: Path) -> None:
    """Conflicting tags, training duplicates, rare and missing entity types."""
    train_rows = make_sentences(30) + [(["zed", "met", "ann"], ["B-PER", "O", "B-PER"])] * 2 + [
        (["x", "in", "oslo"], ["O", "O", "B-MISC"])]
    write_conll(tmp_path / "train.conll", train_rows)
    write_conll(tmp_path / "validation.conll", make_sentences(5, seed=7) +
                [(["zed", "met", "ann"], ["O", "O", "O"])])
    write_conll(tmp_path / "test.conll", make_sentences(5, seed=8))
    cfg = TokenDataConfig(**{f"{s}_path": str(tmp_path / f"{s}.conll") for s in ("train", "validation", "test")})
    found = {f.code: f for f in check_tagged(load_token_splits(cfg, 0), [8] * 1000, 32)}
    assert found["conflicting-labels"].severity == "error" and "'zed met ann'" in found["conflicting-labels"].message
    assert found["train-duplicates"].count == 1
    assert "fewer than 5 mentions: MISC" in found["class-imbalance"].message
    assert "has no MISC entity" in found["missing-class"].message
