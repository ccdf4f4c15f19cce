"""Data-parallel training across processes started by torch's launcher (``torchrun``).

``torchrun`` (or ``accelerate launch``) starts one process per device and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init` joins the process group once per process (NCCL
on GPUs, gloo on CPUs, as nanoGPT's ``train.py`` does). The training loop then asks
:func:`current` for its rank: every rank trains on its shard of each batch, gradients are
averaged by ``DistributedDataParallel``, evaluation outputs are gathered, and only rank 0
reports; what rank 0 decides (stop or go on) is broadcast so that all ranks stop together.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DistContext", "all_gather", "broadcast", "current", "env_world_size", "init",
           "worker_device"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT = DistContext()


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init(device: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that torchrun describes in the environment (once per process).

    Args:
        device: the configured device (``auto``, ``cpu``, ``cuda``...): CUDA ranks use NCCL and
            ``cuda:LOCAL_RANK``; CPU ranks use gloo.
        timeout_s: how long a collective waits for a rank before failing.
    """
    global _CONTEXT
    import torch
    import torch.distributed as dist

    if _CONTEXT.active:
        return _CONTEXT
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)
    return _CONTEXT


def current() -> DistContext:
    """This process's context (rank 0 of 1 unless :func:`init` joined a group)."""
    return _CONTEXT


def rank_device(ctx: DistContext, device: str) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` with NCCL, else the CPU."""
    return f"cuda:{ctx.local_rank}" if ctx.backend == "nccl" else "cpu"


def worker_device(requested: str) -> str:
    """Where this worker trains: its rank's device inside a distributed group, else the
    ``device`` setting resolved (``auto`` → the best available)."""
    from objectives.devices import resolve_device

    ctx = current()
    return rank_device(ctx, requested) if ctx.active else resolve_device(requested)


def broadcast(obj: Any, ctx: DistContext | None = None) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    ctx = ctx or _CONTEXT
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any, ctx: DistContext | None = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    ctx = ctx or _CONTEXT
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, ctx: DistContext | None = None) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    return any(all_gather(bool(flag), ctx))


def shutdown() -> None:
    """Leave the process group (end of a worker)."""
    global _CONTEXT
    if _CONTEXT.active:
        import torch.distributed as dist

        dist.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()
    _CONTEXT = DistContext()
