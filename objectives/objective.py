"""The optuna adapter every registered objective uses: train, report, prune, record.

It is the only part of the training side that speaks to optuna: the core
(:func:`objectives.core.train`) calls back at each evaluation; here that callback reports the
validation metric at the step (training examples seen) and asks the pruner. What the run
measured goes into the trial's user attrs as one :class:`~objectives.record.TrialRecord`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import optuna

    from objectives.core import Task
    from objectives.params import TrainParams
    from objectives.record import TrialRecord

__all__ = ["run_trial"]


def _write(trial: optuna.Trial, record: TrialRecord) -> None:
    for key, value in record.to_attrs().items():
        trial.set_user_attr(key, value)


def _drop(path: Any) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def run_trial(trial: optuna.Trial, params: TrainParams, task: Task, *,
              resume: list[int] | None = None) -> float:
    """Train ``task`` with ``params`` for ``trial`` and return the best value of its metric.

    Args:
        resume: the trials whose parameters this trial retries (oldest first): it goes on from
            the newest checkpoint among them, when the config has a ``checkpoint_dir``.

    Raises:
        optuna.TrialPruned: the pruner stopped the trial (its record is written first).
        objectives.core.TrainError: the run failed (NaN loss, out of memory; record written).
    """
    import optuna

    from objectives.checkpoints import checkpoint_path
    from objectives.checkpoints import find_checkpoint
    from objectives.core import TrainError
    from objectives.core import train
    from objectives.core import train_folds

    cfg = task.config
    study = trial.study.study_name
    checkpoint = resume_from = None
    if cfg.checkpoint_dir is not None:
        checkpoint = checkpoint_path(cfg.checkpoint_dir, study, trial.number)
        found = find_checkpoint(cfg.checkpoint_dir, study, list(resume or []))
        resume_from = found[1] if found is not None else None

    def on_eval(point: Any) -> bool:
        if hasattr(trial, "report_point"):  # a study of several objectives: every metric
            trial.report_point(point.step, point.metrics)
        else:
            trial.report(point.metrics[cfg.metric], point.step)
        return trial.should_prune()

    def on_start(record: TrialRecord) -> None:
        # The pruner's warm-up reads planned_examples; reports show device and precision.
        _write(trial, record)

    try:
        if cfg.cv_folds:  # the mean over folds, in lockstep (a retried trial starts over)
            result = train_folds(params, task.folds(cfg.cv_folds), on_eval=on_eval,
                                 on_start=on_start)
        else:
            result = train(params, task, on_eval=on_eval, on_start=on_start, resume=resume_from,
                           checkpoint=checkpoint)
    except TrainError as exc:
        _write(trial, exc.record)
        _drop(checkpoint)
        raise
    _write(trial, result.record)
    _drop(checkpoint)  # a finished trial is never retried (an interrupted one keeps it)
    if result.stopped:
        last = result.record.history[-1]
        raise optuna.TrialPruned(
            f"pruned at {last.step} examples ({cfg.metric}={last.metrics[cfg.metric]:.4f})"
        )
    if result.value is None:
        raise RuntimeError("the run ended before its first evaluation")
    return float(result.value)
