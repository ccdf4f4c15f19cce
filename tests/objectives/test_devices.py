"""Devices and precision, decided once per trial: resolution with the machine faked, memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objectives import devices
from objectives.devices import Precision
from objectives.devices import allocated_bytes
from objectives.devices import check_device_spec
from objectives.devices import is_out_of_memory
from objectives.devices import resolve_device
from objectives.devices import resolve_precision


def fake_machine(monkeypatch: pytest.MonkeyPatch, *, cuda: int = 0, mps: bool = False,
                 capability: tuple[int, int] = (9, 0)) -> None:
    monkeypatch.setattr(devices, "cuda_available", lambda: cuda > 0)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: cuda)
    monkeypatch.setattr(devices, "mps_available", lambda: mps)
    monkeypatch.setattr(devices, "cuda_capability", lambda device: capability)


@pytest.mark.parametrize(
    ("machine", "spec", "expected"),
    [
        ({"cuda": 2, "mps": True}, "auto", "cuda:0"),
        ({"cuda": 0, "mps": True}, "auto", "mps"),
        ({}, "auto", "cpu"),
        ({"cuda": 4}, "cuda", "cuda:0"),
        ({"cuda": 4}, "cuda:3", "cuda:3"),
        ({"cuda": 4}, "cpu", "cpu"),
        ({"mps": True}, "mps", "mps"),
    ],
)
def test_device_resolution(monkeypatch: pytest.MonkeyPatch, machine: dict, spec: str,
                           expected: str) -> None:
    fake_machine(monkeypatch, **machine)
    assert resolve_device(spec) == expected


@pytest.mark.parametrize(
    ("machine", "spec", "message"),
    [
        ({}, "cuda", r"^device 'cuda': no CUDA device here"),
        ({"cuda": 2}, "cuda:2", r"^device 'cuda:2': this process sees 2 CUDA device\(s\) \(cuda:0..cuda:1\)"),
        ({}, "mps", r"^device 'mps': MPS is not available here"),
        ({}, "gpu", r"^device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        ({}, "cuda:x", r"^device must be"),
    ],
)
def test_unavailable_or_malformed_device_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, machine: dict, spec: str, message: str
) -> None:
    fake_machine(monkeypatch, **machine)
    with pytest.raises(ValueError, match=message):
        resolve_device(spec)


def test_precision_auto_decides_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_machine(monkeypatch, cuda=1, capability=(8, 0))
    assert resolve_precision("auto", "cuda:0") == "bf16"  # A100, H100/H200: native bf16
    fake_machine(monkeypatch, cuda=1, capability=(7, 5))
    assert resolve_precision("auto", "cuda:0") == "fp16"  # T4, V100: fp16 with a scaler
    assert resolve_precision("auto", "mps") == "fp32"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(devices, "_native_bf16_here", lambda native=native: native)
        assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cuda:0") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="^precision fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="^precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", "cpu")


def test_native_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    native = tmp_path / "native"
    native.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 avx512_vnni\n")
    amx = tmp_path / "amx"
    amx.write_text("processor : 0\nflags : fpu amx_bf16 amx_tile\n")
    emulated = tmp_path / "emulated"
    emulated.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert devices.native_bf16(str(native)) and devices.native_bf16(str(amx))
    assert not devices.native_bf16(str(emulated))
    assert not devices.native_bf16(str(tmp_path / "missing"))


def test_scaler_only_for_fp16_and_autocast_only_below_fp32() -> None:
    assert not Precision("bf16", "cpu").scaler().is_enabled()
    assert not Precision("fp32", "cpu").scaler().is_enabled()
    with Precision("bf16", "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_device_specs_are_checked_in_configs() -> None:
    from objectives.text_classification import TextClassificationConfig

    assert check_device_spec("cuda:12") == "cuda:12"
    assert TextClassificationConfig.from_dict({"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ValueError, match="^device must be auto, cpu, cuda, cuda:N or mps"):
        TextClassificationConfig.from_dict({"device": "tpu"})


def test_allocated_bytes_counts_live_tensors_on_the_cpu() -> None:
    before = allocated_bytes("cpu")
    big = torch.zeros(1024, 1024)  # 4 MiB
    view = big[:10]  # a view shares its storage: counted once
    assert allocated_bytes("cpu") - before == 4 * 2**20
    del big, view
    assert allocated_bytes("cpu") == before


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert devices.gib(85 * 2**30) == "85.0 GiB" and devices.gib(None) == "? GiB"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_model_and_batches_live_on_the_device(tiny_model: str, data_csv: Path) -> None:
    from objectives.core import train
    from objectives.params import TrainParams
    from objectives.text_classification import TextClassificationConfig
    from objectives.text_classification import task_for

    cfg = TextClassificationConfig.from_dict({"model": tiny_model, "dataset": {"path": str(data_csv)},
                                              "max_length": 32, "cache_dir": None, "device": "cuda"})
    task = task_for(cfg)
    assert next(task.base_model.parameters()).device.type == "cuda"
    record = train(TrainParams.from_params({"batch_size": 8, "freeze_layers": 1}), task).record
    assert record.device == "cuda:0" and record.device_name and record.peak_memory_mb > 0
    assert record.precision in ("bf16", "fp16")
