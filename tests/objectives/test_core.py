"""The training core on its own (no optuna): stopping, resuming, checkpoints without pickle,
out of memory, and the trial record's schema."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from objectives.checkpoints import checkpoint_path
from objectives.checkpoints import load_checkpoint
from objectives.core import OutOfMemory
from objectives.core import train
from objectives.params import TrainParams
from objectives.record import EvalPoint
from objectives.record import TrialRecord
from objectives.record import WorkerRecord
from objectives.text_classification import TextClassificationConfig
from objectives.text_classification import task_for

PARAMS = TrainParams.from_params({"batch_size": 8, "learning_rate": 1e-3, "freeze_layers": 1,
                                  "dropout": 0.2})


@pytest.fixture
def task(tiny_model: str, data_csv: Path) -> Any:
    return task_for(TextClassificationConfig.from_dict({
        "model": tiny_model, "dataset": {"path": str(data_csv)}, "max_length": 32,
        "epochs": 2, "evals_per_epoch": 2, "cache_dir": None, "precision": "fp32",
    }))


def test_on_eval_sees_each_step_and_stops_the_run(task: Any) -> None:
    seen: list[EvalPoint] = []

    def stop_after_two(point: EvalPoint) -> bool:
        seen.append(point)
        return len(seen) == 2

    result = train(PARAMS, task, on_eval=stop_after_two)
    assert result.stopped and len(result.record.history) == 2
    assert [p.step for p in seen] == [p.step for p in result.record.history]
    assert result.record.examples_seen == seen[-1].step < result.record.planned_examples
    assert result.value == min(p.metrics["val_loss"] for p in seen)


def test_a_resumed_run_is_the_uninterrupted_run(task: Any, tmp_path: Path) -> None:
    """Interrupted after its second evaluation and resumed from the checkpoint: the same
    validation losses as a run that was never interrupted (batches and dropout included)."""
    whole = train(PARAMS, task).record
    path = checkpoint_path(tmp_path, "study", 3)

    class Interrupt(Exception):
        pass

    def interrupt(point: EvalPoint) -> bool:
        if len(calls) == 2:
            raise Interrupt
        calls.append(point)
        return False

    calls: list[EvalPoint] = []
    with pytest.raises(Interrupt):
        train(PARAMS, task, on_eval=interrupt, checkpoint=path)
    assert path.is_file()
    resumed = train(PARAMS, task, resume=path).record
    assert resumed.resumed_from == {"trial": 3, "step": whole.history[1].step}
    assert [p.step for p in resumed.history] == [p.step for p in whole.history]
    for a, b in zip(resumed.history, whole.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-6)


class _Payload:
    def __reduce__(self) -> Any:
        import os

        return (os.system, ("touch PWNED",))


def test_a_pickled_checkpoint_is_never_unpickled(task: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A shared checkpoint directory must not be a way to run code on every worker."""
    monkeypatch.chdir(tmp_path)
    path = checkpoint_path(tmp_path, "study", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({"trainable": _Payload()}))
    torch.save({"x": _Payload()}, tmp_path / "other.pt")
    (tmp_path / "study" / "trial-1.safetensors").write_bytes((tmp_path / "other.pt").read_bytes())
    for p in (path, tmp_path / "study" / "trial-1.safetensors"):
        assert load_checkpoint(p, "cpu") is None
    result = train(PARAMS, task, resume=path)  # starts from scratch, with a warning
    assert result.record.resumed_from is None and len(result.record.history) == 4
    assert not (tmp_path / "PWNED").exists()
    assert "ignored" in caplog.text


def test_out_of_memory_names_the_batch_size_device_and_peak(task: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from objectives import core

    original = core._optimizer

    def oom_at_64(model: Any, params: TrainParams, *rest: Any) -> Any:
        if params.batch_size == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 79.00 GiB")
        return original(model, params, *rest)

    monkeypatch.setattr(core, "_optimizer", oom_at_64)
    with pytest.raises(OutOfMemory, match=r"^out of memory at batch_size=64 on cpu, peak \d+\.\d GiB$") as err:
        train(TrainParams.from_params({"batch_size": 64}), task)
    assert err.value.record.peak_memory_mb > 0 and err.value.record.device == "cpu"
    assert err.value.__traceback__ is not None and err.value.__context__ is None  # nothing held
    assert train(TrainParams.from_params({"batch_size": 8}), task).value is not None


def test_the_record_round_trips_through_user_attrs() -> None:
    record = TrialRecord(
        history=[EvalPoint(10, {"val_loss": 0.7, "val_accuracy": 0.5}, 1.25, 300),
                 EvalPoint(20, {"val_loss": 0.6, "val_accuracy": 0.6}, 2.5, 600)],
        best_step=20, examples_seen=20, tokens_seen=600, planned_examples=40, train_seconds=2.5,
        trainable_params=10, total_params=100, device="cuda:0", device_name="NVIDIA H200",
        precision="bf16", peak_memory_mb=1024.5, prefix_cached=True, resumed_from={"trial": 1, "step": 10},
    )
    attrs = record.to_attrs()
    assert attrs["val_loss"] == 0.6 and attrs["val_accuracy"] == 0.6  # the best point's metrics
    assert attrs["history"][0] == {"step": 10, "val_loss": 0.7, "val_accuracy": 0.5,
                                   "seconds": 1.25, "tokens": 300}
    back = TrialRecord.from_attrs(attrs)
    assert back == record
    assert back.best == {"val_loss": 0.6, "val_accuracy": 0.6} and back.metric("val_loss") == 0.6
    # Missing or malformed attrs read as unset (older studies, user objectives).
    odd = TrialRecord.from_attrs({"examples_seen": "many", "history": [{"no": "step"}, 3],
                                  "device": 5, "prefix_cached": "yes"})
    assert odd == TrialRecord()
    worker = WorkerRecord.from_attrs({"worker": {"id": "w1"}, "fail_reason": "OutOfMemory: x",
                                      "infeasible": "out of memory", "wall_seconds": 3})
    assert worker.worker_id == "w1" and worker.wall_seconds == 3.0 and worker.infeasible


def test_micro_batches_accumulate_to_the_same_run(task: Any, tmp_path: Path) -> None:
    """batch_size 16 in micro-batches of 4: the same steps and validation losses as one forward
    pass per batch (without dropout, whose masks depend on the pass's shape)."""
    import dataclasses

    from objectives.text_classification import TextClassificationTask

    params = TrainParams.from_params({"batch_size": 16, "learning_rate": 1e-3, "dropout": 0.0})
    whole = train(params, task).record
    micro_task = TextClassificationTask(dataclasses.replace(task.config, micro_batch_size=4), task.res)
    micro = train(params, micro_task).record
    assert [p.step for p in micro.history] == [p.step for p in whole.history]
    for a, b in zip(micro.history, whole.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)


def test_layer_wise_learning_rate_decay(task: Any) -> None:
    from objectives.core import _fresh_model
    from objectives.core import _optimizer
    from objectives.structure import find_structure

    model, _ = _fresh_model(task, 0, lora=False)
    for p in model.parameters():
        p.requires_grad_(True)
    structure = find_structure(model)
    params = TrainParams.from_params({"learning_rate": 1e-3, "layer_decay": 0.5, "weight_decay": 0.01})
    optimizer = _optimizer(model, params, structure)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    layers = structure.layers
    assert lr_of[id(layers[1].attention.self.query.weight)] == pytest.approx(1e-3)  # the top
    assert lr_of[id(layers[0].attention.self.query.weight)] == pytest.approx(5e-4)
    assert lr_of[id(structure.pre[0].word_embeddings.weight)] == pytest.approx(2.5e-4)
    assert lr_of[id(model.classifier.weight)] == pytest.approx(1e-3)  # the head
    assert decay_of[id(layers[0].attention.self.query.bias)] == 0.0  # no decay on biases
    assert decay_of[id(layers[0].attention.self.query.weight)] == 0.01
    # Off (1.0): one rate for all.
    plain = _optimizer(model, TrainParams.from_params({"learning_rate": 1e-3}), structure)
    assert {g["lr"] for g in plain.param_groups} == {1e-3}


def test_gradual_unfreezing(task: Any) -> None:
    """unfreeze_every: 1 on a 2-layer model: the top layer trains first, then (after the first
    evaluation) the bottom one and the embeddings; with the fast paths, the cached outputs of
    the frozen bottom feed the run while it is frozen, with the same numbers as without."""
    base = task.base_model.base_model
    gradual = TrainParams.from_params({"batch_size": 8, "learning_rate": 1e-3, "unfreeze_every": 1})
    never = TrainParams.from_params({"batch_size": 8, "learning_rate": 1e-3, "unfreeze_every": 100})
    fast = train(gradual, task, keep_model=True)
    plain = train(gradual, task, fast_paths=False)
    assert fast.record.prefix_cached and not plain.record.prefix_cached
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    held = train(never, task, keep_model=True)
    for result, moved in ((fast, True), (held, False)):
        mine = result.model.base_model
        for a, b in ((mine.encoder.layer[0].output.dense.weight, base.encoder.layer[0].output.dense.weight),
                     (mine.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)):
            assert (not torch.equal(a, b)) is moved
        assert not torch.equal(mine.encoder.layer[1].output.dense.weight,
                               base.encoder.layer[1].output.dense.weight)  # the top always trains
    assert fast.record.trainable_params == held.record.trainable_params  # all of it, eventually


def test_augmentation_draws_from_each_batchs_seed_and_skips_the_prefix_cache(task: Any) -> None:
    """A task that augments its training batches gets a generator seeded by the batch (None in
    evaluation): the same draws in two runs; the frozen prefix is not cached (its inputs vary)."""
    from objectives.text_classification import TextClassificationTask

    draws: list[tuple[bool, float | None]] = []

    class Augmenting(TextClassificationTask):
        def augments(self, params: TrainParams) -> bool:
            return True

        def collate(self, examples: Any, device: str, rng: Any = None) -> Any:
            draws.append((rng is None, None if rng is None else float(rng.random())))
            return super().collate(examples, device, rng)

    aug = Augmenting(task.config, task.res)
    params = TrainParams.from_params({"batch_size": 8, "freeze_layers": 1})
    first = train(params, aug).record
    runs = [list(draws)]
    draws.clear()
    train(params, aug)
    runs.append(list(draws))
    assert runs[0] == runs[1]
    assert any(none for none, _ in runs[0]) and any(not none for none, _ in runs[0])
    assert len({v for none, v in runs[0] if not none}) > 1  # a fresh seed per batch
    assert first.prefix_cached is False


def test_cross_validation_scores_the_mean_over_folds_in_lockstep(task: Any) -> None:
    """cv_folds: 3: three models, one per fold of train + validation (stratified, the test split
    left out), evaluated at the same examples seen; on_eval gets their mean; a stop stops all."""
    import dataclasses

    from objectives.core import train_folds
    from objectives.text_classification import TextClassificationTask

    cv = TextClassificationTask(dataclasses.replace(task.config, cv_folds=3), task.res)
    folds = cv.folds(3)
    pool = len(task.examples("train")) + len(task.examples("validation"))
    assert sum(len(f.examples("validation")) for f in folds) == pool
    for f in folds:  # each fold validates on its own rows and trains on the others
        assert len(f.examples("train")) + len(f.examples("validation")) == pool
        assert {id(x) for x in f.examples("train")}.isdisjoint(id(x) for x in f.examples("validation"))
        labels = [y for _, y in f.examples("validation")]
        assert abs(labels.count(0) - labels.count(1)) <= 1  # stratified
    test_ids = {id(x) for x in task.examples("test")}
    assert all(test_ids.isdisjoint(id(x) for x in f.examples("train")) for f in folds)

    seen: list[EvalPoint] = []
    singles = [train(PARAMS, f).record for f in folds]
    result = train_folds(PARAMS, folds, on_eval=lambda p: seen.append(p) or len(seen) == 3)
    assert result.stopped and len(seen) == 3 and result.record.folds == 3
    for i, point in enumerate(seen):
        mean = sum(r.history[i].metrics["val_loss"] for r in singles) / 3
        assert point.metrics["val_loss"] == pytest.approx(mean, abs=1e-6)
        assert point.step == singles[0].history[i].step
    assert result.value == pytest.approx(min(p.metrics["val_loss"] for p in seen))
    with pytest.raises(ValueError, match="cv_folds: 40 folds need at least 40 examples of every class"):
        cv.folds(40)
