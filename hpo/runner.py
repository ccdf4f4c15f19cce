"""Run a study from a config (``hpo run``) or join one from its storage (``hpo worker``)."""

from __future__ import annotations

import logging
import os
import socket
import zlib

from hpo.config import StudyConfig
from hpo.output import progress
from hpo.study import budget_state
from hpo.study import create_study
from hpo.study import load_study
from hpo.worker import RunSummary
from hpo.worker import run_worker

__all__ = ["run_study", "run_study_worker"]

_LOG = logging.getLogger("hpo")


def run_study(
    cfg: StudyConfig, *, threads: int | None = None, quiet: bool = False, create: bool = True
) -> RunSummary:
    """Create (or resume) the study of ``cfg`` and run trials in this process until its budget."""
    from hpo.search_space import search_space_from_dict

    study = create_study(cfg)
    space = search_space_from_dict(study.user_attrs["search_space"], cfg.search_space)
    # A fresh study samples from the config's seed, so one `hpo run` is reproducible. A resumed
    # one (or one that other processes already run) mixes in the trial count and the pid: the
    # same seed would sample the first trials' params again.
    state = budget_state(study)
    n_existing = state["total"] - state["waiting"]  # enqueued trials have their params already
    seed = cfg.seed if n_existing == 0 else _worker_seed(cfg.seed, f"{n_existing}:{os.getpid()}")
    with progress(cfg.n_trials, quiet) as bar:
        return run_worker(study, cfg, space, seed=seed, threads=threads, on_trial=bar.line,
                          on_start=bar.start)


def run_study_worker(
    url: str,
    name: str,
    *,
    threads: int | None = None,
    quiet: bool = False,
    worker_id: str | None = None,
) -> tuple[RunSummary, str]:
    """Join study ``name``: config, search space and data fingerprint come from the storage."""
    study, cfg, space = load_study(url, name)
    # Each worker gets its own sampler seed: equal seeds would sample equal params.
    seed = _worker_seed(cfg.seed, f"{socket.gethostname()}:{os.getpid()}")
    with progress(cfg.n_trials, quiet) as bar:
        summary = run_worker(study, cfg, space, seed=seed, threads=threads, worker_id=worker_id,
                             on_trial=bar.line, on_start=bar.start)
    return summary, cfg.metric


def _worker_seed(seed: int, salt: str) -> int:
    return zlib.crc32(f"{seed}:{salt}".encode())
