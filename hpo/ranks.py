"""A worker whose trials are data-parallel jobs: ``hpo worker`` started by ``torchrun``.

With ``devices_per_trial: N``, each worker is a group of N processes that torch's launcher
starts (``torchrun --nproc-per-node N -m hpo worker ...``; ``hpo run``/``hpo worker
--devices`` do it for you, and ``accelerate launch`` works the same way). Every rank joins the
process group once. Rank 0 is the study's worker: it takes each trial, samples its parameters
and sends them to the other ranks (the pattern of optuna-integration's
``TorchDistributedTrial``); then every rank trains on its shard, rank 0 reports and asks the
pruner, and its decision reaches every rank (:mod:`objectives.core`), so all ranks stop
together. The other ranks never touch the storage: they get the study's config from rank 0,
and a stop message when rank 0 leaves.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from dataclasses import field
from types import SimpleNamespace
from typing import Any

__all__ = ["run_ranked_worker"]

_LOG = logging.getLogger("hpo")


@dataclass
class _RankTrial:
    """What an objective on a rank other than 0 sees of its trial: reports go nowhere (rank 0
    reports), and the pruning decision comes from rank 0 through the training core."""

    number: int
    params: dict[str, Any]
    study: Any
    user_attrs: dict[str, Any] = field(default_factory=dict)

    def report(self, value: float, step: int) -> None:
        return None

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value

    def set_constraint(self, key: str, value: float) -> None:
        return None


def run_ranked_worker(url: str, name: str, **worker_args: Any) -> tuple[Any, str]:
    """Join the process group torchrun described, then run rank 0's worker loop or follow it.

    Returns:
        On rank 0, the worker's summary and the study's metric; on the others, an empty
        summary (their output is rank 0's).
    """
    import dataclasses

    from hpo.runner import run_study_worker
    from hpo.worker import RunSummary
    from objectives import distributed

    device = worker_args.get("device") or "auto"
    ctx = distributed.init(device)
    if not ctx.is_main:
        _follow(name, worker_args.get("device"))
        return RunSummary(study=name), ""

    def send_config(cfg: Any) -> None:
        # The other ranks never touch the storage: its URL (and password) stays here.
        distributed.broadcast(dataclasses.replace(cfg, storage=""))

    try:
        return run_study_worker(url, name, ranks=distributed.broadcast, on_config=send_config,
                                **worker_args)
    finally:
        distributed.broadcast(None)  # the others stop (also when rank 0 failed)
        distributed.shutdown()


def _follow(name: str, device: str | None) -> None:
    """Train whatever rank 0 sends until it sends None."""
    import optuna

    from objectives import distributed
    from objectives import resolve_objective
    from objectives.devices import release_memory

    # torchrun sends SIGTERM to every rank; rank 0 hands the trial back, the others just go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = distributed.current()
    try:
        cfg = distributed.broadcast(None)
        if cfg is None:
            return  # rank 0 could not open the study (it says why)
        if device is not None:
            cfg = cfg.with_device(device)
        spec = resolve_objective(cfg.objective)
        study = SimpleNamespace(study_name=name)
        while True:
            message = distributed.broadcast(None)
            if message is None:
                break
            trial = _RankTrial(message["number"], message["params"], study)
            kwargs = {"resume": message["resume"]} if "resume" in message else {}
            try:
                spec.fn(trial, message["params"], cfg.objective_config, **kwargs)
            except optuna.TrialPruned:
                pass
            except Exception as exc:  # rank 0 records the trial's failure; keep following
                _LOG.warning("rank %d: trial %d failed: %s", ctx.rank, trial.number,
                             str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            release_memory(cfg.device)
    finally:
        distributed.shutdown()
