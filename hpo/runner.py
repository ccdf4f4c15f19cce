"""Run a study from a config (``hpo run``) or join one from its storage (``hpo worker``)."""

from __future__ import annotations

import logging
import os
import socket
import zlib

from hpo.config import StudyConfig
from hpo.output import progress
from hpo.study import RunSummary
from hpo.study import create_study
from hpo.study import load_study
from hpo.study import run_worker

__all__ = ["run_study", "run_study_worker"]

_LOG = logging.getLogger("hpo")


def run_study(
    cfg: StudyConfig, *, threads: int | None = None, quiet: bool = False, create: bool = True
) -> RunSummary:
    """Create (or resume) the study of ``cfg`` and run trials in this process until its budget."""
    from hpo.search_space import search_space_from_dict

    study = create_study(cfg)
    space = search_space_from_dict(study.user_attrs["search_space"], cfg.search_space)
    with progress(cfg.n_trials, quiet) as bar:
        return run_worker(study, cfg, space, threads=threads, on_trial=bar.line,
                          on_start=bar.start)


def run_study_worker(
    url: str, name: str, *, threads: int | None = None, quiet: bool = False
) -> tuple[RunSummary, str]:
    """Join study ``name``: config, search space and data fingerprint come from the storage."""
    study, cfg, space = load_study(url, name)
    # Each worker gets its own sampler seed: equal seeds would sample equal params.
    seed = zlib.crc32(f"{cfg.seed}:{socket.gethostname()}:{os.getpid()}".encode())
    with progress(cfg.n_trials, quiet) as bar:
        summary = run_worker(study, cfg, space, seed=seed, threads=threads, on_trial=bar.line,
                             on_start=bar.start)
    return summary, cfg.metric
