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

__all__ = ["STOPPED", "Usage", "exhausted", "stop_reason", "usage"]

STOPPED = "stopped"  # study attr: why a stop rule stopped the study


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


def stop_reason(cfg: StudyConfig, trials: Sequence[FrozenTrial]) -> str | None:
    """Why the study's stop rule stops it now, or None.

    ``target``: a complete trial's metric reached it (at least, or at most when minimized).
    ``patience`` (with ``min_delta``): that many complete trials in a row improved the best
    value by less than ``min_delta``; with several objectives, that many complete trials in a
    row did not enter the Pareto front.
    """
    from optuna.trial import TrialState

    rule = cfg.stop or {}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values),
                      key=lambda t: t.datetime_complete or datetime.datetime.max)
    maximize = cfg.directions[0] == "maximize" if cfg.directions else cfg.direction == "maximize"
    sign = -1.0 if maximize else 1.0
    if "target" in rule:
        for t in complete:
            if sign * t.values[0] <= sign * rule["target"]:
                return f"trial {t.number} reached the target {cfg.metric} {rule['target']:g}"
    patience = int(rule.get("patience", 0))
    if not patience or len(complete) <= patience:
        return None
    if len(cfg.metrics) > 1:
        from hpo.pareto import nondominated_ranks

        last_entry = 0
        for i in range(len(complete)):
            ranks = nondominated_ranks([t.values for t in complete[: i + 1]], cfg.directions)
            if ranks[i] == 0:
                last_entry = i
        since = len(complete) - 1 - last_entry
        if since >= patience:
            return f"{since} trials in a row did not enter the Pareto front (patience {patience})"
        return None
    delta = float(rule.get("min_delta", 0.0))
    best = sign * complete[0].values[0]
    since = 0
    for t in complete[1:]:
        value = sign * t.values[0]
        if value < best - delta:
            best, since = min(best, value), 0
        else:
            best, since = min(best, value), since + 1
    if since >= patience:
        return (f"the best {cfg.metric} improved by less than {delta:g} in the last {since} "
                f"trials (patience {patience})")
    return None
