"""Where a trial trains and in which precision, and what it holds there.

Everything that depends on the device is decided here, once per trial, at the top of the
training loop (nanoGPT's ``train.py`` does it in a few lines): the device from ``device: auto |
cpu | cuda | cuda:N | mps``, the precision from ``precision: auto | fp32 | bf16 | fp16``, the
autocast context and gradient scaler that go with it, and the memory meter.

- ``auto`` device: CUDA if available, else MPS, else the CPU.
- ``auto`` precision: on CUDA, bf16 autocast where the GPU computes it natively (compute
  capability 8.0 and up), else fp16 autocast with a gradient scaler; on a CPU, bf16 where it has
  AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than fp32), else fp32; fp32 on MPS.

Memory: each trial records its peak (CUDA: the allocator's peak; CPU: the process's peak
resident set, reset at the trial's start where Linux allows it), and after each trial the
worker calls :func:`release_memory`, so what a finished trial held goes back to the device.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import platform
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEVICE_RE",
    "PRECISIONS",
    "MemoryMeter",
    "Precision",
    "allocated_bytes",
    "check_device_spec",
    "cuda_device_count",
    "device_name",
    "is_out_of_memory",
    "native_bf16",
    "release_memory",
    "resolve_device",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_spec(spec: Any) -> str:
    """``spec`` if it names a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Raises:
        ValueError: anything else, with the valid forms.
    """
    if not isinstance(spec, str) or not DEVICE_RE.match(spec):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    return spec


# Availability, one function each, so that tests can fake a machine with GPUs.
def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_device_count() -> int:
    """CUDA devices this process sees (after ``CUDA_VISIBLE_DEVICES``); 0 without CUDA."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cuda_capability(device: str) -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def resolve_device(spec: str) -> str:
    """The concrete device of ``spec``: ``auto`` is CUDA if available, else MPS, else CPU.

    Raises:
        ValueError: a device this machine does not have (e.g. ``cuda`` on a CPU-only torch),
            with what it has.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    check_device_spec(spec)
    if spec == "auto":
        if cuda_available():
            return "cuda:0"
        return "mps" if mps_available() else "cpu"
    if spec.startswith("cuda"):
        count = cuda_device_count() if cuda_available() else 0
        if count == 0:
            raise ValueError(
                f"device {spec!r}: no CUDA device here (torch.cuda.is_available() is False); "
                "use device: auto or cpu"
            )
        index = int(spec.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(
                f"device {spec!r}: this process sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        return f"cuda:{index}"
    if spec == "mps" and not mps_available():
        raise ValueError("device 'mps': MPS is not available here; use device: auto or cpu")
    return spec


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates it, slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _native_bf16_here() -> bool:
    return native_bf16()


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` -> the precision for ``device`` (see the module docstring); others as given.

    Measured (``python -m benchmarks.precision``, BENCHMARKS.md): bf16 autocast trains 1.6x
    faster on an AVX512-BF16 CPU with the same best validation loss and accuracy.

    Raises:
        ValueError: an unknown precision, or fp16 on a CPU (autocast has no fp16 there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = device.partition(":")[0]
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if cuda_capability(device) >= (8, 0) else "fp16"
        if kind == "cpu":
            return "bf16" if _native_bf16_here() else "fp32"
        return "fp32"
    if precision == "fp16" and kind == "cpu":
        raise ValueError("precision fp16 needs a GPU (CPU autocast runs bf16); use auto or bf16")
    return precision


@dataclass(frozen=True)
class Precision:
    """A resolved precision on a device: its autocast context and whether it needs a scaler."""

    name: str  # fp32, bf16 or fp16
    device: str

    @property
    def device_type(self) -> str:
        return self.device.partition(":")[0]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to bf16/fp16 on this device; nothing for fp32."""
        import torch

        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> Any:
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's range)."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def device_name(device: str) -> str:
    """A human name of ``device``: the GPU's product name, or the CPU's model name."""
    kind = device.partition(":")[0]
    if kind == "cuda":
        import torch

        return str(torch.cuda.get_device_name(device))
    if kind == "mps":
        return "Apple MPS"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# --- memory --------------------------------------------------------------------------------


def _rss_peak_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


def _reset_rss_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one.
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


class MemoryMeter:
    """The peak memory of one trial on its device.

    CUDA: the caching allocator's peak of allocated bytes since :meth:`start`. CPU: the
    process's peak resident set since :meth:`start` (Linux resets it; elsewhere it is the
    process's peak so far). MPS: the driver's allocated bytes at the end.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.kind = device.partition(":")[0]

    def start(self) -> None:
        if self.kind == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu":
            _reset_rss_peak()

    def peak_bytes(self) -> int | None:
        import torch

        if self.kind == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "mps":
            return int(torch.mps.driver_allocated_memory())
        return _rss_peak_bytes()


def allocated_bytes(device: str) -> int:
    """Bytes of tensors alive on ``device`` right now.

    CUDA and MPS ask their allocator. On a CPU there is no allocator count, so this adds up the
    storages of every tensor the garbage collector can reach (slow: for tests and checks, not
    for a hot loop).
    """
    import torch

    kind = device.partition(":")[0]
    if kind == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if kind == "mps":
        return int(torch.mps.current_allocated_memory())
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            # type(), not isinstance(): the latter asks proxies (deprecated aliases) for __class__
            if not issubclass(type(obj), torch.Tensor) or obj.device.type != "cpu" or obj.is_meta:
                continue
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, ReferenceError, NotImplementedError):
            continue
    return sum(seen.values())


def release_memory(device: str | None = None) -> None:
    """Give back what finished work held: collect garbage, empty the device's cache."""
    gc.collect()
    kind = (device or "").partition(":")[0]
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    if kind in ("cuda", "") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if kind in ("mps", "") and mps_available():
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or the host) running out of memory."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


def gib(n_bytes: int | None) -> str:
    """``n_bytes`` as "1.2 GiB" (or "? GiB" when unknown)."""
    return "? GiB" if n_bytes is None else f"{n_bytes / 2**30:.1f} GiB"

