"""HTML of the summary, the trial tables and the configuration, with every user string escaped."""

from __future__ import annotations

import html
import json
from typing import Any

import optuna

from hpo.report._summary import _SummaryInfo
from hpo.report._tables import _get_search_space_info
from hpo.report._tables import _TrialRow
from hpo.report._tables import _TrialsTableInfo

_STATE_WORDS = {"FAIL": "failed"}  # how the summary names a state, where not its lowercase


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element: no ``</``, ``<!--`` or ``]]>``."""
    text = json.dumps(obj, default=str, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}"


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())


def _summary_html(info: _SummaryInfo) -> str:
    by_state = info.n_trials_by_state
    total = sum(by_state.values())
    states = ", ".join(f"{n} {_STATE_WORDS.get(s, s.lower())}" for s, n in by_state.items())
    rows: list[tuple[str, str]] = [
        ("Study", f"<code>{_e(info.study_name)}</code>"),
        ("Storage", f"<code>{_e(info.storage)}</code>"),
        ("Objective", _e(info.objective or "not recorded")),
        ("Model", _e(info.model or "not recorded")),
        (
            "Dataset",
            _e(info.dataset or "not recorded")
            + (
                f" (fingerprint <code>{_e(info.data_fingerprint)}</code>)"
                if info.data_fingerprint
                else ""
            )
            + (
                " · " + _e(", ".join(f"{k} {v}" for k, v in info.data_sizes.items()))
                if info.data_sizes
                else ""
            ),
        ),
        (
            "Metric",
            _e(
                ", ".join(
                    f"{m} ({d})" for m, d in zip(info.metric_names, info.directions, strict=True)
                )
            ),
        ),
        ("Sampler", _e(info.sampler or "not recorded")),
        ("Pruner", _e(info.pruner or "not recorded")),
        ("Trials", f"{total}: {_e(states)}"),
    ]
    if info.best_values is not None:
        best = (
            f"<strong>{_e(_fmt(info.best_values[0], 6))}</strong> (trial {info.best_numbers[0]})"
            + "".join(f" · {_e(k)} {_e(_fmt(v))}" for k, v in info.best_extra.items())
            + f"<br><code>{_e(_fmt_params(info.best_params))}</code>"
        )
    elif info.best_numbers:
        best = f"{len(info.best_numbers)} trial(s) on the Pareto front: {_e(', '.join(map(str, info.best_numbers)))}"
    else:
        best = "No trial has completed yet."
    rows.append(("Best", best))
    b = info.budget
    full = b.examples_trained + b.examples_saved
    saved = f"{_fmt_int(b.examples_saved)} examples"
    if full:
        saved += f" ({b.examples_saved / full:.0%} of the {_fmt_int(full)} that running every trial to the end would take)"
    if b.seconds_saved is not None:
        saved += f", about {_fmt_seconds(b.seconds_saved)} of training"
    rows.append(
        (
            "Training budget",
            f"{_fmt_int(b.examples_trained)} examples trained over all trials"
            + (" (partly estimated from reported steps)" if b.estimated else ""),
        )
    )
    rows.append(("Saved by pruning", _e(saved)))
    workers = f"{info.n_workers} worker(s)" if info.n_workers else "workers not recorded"
    wall = "no trial has started yet"
    if info.wall_seconds is not None:
        wall = f"{_fmt_seconds(info.wall_seconds)} · {workers} · at most {info.max_concurrent} trial(s) at once"
    rows.append(("Wall time", wall))
    if info.stopped:
        rows.append(("Stopped early", _e(info.stopped)))
    if info.defaults:
        rows.append(("Chosen by hpo", "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in info.defaults.items())))
    if info.created_at:
        rows.append(("Created", _e(info.created_at)))
    body = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    snapshot = ""
    if info.is_running:
        snapshot = (
            f'<p class="snapshot">Snapshot of a running study at {_e(info.snapshot_at.isoformat(timespec="seconds"))}: '
            f"{by_state['RUNNING']} running, {by_state['WAITING']} waiting.</p>"
        )
    return f'<section id="summary"><h2>Summary</h2>{snapshot}<table class="kv">{body}</table></section>'


def _rows_html(rows: list[_TrialRow], metric_names: list[str], rank: bool,
               extra: list[str]) -> str:
    head = (["#"] if rank else []) + [
        "trial",
        "state",
        *metric_names,
        *extra,
        "best step",
        "examples seen",
        "train time",
        "trainable params",
        "worker",
        "parameters",
        "notes",
    ]
    out = [
        "<table class='trials'><thead><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    for i, row in enumerate(rows, start=1):
        values = row.values if row.values is not None else [None] * len(metric_names)
        cells = ([str(i)] if rank else []) + [
            str(row.number),
            row.state.lower(),
            *(_fmt(v, 6) for v in values),
            *(_fmt(row.metrics.get(k)) for k in extra),
            _fmt_int(row.best_step),
            _fmt_int(row.examples_seen),
            _fmt_seconds(row.train_seconds),
            _fmt_int(row.trainable_params),
            row.worker or "–",
            _fmt_params(row.params),
            "; ".join(row.notes),
        ]
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _tables_html(info: _TrialsTableInfo) -> str:
    parts = ['<section id="trials"><h2>Top trials</h2>']
    parts.append(
        _rows_html(info.top, info.metric_names, rank=True, extra=info.extra_metrics)
        if info.top
        else '<p class="note">No trial has completed yet.</p>'
    )
    if info.n_others:
        parts.append(
            f"<h3>Pruned, failed, running and waiting trials ({len(info.others)} most recent of {info.n_others})</h3>"
        )
        parts.append(_rows_html(info.others, info.metric_names, rank=False, extra=info.extra_metrics))
    parts.append("</section>")
    return "\n".join(parts)


def _config_html(study: optuna.Study, storage_label: str) -> str:
    space = _get_search_space_info(study)
    parts = ['<section id="config"><h2>Search space</h2>']
    if space:
        parts.append(
            "<table class='trials'><thead><tr><th>parameter</th><th>type</th><th>domain</th><th>condition</th></tr></thead><tbody>"
        )
        parts += [
            f"<tr><td><code>{_e(r.name)}</code></td><td>{_e(r.kind)}</td><td>{_e(r.domain)}</td><td>{_e(r.condition or '–')}</td></tr>"
            for r in space
        ]
        parts.append("</tbody></table>")
    else:
        parts.append(
            '<p class="note">No search space recorded and no trial has parameters yet.</p>'
        )
    parts.append("<h2>Configuration</h2>")
    for key in ("hpo_config", "data", "versions"):
        if key in study.user_attrs:
            value = study.user_attrs[key]
            if isinstance(value, dict) and "storage" in value:
                # A config that kept its storage URL must not show the password in it.
                value = {**value, "storage": storage_label}
            text = json.dumps(value, indent=2, sort_keys=True, default=str)
            parts.append(f"<h3><code>{_e(key)}</code></h3><pre>{_e(text)}</pre>")
    if not any(k in study.user_attrs for k in ("hpo_config", "data", "versions")):
        parts.append('<p class="note">No configuration recorded (not an hpo study).</p>')
    parts.append("</section>")
    return "\n".join(parts)
