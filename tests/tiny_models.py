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


def save_tiny_vit(root: Path, num_labels: int = 3, image_size: int = 32, seed: int = 0) -> str:
    """Save a 2-layer ViT image classifier (hidden 32, 8-pixel patches) like a hub model."""
    import json

    import torch
    from transformers import ViTConfig
    from transformers import ViTForImageClassification

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
    ViTForImageClassification(config).save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True,
        "size": {"height": image_size, "width": image_size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5]}))
    return str(root)


def save_tiny_efficientnet(root: Path, num_labels: int = 3, image_size: int = 32, seed: int = 0) -> str:
    """Save an EfficientNet-Lite0 skeleton at a quarter of its width and half its depth
    (random weights, ~0.26M parameters) in hpo's own format (``config.json`` +
    ``model.safetensors``), as ``hpo export`` saves one."""
    import torch

    from objectives.image_models import EfficientNetLiteForImageClassification
    from objectives.image_models import _net

    overrides = {"width_coefficient": 0.25, "depth_coefficient": 0.5}
    torch.manual_seed(seed)
    net = _net("efficientnet-lite0", num_labels, image_size, **overrides)
    model = EfficientNetLiteForImageClassification(net, {
        "architecture": "hpo-efficientnet-lite", "variant": "efficientnet-lite0",
        "overrides": overrides, "num_labels": num_labels, "image_size": image_size,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    model.save_pretrained(root)
    return str(root)


def save_tiny_wordpiece(root: Path, seed: int = 0) -> str:
    """A 2-layer BERT (hidden 32) whose tokenizer knows the test texts' words (names, cities and
    a few ``##`` continuation pieces): built from a vocabulary mapping, which transformers 5
    reads (a ``vocab_file`` alone leaves a fast tokenizer with its special tokens only)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers import BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    extra = ["alice", "bob", "carol", "dave", "new", "paris", "rome", "london", "berlin", "id",
             "##film", "##cast", "##s", "##0", "##1", "##2", "##3", "##4", "##5", "##6", "##7",
             "##8", "##9"]
    words = vocabulary() + [w for w in extra if w not in vocabulary()]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(_config("bert", len(words), 2)).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def save_tiny_causal_lm(root: Path, chat_template: bool = True, seed: int = 0) -> str:
    """A 2-layer Llama-style causal LM (hidden 32) with a byte-level BPE tokenizer trained on
    the test chats' words, and a ChatML chat template (``chat_template=False``: none, so the
    plain fallback applies)."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from tokenizers import trainers
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM
    from transformers import PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(POSITIVE + NEGATIVE + FILLER), "user assistant system say twice please "
              "the color of sky grass snow is blue green white hello how are you fine thanks"]
    bpe.train_from_iterator(corpus * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        pad_token="<pad>", bos_token="<|endoftext|>")
    if chat_template:
        tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)
