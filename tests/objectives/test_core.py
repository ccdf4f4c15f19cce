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

    def oom_at_64(model: Any, params: TrainParams) -> Any:
        if params.batch_size == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 79.00 GiB")
        return original(model, params)

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
