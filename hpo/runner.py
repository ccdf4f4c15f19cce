"""Run a study from a config (``hpo run``) or join one from its storage (``hpo worker``)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.config import StudyConfig
from hpo.output import progress
from hpo.study import budget_state
from hpo.study import create_study
from hpo.study import load_study
from hpo.worker import RunSummary
from hpo.worker import run_worker

__all__ = ["run_study", "run_study_worker"]

_LOG = logging.getLogger("hpo")
_SEED_OWNER = "seed_owner"  # study attr: the process that sampled with the config's seed


def run_study(
    cfg: StudyConfig,
    *,
    threads: int | None = None,
    quiet: bool = False,
    device: str | None = None,
    log_dir: str | None = None,
    defaults: dict[str, str] | None = None,
) -> RunSummary:
    """Create (or resume) the study of ``cfg`` and run trials in this process until its budget.

    ``defaults``: the choices made for the user (stored and printed when the study is new)."""
    from hpo.search_space import search_space_from_dict

    study = create_study(cfg, defaults=defaults)
    space = search_space_from_dict(study.user_attrs["search_space"], cfg.search_space)
    seed = sampler_seed(study, cfg)
    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    with progress(cfg.n_trials, quiet) as bar:
        return run_worker(study, cfg, space, seed=seed, threads=threads, worker_id=worker_id,
                          device=device, failure_log=failure_log(log_dir, cfg.study, worker_id),
                          on_trial=bar.line, on_start=bar.start)


def sampler_seed(study: Any, cfg: StudyConfig) -> int:
    """The config's seed for the one process that starts a fresh study, so that one ``hpo run``
    is reproducible; a worker seed for every other process (a resume, a second ``hpo run`` of
    the same config started at the same moment): the same seed would sample the same params.

    Which process is first is decided under a lock that all workers of the study share.
    """
    from hpo import _optuna
    from hpo.storage import shared_lock

    state = budget_state(study)
    n_existing = state["total"] - state["waiting"]  # enqueued trials have their params already
    mine = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    if n_existing == 0:
        with shared_lock(_optuna.storage_of(study), cfg.storage, f"hpo-seed:{study.study_name}"):
            if _SEED_OWNER not in study.user_attrs:
                study.set_user_attr(_SEED_OWNER, mine)
                return cfg.seed
    return _worker_seed(cfg.seed, f"{n_existing}:{mine}")


def run_study_worker(
    url: str,
    name: str,
    *,
    threads: int | None = None,
    quiet: bool = False,
    worker_id: str | None = None,
    device: str | None = None,
    log_dir: str | None = None,
    allowed_objectives: tuple[str, ...] = (),
    ranks: Callable[[Any], Any] | None = None,
    on_config: Callable[[StudyConfig], None] | None = None,
) -> tuple[RunSummary, str]:
    """Join study ``name``: config, search space and data fingerprint come from the storage.

    Args:
        device: train on this device instead of the study's setting.
        log_dir: where the tracebacks of failed trials go (``DIR/STUDY/WORKER.log``).
        allowed_objectives: ``module:function`` objectives this worker may import.
        ranks, on_config: under torchrun (rank 0), send each trial's params and the config to
            the other ranks (:mod:`hpo.ranks`).
    """
    study, cfg, space = load_study(url, name, allowed_objectives=allowed_objectives)
    if on_config is not None:
        on_config(cfg)
    # Each worker gets its own sampler seed: equal seeds would sample equal params.
    seed = _worker_seed(cfg.seed, f"{socket.gethostname()}:{os.getpid()}")
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    with progress(cfg.n_trials, quiet) as bar:
        summary = run_worker(study, cfg, space, seed=seed, threads=threads, worker_id=worker_id,
                             device=device, failure_log=failure_log(log_dir, name, worker_id),
                             ranks=ranks, on_trial=bar.line, on_start=bar.start)
    return summary, list(cfg.metrics) if cfg.multi_objective else cfg.metric


def failure_log(log_dir: str | None, study: str, worker_id: str) -> Path | None:
    """``DIR/STUDY/WORKER.log`` (names made safe for a path), or None without a directory."""
    if not log_dir:
        return None

    def safe(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    return Path(log_dir) / safe(study) / f"{safe(worker_id)}.log"


def _worker_seed(seed: int, salt: str) -> int:
    return zlib.crc32(f"{seed}:{salt}".encode())
