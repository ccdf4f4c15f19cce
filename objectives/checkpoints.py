"""Checkpoints of a trial at a fidelity step, in safetensors: no pickle, so no code in them.

A shared checkpoint directory is read by every worker; a pickle there (``torch.load`` without
``weights_only``) would run whatever code its writer put in it on all of them. A checkpoint is
one ``.safetensors`` file: the trainable weights and the optimizer's tensors as tensors, and
everything else (optimizer settings, schedule, scaler, history, position in the run) as JSON in
the file's metadata. Loading parses JSON and tensors only; a file that is not a valid
checkpoint is ignored with a warning (the trial then starts from scratch).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["checkpoint_path", "find_checkpoint", "load_checkpoint", "save_checkpoint", "trial_number"]

_LOG = logging.getLogger("hpo.objectives")
_FORMAT = "hpo-checkpoint-1"


def checkpoint_path(directory: str | Path, study: str, number: int) -> Path:
    """Where trial ``number`` of ``study`` keeps its checkpoint."""
    return Path(directory) / study / f"trial-{number}.safetensors"


def trial_number(path: Path) -> int:
    """The trial whose checkpoint ``path`` is (see :func:`checkpoint_path`)."""
    return int(path.stem.rpartition("-")[2])


def find_checkpoint(directory: str | Path, study: str, numbers: list[int]) -> tuple[int, Path] | None:
    """The newest existing checkpoint among the trials ``numbers`` (a retried trial's chain)."""
    for number in reversed(numbers):
        path = checkpoint_path(directory, study, number)
        if path.is_file():
            return number, path
    return None


def save_checkpoint(path: Path, tensors: dict[str, Any], optimizer: dict[str, Any],
                    state: dict[str, Any], rng: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` (name -> tensor), an optimizer ``state_dict``, JSON-able ``state`` and
    random-generator states ``rng`` (name -> byte tensor) atomically (a concurrent reader never
    sees half a file)."""
    from safetensors.torch import save_file

    flat = {f"model.{name}": t.detach().contiguous() for name, t in tensors.items()}
    flat.update({f"rng.{name}": t.contiguous() for name, t in (rng or {}).items()})
    optim_state: dict[str, dict[str, Any]] = {}
    for index, values in optimizer["state"].items():
        plain = {}
        for key, value in values.items():
            if hasattr(value, "detach"):
                flat[f"optim.{index}.{key}"] = value.detach().contiguous()
            else:
                plain[key] = value
        optim_state[str(index)] = plain
    meta = {"format": _FORMAT, "state": json.dumps(state),
            "optimizer": json.dumps({"param_groups": optimizer["param_groups"], "state": optim_state})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(flat, str(tmp), metadata=meta)
    tmp.replace(path)


def load_checkpoint(path: Path, device: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """``(tensors, optimizer state_dict, state, rng states)`` from ``path``, or None if it is not
    a valid checkpoint (logged)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"not an hpo checkpoint (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
        state = json.loads(meta["state"])
        optim = json.loads(meta["optimizer"])
    except Exception as exc:  # unreadable, truncated, foreign: start from scratch instead
        _LOG.warning("checkpoint %s ignored: %s", path, str(exc).splitlines()[0] if str(exc) else
                     type(exc).__name__)
        return None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    rng = {k[len("rng."):]: v.cpu() for k, v in tensors.items() if k.startswith("rng.")}
    optim_state: dict[int, dict[str, Any]] = {}
    for index, plain in optim["state"].items():
        optim_state[int(index)] = dict(plain)
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    return model, {"state": optim_state, "param_groups": optim["param_groups"]}, state, rng
