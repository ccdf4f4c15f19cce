"""Tiny models of every architecture family hpo supports, built from a config (no network).

Each is saved like a hub model (config, weights, tokenizer) so that the real loading code
(``from_pretrained``) reads it. They share one small WordPiece vocabulary: the tokenizer does
not matter for the structure (freezing, LoRA targets, fast paths).
"""

from __future__ import annotations

from pathlib import Path

from conftest import FILLER
from conftest import NEGATIVE
from conftest import POSITIVE

FAMILIES = ("bert", "distilbert", "roberta", "mpnet", "electra", "deberta-v2", "llama", "qwen2",
            "gpt2")
ENCODERS = FAMILIES[:6]


def vocabulary() -> list[str]:
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["review"]))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[str(i) for i in range(10)]]


def _config(family: str, vocab_size: int, num_labels: int):  # noqa: ANN202 (a transformers config)
    import transformers as T

    common = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
              "pad_token_id": 0, "num_labels": num_labels}
    if family == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2,
                                  hidden_dim=64, max_position_embeddings=64, pad_token_id=0,
                                  num_labels=num_labels)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                            pad_token_id=0, bos_token_id=2, eos_token_id=3, num_labels=num_labels)
    if family in ("llama", "qwen2"):
        cls = T.LlamaConfig if family == "llama" else T.Qwen2Config
        return cls(**common, num_key_value_heads=1, bos_token_id=2, eos_token_id=3)
    if family == "electra":
        return T.ElectraConfig(**common, embedding_size=16)
    if family == "deberta-v2":
        # Relative attention: a position table every layer reads, beside the layers.
        return T.DebertaV2Config(**common, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                 position_buckets=8, max_relative_positions=16)
    if family == "mpnet":
        return T.MPNetConfig(**common)
    return {"bert": T.BertConfig, "roberta": T.RobertaConfig}[family](**common)


def save_tiny(root: Path, family: str = "bert", num_labels: int = 2, seed: int = 0) -> str:
    """Save a 2-layer, hidden-32 sequence classifier of ``family`` with a tokenizer in ``root``."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers import BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(
        _config(family, len(vocab), num_labels)
    ).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)
