"""The text-classification objective on a tiny BERT: fidelity steps, freezing, caches, LoRA."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from objectives.core import _fresh_model
from objectives.core import plan_segments
from objectives.core import train
from objectives.data import DatasetConfig
from objectives.data import load_splits
from objectives.metrics import macro_f1
from objectives.models import PrefixCache
from objectives.models import clear_resources
from objectives.params import TrainParams
from objectives.text_classification import TextClassificationConfig
from objectives.text_classification import objective
from objectives.text_classification import task_for
from objectives.text_classification import validate_space


@pytest.fixture
def cfg(tiny_model: str, data_csv: Path) -> TextClassificationConfig:
    return TextClassificationConfig.from_dict(
        {
            "model": tiny_model,
            "dataset": {"path": str(data_csv)},
            "max_length": 32,
            "epochs": 2,
            "evals_per_epoch": 2,
            "cache_dir": None,
            "precision": "fp32",
        }
    )


def run_trial(cfg: TextClassificationConfig, params: dict[str, Any]) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    value = objective(trial, params, cfg)
    return study.tell(trial, value)


def test_reports_at_the_same_example_counts_whatever_the_batch_size(cfg: TextClassificationConfig) -> None:
    small = run_trial(cfg, {"batch_size": 4, "learning_rate": 1e-3})
    large = run_trial(cfg, {"batch_size": 16, "learning_rate": 1e-3})
    n_train = load_splits(cfg.dataset, cfg.seed).info["sizes"]["train"]
    expected = [n_train // 2, n_train, n_train + n_train // 2, 2 * n_train]
    assert sorted(small.intermediate_values) == expected
    assert sorted(large.intermediate_values) == expected


def test_returns_best_value_and_records_attributes(cfg: TextClassificationConfig) -> None:
    trial = run_trial(cfg, {"batch_size": 8, "learning_rate": 1e-3, "freeze_layers": 1})
    a = trial.user_attrs
    assert trial.value == pytest.approx(min(trial.intermediate_values.values()))
    assert trial.intermediate_values[a["best_step"]] == pytest.approx(trial.value)
    for key in ("val_accuracy", "val_f1", "examples_seen", "train_seconds", "trainable_params",
                "total_params", "planned_examples", "history"):
        assert key in a, key
    assert a["examples_seen"] == a["planned_examples"] == max(trial.intermediate_values)
    assert 0 < a["trainable_params"] < a["total_params"]
    assert [h["step"] for h in a["history"]] == sorted(trial.intermediate_values)


def test_maximizing_metric_returns_the_highest_value(cfg: TextClassificationConfig) -> None:
    cfg = dataclasses.replace(cfg, metric="val_accuracy")
    trial = run_trial(cfg, {"batch_size": 8, "learning_rate": 1e-3})
    assert trial.value == pytest.approx(max(trial.intermediate_values.values()))


def test_frozen_layers_get_no_gradient_and_no_optimizer_state(cfg: TextClassificationConfig) -> None:
    full = run_trial(cfg, {"freeze_layers": 0, "batch_size": 8})
    one = run_trial(cfg, {"freeze_layers": 1, "batch_size": 8})
    head = run_trial(cfg, {"freeze_layers": 2, "batch_size": 8})
    base = task_for(cfg).base_model.base_model
    n_emb = sum(p.numel() for p in base.embeddings.parameters())
    n_layer = sum(p.numel() for p in base.encoder.layer[0].parameters())
    assert full.user_attrs["trainable_params"] == full.user_attrs["total_params"]
    assert one.user_attrs["trainable_params"] == full.user_attrs["trainable_params"] - n_emb - n_layer
    assert head.user_attrs["trainable_params"] == one.user_attrs["trainable_params"] - n_layer
    assert one.user_attrs["prefix_cached"] and head.user_attrs["prefix_cached"]


def test_base_model_is_never_trained(cfg: TextClassificationConfig) -> None:
    res = task_for(cfg).res
    before = {k: v.clone() for k, v in res.base_model.state_dict().items()}
    for params in ({"freeze_layers": 1}, {}, {"freeze_layers": 2}, {"r": 4}):
        run_trial(cfg, {"batch_size": 8, "learning_rate": 1e-2, **params})
    after = res.base_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in res.base_model.parameters())


def test_frozen_weights_are_shared_with_the_base_model_not_copied(
    cfg: TextClassificationConfig,
) -> None:
    task = task_for(cfg)
    base = task.base_model
    model, shared = _fresh_model(task, 1, lora=False)
    frozen = [base.base_model.embeddings, base.base_model.encoder.layer[0]]
    assert shared == {id(p) for m in frozen for p in m.parameters()}
    mine = model.base_model
    assert mine.encoder.layer[0].attention.self.query.weight is frozen[1].attention.self.query.weight
    assert mine.encoder.layer[1].attention.self.query.weight is not base.base_model.encoder.layer[1].attention.self.query.weight
    assert mine.encoder.layer[0] is not frozen[1]  # modules are the trial's own (dropout, mode)
    # Full fine-tuning and LoRA (whose adapters may be merged into the weights) copy everything.
    for k, lora in ((0, False), (1, True)):
        model, shared = _fresh_model(task, k, lora=lora)
        assert not shared
        assert not {id(p) for p in model.parameters()} & {id(p) for p in base.parameters()}


@pytest.mark.parametrize("k", [1, 2])
def test_fast_paths_and_plain_path_train_the_same(cfg: TextClassificationConfig, k: int) -> None:
    """Same frozen depth with the fast paths (prefix cache, top layer for [CLS]) on and off:
    the same validation losses at every step, also with dropout."""
    task = task_for(cfg)
    params = TrainParams.from_params({"freeze_layers": k, "batch_size": 8, "learning_rate": 1e-3})
    fast = train(params, task)
    plain = train(params, task, fast_paths=False)
    assert fast.record.prefix_cached and not plain.record.prefix_cached
    assert [p.step for p in fast.record.history] == [p.step for p in plain.record.history]
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
        assert a.metrics["val_accuracy"] == b.metrics["val_accuracy"]
    # The model is whole again afterwards.
    assert len(task.base_model.base_model.encoder.layer) == 2


def test_prefix_cache_is_reused_and_bounded(cfg: TextClassificationConfig,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import objectives.fastpath

    clear_resources()
    computed: list[int] = []
    compute = objectives.fastpath.compute_prefix
    monkeypatch.setattr(objectives.fastpath, "compute_prefix",
                        lambda *a, **k: computed.append(1) or compute(*a, **k))
    run_trial(cfg, {"freeze_layers": 1, "batch_size": 8})
    res = task_for(cfg).res
    first = len(computed)
    assert len(res.prefix_cache.keys()) == 1 and first >= 2  # train and validation at least
    second = run_trial(cfg, {"freeze_layers": 1, "batch_size": 8})
    assert len(computed) == first and second.user_attrs["prefix_cached"]  # looked up, not computed

    cache = PrefixCache(max_bytes=100)
    cache.put("a", 1, 60)
    cache.put("b", 2, 30)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3, 30)
    assert cache.keys() == ["a", "c"] and cache.nbytes <= 100
    cache.put("huge", 4, 1000)
    assert cache.get("huge") is None


def test_caches_are_not_shared_across_models_lengths_or_data(
    cfg: TextClassificationConfig, tmp_path: Path
) -> None:
    from conftest import make_rows
    from conftest import write_csv

    a = task_for(cfg).res
    b = task_for(dataclasses.replace(cfg, max_length=16)).res
    other = DatasetConfig(path=str(write_csv(tmp_path / "o.csv", make_rows(60, 1))))
    c = task_for(dataclasses.replace(cfg, dataset=other)).res
    assert len({a.key, b.key, c.key}) == 3
    assert a.prefix_cache is not b.prefix_cache is not c.prefix_cache
    assert max(b.encoded["train"].lengths) <= 16


def test_token_cache_on_disk_round_trips(cfg: TextClassificationConfig, tmp_path: Path) -> None:
    clear_resources()
    first = task_for(dataclasses.replace(cfg, cache_dir=str(tmp_path))).res
    assert list((tmp_path / "tokens").glob("*.npz"))
    clear_resources()
    second = task_for(dataclasses.replace(cfg, cache_dir=str(tmp_path))).res
    for name in ("train", "validation", "test"):
        assert all(
            np.array_equal(x, y)
            for x, y in zip(first.encoded[name].ids, second.encoded[name].ids, strict=True)
        )


def test_lora_trains_only_adapters_and_head(cfg: TextClassificationConfig) -> None:
    trial = run_trial(cfg, {"r": 4, "lora_alpha": 8, "target_modules": "query,value",
                            "batch_size": 8, "learning_rate": 1e-2})
    a = trial.user_attrs
    # 2 layers x 2 modules x (32*4 + 4*32) adapter weights + classifier head (32*2+2)
    # + pooler is frozen by peft's SEQ_CLS wrapper.
    assert a["trainable_params"] == 2 * 2 * (32 * 4 + 4 * 32) + 32 * 2 + 2
    assert not a["prefix_cached"]


def test_pruned_trial_records_what_it_trained(cfg: TextClassificationConfig) -> None:
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    study = optuna.create_study(pruner=AlwaysPrune())
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective(trial, {"batch_size": 8}, cfg)
    frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert frozen.user_attrs["examples_seen"] == min(frozen.intermediate_values)
    assert frozen.user_attrs["planned_examples"] == 4 * frozen.user_attrs["examples_seen"]


def test_nan_loss_fails_the_trial_with_a_reason(cfg: TextClassificationConfig) -> None:
    from objectives.core import NonFiniteLoss

    res = task_for(cfg).res
    weight = res.base_model.classifier.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")  # a corrupt checkpoint: every logit of class 0 is NaN
    try:
        study = optuna.create_study()
        trial = study.ask()
        with pytest.raises(NonFiniteLoss, match=r"^training loss is nan after 0 examples"):
            objective(trial, {"batch_size": 8}, cfg)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_test_split_is_never_touched(cfg: TextClassificationConfig) -> None:
    clear_resources()
    res = task_for(cfg).res

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("the search touched the test split")

        def __len__(self) -> int:
            raise AssertionError("the search touched the test split")

    saved = res.encoded["test"]
    res.encoded["test"] = Untouchable()  # type: ignore[assignment]
    try:
        with pytest.raises(AssertionError, match="touched the test split"):
            task_for(cfg).examples("test")  # the guard works
        run_trial(cfg, {"batch_size": 8, "freeze_layers": 1})
    finally:
        res.encoded["test"] = saved
        clear_resources()


def test_validate_space_checks_the_model_depth(cfg: TextClassificationConfig) -> None:
    from optuna.distributions import CategoricalDistribution
    from optuna.distributions import IntDistribution

    validate_space(cfg, {"freeze_layers": IntDistribution(0, 2)})
    with pytest.raises(ValueError, match=r"^freeze_layers: 3 is beyond the 2 layers of model"):
        validate_space(cfg, {"freeze_layers": IntDistribution(0, 3)})
    with pytest.raises(ValueError, match="^momentum: not a hyperparameter"):
        validate_space(cfg, {"momentum": IntDistribution(0, 3)})
    with pytest.raises(ValueError, match="^target_modules: 'mlp' is not a linear module of the "
                       "model's layers \\(valid: dense, key, query, value, or all-linear\\)"):
        validate_space(cfg, {"target_modules": CategoricalDistribution(["query,mlp"])})


def test_segments_cover_each_epoch_exactly_once() -> None:
    segments = plan_segments(10, epochs=2, evals_per_epoch=3, seed=0)
    assert [len(s) for s in segments] == [4, 3, 3, 4, 3, 3]
    assert sorted(np.concatenate(segments[:3])) == list(range(10))
    assert not np.array_equal(np.concatenate(segments[:3]), np.concatenate(segments[3:]))


def test_macro_f1() -> None:
    y = np.array([0, 0, 1, 1])
    assert macro_f1(y, y, 2) == 1.0
    assert macro_f1(y, np.array([0, 0, 0, 0]), 2) == pytest.approx((2 / 3 + 0) / 2)
    assert math.isclose(macro_f1(y, 1 - y, 2), 0.0)


@pytest.mark.slow
def test_packaged_minilm_on_rotten_tomatoes_learns() -> None:
    """The real model on real data, a few steps: validation loss goes down."""
    cfg = TextClassificationConfig.from_dict(
        {"model": "minilm", "dataset": {"name": "rotten_tomatoes", "max_examples": 300},
         "epochs": 1, "evals_per_epoch": 2, "cache_dir": None}
    )
    trial = run_trial(cfg, {"freeze_layers": 3, "batch_size": 16, "learning_rate": 3e-4})
    values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
    assert values[-1] < values[0] < 0.75
    assert trial.user_attrs["total_params"] > 22_000_000


def test_each_trial_records_its_device_and_precision(
    monkeypatch: pytest.MonkeyPatch, cfg: TextClassificationConfig
) -> None:
    from objectives import devices

    for here, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(devices, "_native_bf16_here", lambda here=here: here)
        # The default is auto; each trial records what it ran with.
        assert TextClassificationConfig.from_dict({}).precision == "auto"
        trial = run_trial(dataclasses.replace(cfg, precision="auto"), {"batch_size": 16, "freeze_layers": 1})
        assert trial.user_attrs["precision"] == expected
        assert trial.user_attrs["device"] == "cpu"
        assert trial.user_attrs["device_name"]
        assert trial.user_attrs["peak_memory_mb"] > 0
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        TextClassificationConfig.from_dict({"precision": "fp8"})
