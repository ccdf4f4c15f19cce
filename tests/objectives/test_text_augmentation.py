"""Word dropout and random swap on token ids: words stay whole, special tokens stay put, the
same generator gives the same text; text classification searches both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from objectives.text_classification import TextParams
from objectives.text_classification import augment_ids
from objectives.text_classification import word_starts


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "plot", "the", "a",
             "##film", "##cast"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})


def words_of(tokenizer: Any, ids: np.ndarray) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def test_word_pieces_move_and_drop_together(tokenizer: Any) -> None:
    ids = np.asarray(tokenizer("goodfilm great plotcast the a")["input_ids"])
    starts, special = word_starts(tokenizer), set(tokenizer.all_special_ids)
    assert starts[tokenizer.convert_tokens_to_ids("##film")] == False  # noqa: E712
    same = augment_ids(ids, starts, special, np.random.default_rng(0), 0.0, 0.0)
    assert np.array_equal(same, ids)
    for seed in range(20):
        out = words_of(tokenizer, augment_ids(ids, starts, special, np.random.default_rng(seed), 0.4, 0.4))
        assert out[0] == "[CLS]" and out[-1] == "[SEP]"
        inner = out[1:-1]
        assert inner, "one word always stays"
        for i, piece in enumerate(inner):
            if piece == "##film":
                assert inner[i - 1] == "good"
            if piece == "##cast":
                assert inner[i - 1] == "plot"
    a = augment_ids(ids, starts, special, np.random.default_rng(3), 0.3, 0.3)
    b = augment_ids(ids, starts, special, np.random.default_rng(3), 0.3, 0.3)
    assert np.array_equal(a, b)
    swapped = augment_ids(ids, starts, special, np.random.default_rng(1), 0.0, 0.5)
    assert sorted(swapped.tolist()) == sorted(ids.tolist()) and not np.array_equal(swapped, ids)
    dropped = augment_ids(ids, starts, special, np.random.default_rng(1), 0.5, 0.0)
    assert len(dropped) < len(ids)


def test_byte_level_markers_start_words() -> None:
    class Bpe:
        all_special_ids: list[int] = []

        def __len__(self) -> int:
            return 40

        def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
            return [("\u0120w" if i % 2 == 0 else "x") for i in ids]

    starts = word_starts(Bpe())
    assert starts[0] and not starts[1]


def test_text_params_search_augmentation_and_zero_is_off() -> None:
    p = TextParams.from_params({"word_dropout": 0.1, "random_swap": 0.0})
    assert p.augmented and not TextParams.from_params({}).augmented
    with pytest.raises(ValueError, match=r"^word_dropout: 0.9 is outside the valid range"):
        TextParams.from_params({"word_dropout": 0.9})


def test_text_classification_augments_training_batches_only(tiny_wordpiece: str, data_csv: Path) -> None:
    from objectives.core import train
    from objectives.text_classification import TextClassificationConfig
    from objectives.text_classification import TextClassificationTask
    from objectives.text_classification import task_for

    task = task_for(TextClassificationConfig.from_dict({
        "model": tiny_wordpiece, "dataset": {"path": str(data_csv)}, "max_length": 32,
        "epochs": 1, "evals_per_epoch": 2, "cache_dir": None, "precision": "fp32"}))
    seen: list[tuple[bool, Any]] = []

    class Recording(TextClassificationTask):
        def collate(self, examples: Any, device: str, rng: Any = None) -> Any:
            batch = super().collate(examples, device, rng)
            seen.append((rng is not None, batch.inputs["input_ids"].clone()))
            return batch

    rec = Recording(task.config, task.res)
    params = TextParams.from_params({"batch_size": 8, "freeze_layers": 1, "word_dropout": 0.3,
                                     "random_swap": 0.2})
    runs = []
    for _ in range(2):
        seen.clear()
        result = train(params, rec)
        runs.append(list(seen))
    assert not result.record.prefix_cached
    assert [(a, x.tolist()) for a, x in runs[0]] == [(a, x.tolist()) for a, x in runs[1]]
    assert any(a for a, _ in runs[0]) and any(not a for a, _ in runs[0])
    seen.clear()
    off = train(TextParams.from_params({"batch_size": 8, "freeze_layers": 1}), rec)
    assert off.record.prefix_cached and not any(a for a, _ in seen)
