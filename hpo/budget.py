"""The study's budget in the user's terms: trials, wall time, training examples or tokens.

Every budget is the study's, shared by all its workers: a worker starts a new trial only while
none is used up (retries of trials whose worker died still run). They are checked where the
worker takes its trial, under the lock all workers share, so they stop where they should
whatever the number of workers:

- ``n_trials``: trials taken (complete, pruned, failed-not-retried, running, waiting);
- ``timeout``: the study's busy wall time, the union of its trials' running intervals (time
  between runs of a resumed study does not count);
- ``n_examples`` / ``n_tokens``: training examples (tokens) of all trials together: what the
  finished ones trained on, plus what the running ones plan to (``planned_examples``; a trial
  that has no plan yet counts as the largest plan seen). Cheap trials buy more trials.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from objectives.record import TrialRecord

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.config import StudyConfig

__all__ = ["Usage", "exhausted", "usage"]


@dataclass(frozen=True)
class Usage:
    """What a study's trials have used (and its running trials have reserved)."""

    seconds: float  # busy wall time
    examples: int
    tokens: int


def usage(trials: Sequence[FrozenTrial], now: datetime.datetime | None = None) -> Usage:
    """The study's use of each budget kind, from its trials."""
    from optuna.trial import TrialState

    now = now or datetime.datetime.now()
    intervals = sorted(  # as of ``now``: a trial that ended later counts until now
        (t.datetime_start, min(t.datetime_complete or now, now))
        for t in trials if t.datetime_start is not None and t.datetime_start <= now
    )
    seconds, end = 0.0, None
    for start, stop in intervals:
        if end is None or start > end:
            seconds += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            seconds += (stop - end).total_seconds()
            end = stop
    records = [(t, TrialRecord.from_attrs(t.user_attrs)) for t in trials]
    plans = [r.planned_examples * (r.folds or 1) for _, r in records if r.planned_examples]
    largest = max(plans, default=0)
    done = [(r.examples_seen or 0, r.tokens_seen or 0) for t, r in records if t.state.is_finished()]
    per_example = (sum(tok for _, tok in done) / sum(ex for ex, _ in done)
                   if sum(ex for ex, _ in done) else 0.0)
    examples = tokens = 0
    for t, r in records:
        folds = r.folds or 1
        if t.state.is_finished():
            examples += (r.examples_seen or 0) * folds
            tokens += (r.tokens_seen or 0) * folds
        elif t.state == TrialState.RUNNING:
            planned = r.planned_examples * folds if r.planned_examples else largest
            examples += planned
            tokens += int(planned * per_example)
    return Usage(seconds, examples, tokens)


def exhausted(cfg: StudyConfig, used: Usage) -> str | None:
    """Why no new trial may start (the first budget used up), or None."""
    if cfg.timeout is not None and used.seconds >= cfg.timeout:
        return f"timeout: {used.seconds:.0f} s of trials, budget {cfg.timeout:.0f} s"
    if cfg.n_examples is not None and used.examples >= cfg.n_examples:
        return f"n_examples: {used.examples} training examples, budget {cfg.n_examples}"
    if cfg.n_tokens is not None and used.tokens >= cfg.n_tokens:
        return f"n_tokens: {used.tokens} training tokens, budget {cfg.n_tokens}"
    return None


def has_compute_budget(cfg: StudyConfig) -> bool:
    """Whether taking a trial must look at the trials' use (time, examples or tokens)."""
    return cfg.timeout is not None or cfg.n_examples is not None or cfg.n_tokens is not None
