"""What commands print: tables or JSON on stdout, progress on stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from typing import Any

from objectives.record import TrialRecord
from objectives.record import WorkerRecord

if TYPE_CHECKING:
    import optuna

    from hpo.worker import RunSummary

__all__ = ["format_rows", "progress", "study_rows", "summary_text", "to_json", "trial_rows"]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return str(v)


def to_json(value: Any) -> str:
    """``value`` as strict JSON (indented): NaN and infinities become ``null``.

    ``json.dumps`` writes them as ``NaN`` / ``Infinity``, which strict parsers (jq,
    JavaScript's JSON.parse, Go, ...) refuse; a failed trial's value or a diverged metric
    can be either.
    """
    return json.dumps(_finite(value), indent=2, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as an aligned text table (``table``) or a JSON list (``json``)."""
    if fmt == "json":
        return to_json(rows)
    if not rows:
        return "(none)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def study_rows(storage: Any) -> list[dict[str, Any]]:
    """One row per study: name, direction, trials by state, best value."""
    import optuna

    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        config = c if isinstance(c := s.user_attrs.get("hpo_config"), dict) else {}
        rows.append(
            {
                "study": s.study_name,
                "objective": config.get("objective"),
                "metric": config.get("metric"),
                "direction": s.direction.name.lower() if len(s.directions) == 1 else "multi",
                "n_trials": s.n_trials,
                "complete": counts.get("complete", 0),
                "pruned": counts.get("pruned", 0),
                "failed": counts.get("fail", 0),
                "running": counts.get("running", 0),
                "best_value": s.best_trial.value if s.best_trial else None,
            }
        )
    return rows


def trial_rows(study: optuna.Study, fmt: str) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, accuracy, examples, seconds, worker, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        record, worker = TrialRecord.from_attrs(t.user_attrs), WorkerRecord.from_attrs(t.user_attrs)
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.values is not None and len(t.values) == 1 else t.values,
            "val_accuracy": record.metric("val_accuracy"),
            "val_f1": record.metric("val_f1"),
            "examples_seen": record.examples_seen,
            "seconds": worker.wall_seconds,
            "worker": worker.worker_id,
        }
        if fmt == "json":
            row["params"] = t.params
            row["device"] = record.device
            row["peak_memory_mb"] = record.peak_memory_mb
            row["fail_reason"] = worker.fail_reason
            row["retry_of"] = t.system_attrs.get("failed_trial")
        else:
            row["params"] = t.params
        rows.append(row)
    return rows


def summary_text(summary: RunSummary, metric: str) -> str:
    """The closing lines of a run: trials by state and the best trial."""
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())) or "no trials"
    lines = [f"study {summary.study}: {counts} ({summary.ran} run here in {summary.seconds:.0f} s)"]
    if summary.interrupted:
        lines.append(f"interrupted by {summary.interrupted}: the running trial was handed back")
    if summary.stopped:
        lines.append(f"stopped early: {summary.stopped}")
    best = summary.best
    if best is not None and "pareto" in best:
        names = metric if isinstance(metric, list) else [metric]
        lines.append(f"Pareto front ({len(best['pareto'])} trial(s)): " + ", ".join(names))
        for t in best["pareto"]:
            values = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, t["values"], strict=False))
            lines.append(f"  #{t['number']}: {values}")
        return "\n".join(lines)
    if best is None:
        lines.append("no trial has completed yet")
    else:
        a = best["user_attrs"]
        extra = ""
        if "val_accuracy" in a:
            extra = f" (val_accuracy={a['val_accuracy']:.4f}, val_f1={a.get('val_f1', 0):.4f})"
        lines.append(f"best trial #{best['number']}: {metric}={best['value']:.4f}{extra}")
        for k, v in best["params"].items():
            lines.append(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return "\n".join(lines)


@contextmanager
def progress(total: int | None, quiet: bool) -> Iterator[Any]:
    """A study progress bar on stderr and a ``line(frozen_trial, seconds)`` printer."""
    from tqdm import tqdm

    bar = tqdm(total=total, file=sys.stderr, unit="trial", dynamic_ncols=True, leave=False,
               disable=quiet or not sys.stderr.isatty())  # lines only in logs and CI

    class _Progress:
        def start(self, state: dict[str, int]) -> None:
            bar.update(state["finished"])

        def line(self, frozen: optuna.trial.FrozenTrial, seconds: float,
                 worker: str | None = None) -> None:
            state = frozen.state.name.lower()
            shown = frozen.values or []
            value = " value=" + "/".join(f"{v:.4f}" for v in shown) if shown else ""
            accuracy = TrialRecord.from_attrs(frozen.user_attrs).metric("val_accuracy")
            acc = f" acc={accuracy:.3f}" if accuracy is not None else ""
            why = WorkerRecord.from_attrs(frozen.user_attrs).fail_reason
            reason = f" ({why})" if why else ""
            params = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in frozen.params.items()
            )
            if not quiet:
                by = f" ({worker})" if worker else ""
                bar.write(
                    f"trial {frozen.number:>3} {state:<8}{value}{acc} [{params}] "
                    f"{seconds:.1f}s{by}{reason}",
                    file=sys.stderr,
                )
            bar.update(1)

    try:
        yield _Progress()
    finally:
        bar.close()


def best_text(study: optuna.Study, fmt: str) -> str:
    """The best trial as text or JSON; a clear line when no trial has completed."""
    from hpo.worker import best_trial_info

    info = best_trial_info(study)
    if fmt == "json":
        return to_json(info)
    if info is None:
        return f"study {study.study_name}: no trial has completed yet"
    stored = study.user_attrs.get("hpo_config")
    metric = stored.get("metric", "value") if isinstance(stored, dict) else "value"
    if "pareto" in info:
        return _pareto_text(study, info, metric if isinstance(metric, list) else [metric])
    lines = [f"best trial #{info['number']} of study {study.study_name}: {metric}={info['value']:.6g}"]
    a = info["user_attrs"]
    for key in ("val_loss", "val_accuracy", "val_f1", "best_step", "examples_seen", "train_seconds"):
        if key in a:
            lines.append(f"  {key}: {_cell(a[key])}")
    lines.append("  params:")
    lines += [f"    {k}: {_cell(v)}" for k, v in info["params"].items()]
    return "\n".join(lines)


def _pareto_text(study: optuna.Study, info: dict[str, Any], names: list[str]) -> str:
    """The Pareto set of a study of several objectives, and how many trials are infeasible."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    infeasible = [t.number for t in complete if any(v > 0 for v in t.constraints.values())]
    lines = [f"Pareto front of study {study.study_name} ({len(info['pareto'])} of "
             f"{len(complete)} complete trials; {len(infeasible)} infeasible, left out):"]
    rows = [{"trial": t["number"], **dict(zip(names, t["values"], strict=False)), **t["params"]}
            for t in info["pareto"]]
    lines.append(format_rows(rows, "table"))
    if infeasible:
        why = {t.number: WorkerRecord.from_attrs(t.user_attrs).infeasible for t in complete}
        lines += [f"  infeasible #{n}: {why[n] or 'constraint violated'}" for n in infeasible[:10]]
    return "\n".join(lines)
