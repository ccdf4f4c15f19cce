"""Any architecture: freezing, LoRA targets and the fast paths come from a model's structure.

A tiny model of each family (tests/tiny_models.py) is fine-tuned with the bottom layer frozen,
with every layer frozen and with LoRA; the fast paths (frozen-prefix cache, top layer for the
first token) must give the same numbers as the plain path wherever they apply.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import IntDistribution
from tiny_models import ENCODERS
from tiny_models import FAMILIES

from objectives.core import train
from objectives.params import TrainParams
from objectives.structure import find_structure
from objectives.text_classification import TextClassificationConfig
from objectives.text_classification import task_for
from objectives.text_classification import validate_space

# What each family's structure is, as transformers builds it.
LAYERS = {
    "bert": "bert.encoder.layer", "distilbert": "distilbert.transformer.layer",
    "roberta": "roberta.encoder.layer", "mpnet": "mpnet.encoder.layer",
    "electra": "electra.encoder.layer", "deberta-v2": "deberta.encoder.layer",
    "llama": "model.layers", "qwen2": "model.layers", "gpt2": "transformer.h",
}
DEFAULT_LORA = {
    "bert": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "roberta": ["query", "value"],
    "mpnet": ["q", "v"], "electra": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"],
    "llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "gpt2": ["c_attn"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_rows
    from conftest import write_csv

    return write_csv(tmp_path_factory.mktemp("families") / "rows.csv", make_rows(48))


def config(model: str, data: Path) -> TextClassificationConfig:
    return TextClassificationConfig.from_dict({
        "model": model, "dataset": {"path": str(data)}, "max_length": 24, "epochs": 1,
        "evals_per_epoch": 2, "cache_dir": None, "precision": "fp32",
    })


@pytest.mark.parametrize("family", FAMILIES)
def test_structure_freezing_and_lora_of_every_family(family: str, tiny_family, data: Path) -> None:  # noqa: ANN001
    from objectives.structure import default_lora_targets

    task = task_for(config(tiny_family(family), data))
    structure = task.structure
    assert structure.layers_path == LAYERS[family] and structure.n_layers == 2
    assert default_lora_targets(structure) == DEFAULT_LORA[family]

    total = sum(p.numel() for p in task.base_model.parameters())
    frozen = sum(p.numel() for m in structure.frozen(1) for p in m.parameters())
    one = train(TrainParams.from_params({"freeze_layers": 1, "batch_size": 8}), task).record
    assert one.trainable_params == total - frozen > 0
    # LoRA on the default targets: adapters on the layers plus the task's head train.
    lora = train(TrainParams.from_params({"r": 4, "batch_size": 8}), task).record
    assert 0 < lora.trainable_params < one.trainable_params
    assert len(lora.history) == 2 and all(p.metrics["val_loss"] > 0 for p in lora.history)
    everything = train(TrainParams.from_params({"r": 4, "target_modules": "all-linear",
                                                "batch_size": 8}), task).record
    assert everything.trainable_params > lora.trainable_params


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [1, 2])
def test_fast_paths_give_the_plain_paths_numbers(family: str, k: int, tiny_family, data: Path) -> None:  # noqa: ANN001
    task = task_for(config(tiny_family(family), data))
    params = TrainParams.from_params({"freeze_layers": k, "batch_size": 8, "learning_rate": 1e-3})
    fast = train(params, task).record
    plain = train(params, task, fast_paths=False).record
    # The prefix cache applies to every family here; checked against the plain path first.
    assert fast.prefix_cached and not plain.prefix_cached
    for a, b in zip(fast.history, plain.history, strict=True):
        assert a.step == b.step
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_first_token_paths_apply_to_encoders_only(family: str, tiny_family, data: Path) -> None:  # noqa: ANN001
    task = task_for(config(tiny_family(family), data))
    # Encoder heads read the first token; decoders read the last one.
    assert task.fast.first_token_only() is (family in ENCODERS)
    # The one-row top layer needs BERT's anatomy (BERT, RoBERTa, ELECTRA).
    assert task.fast.cls_top() is (family in ("bert", "roberta", "electra"))


def test_a_fast_path_that_does_not_hold_falls_back(tiny_family, data: Path, monkeypatch) -> None:  # noqa: ANN001
    """A model whose layers depend on their index (a fast path would change its numbers): the
    probe sees the difference and the trial takes the plain path."""
    from objectives.fastpath import FastPaths

    task = task_for(config(tiny_family("bert"), data))
    fast = FastPaths(task.base_model, task.structure, (task.fast.inputs, task.fast.lengths))
    monkeypatch.setattr(FastPaths, "_same", lambda self, a, b: False)  # "outputs differ"
    assert not fast.prefix(1, first_only=False) and not fast.cls_top()
    task.res.fast, saved = fast, task.res.fast
    try:
        record = train(TrainParams.from_params({"freeze_layers": 1, "batch_size": 8}),
                       task_for(config(tiny_family("bert"), data))).record
    finally:
        task.res.fast = saved
    assert record.prefix_cached is False and len(record.history) == 2


@pytest.mark.parametrize("family", ["distilbert", "llama", "gpt2"])
def test_the_space_check_names_the_models_real_depth_and_modules(family: str, tiny_family, data: Path) -> None:  # noqa: ANN001
    cfg = config(tiny_family(family), data)
    names = {"distilbert": "k_lin, lin1, lin2, out_lin, q_lin, v_lin",
             "llama": "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
             "gpt2": "c_attn, c_fc, c_proj"}[family]
    validate_space(cfg, {"freeze_layers": IntDistribution(0, 2),
                         "target_modules": CategoricalDistribution([DEFAULT_LORA[family][0]])})
    with pytest.raises(ValueError, match=r"^freeze_layers: 3 is beyond the 2 layers of model"):
        validate_space(cfg, {"freeze_layers": IntDistribution(0, 3)})
    with pytest.raises(ValueError, match=rf"^target_modules: 'query' is not a linear module of the "
                       rf"model's layers \(valid: {names}, or all-linear\)"):
        validate_space(cfg, {"target_modules": CategoricalDistribution(["query"])})


def test_structure_unwraps_peft_and_refuses_a_model_without_layers() -> None:
    import torch

    with pytest.raises(ValueError, match="no list of repeated layers"):
        find_structure(torch.nn.Sequential(torch.nn.Linear(2, 2)))
