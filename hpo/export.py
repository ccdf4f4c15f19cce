"""``hpo export``: from the best trial of a study to a tested, saved model.

The best configuration is retrained for the number of training examples at which its
validation value was best (the trial's ``best_step``), with the search's schedule, then
evaluated exactly once per seed on the held-out test split. The output directory holds:

==================  ===============================================================================
``model.safetensors``, ``config.json``: the model (``save_pretrained``), or for LoRA the
                    adapter (``adapter_model.safetensors``, ``adapter_config.json``), or with
                    ``--merge`` the merged model
tokenizer files     ``tokenizer.json`` and friends
``metrics.json``    test accuracy, macro-F1, loss, per-class precision/recall/F1, confusion
                    matrix; mean ± std and each seed's value
``hpo_config.json`` the run: the study's config and search space, the trial, every
                    hyperparameter, seeds, data splits, library versions
``README.md``       a model card
==================  ===============================================================================

The run's config is ``hpo_config.json``, not ``config.json``: that name belongs to the model.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from hpo.errors import ConfigError
from hpo.errors import DataMismatchError
from hpo.errors import ExportWriteError
from hpo.errors import HPOInputError
from objectives.record import TrialRecord

if TYPE_CHECKING:
    import optuna

    from objectives.checks import Finding
    from objectives.final import FinalResult

__all__ = ["ExportError", "ExportResult", "export_study"]

_LOG = logging.getLogger("hpo")
_VALUE_TOLERANCE = 1e-4  # the retrain reproduces the search's validation value within this
_LABELS = {"macro_f1": "macro-F1"}


class ExportError(HPOInputError):
    """Raised when a study cannot be exported: no complete trial, another objective, or an
    output directory in the way."""


@dataclass
class ExportResult:
    """Where the export went and what it measured."""

    directory: Path
    metrics: dict[str, Any]  # as written to metrics.json

    def summary_line(self) -> str:
        """One line: the first two test metrics (mean ± std over seeds), e.g. accuracy and
        macro-F1."""
        s = self.metrics["test_summary"]
        n = len(self.metrics["seeds"])
        seeds = f" over {n} seeds" if n > 1 else f" (seed {self.metrics['seeds'][0]})"
        shown = ", ".join(f"{_LABELS.get(k, k)} {v['mean']:.4f} ± {v['std']:.4f}"
                          for k, v in list(s.items())[:2])
        return f"test {shown}{seeds}: {self.directory}"


def export_study(
    url: str,
    name: str,
    output: str | Path,
    *,
    seeds: int = 1,
    include_validation: bool = False,
    merge: bool = False,
    trial: int | None = None,
    pick: str | None = None,
) -> ExportResult:
    """Retrain the best trial of study ``name``, test it once per seed and save it to ``output``.

    Args:
        url: storage URL.
        name: study name.
        output: a new (or empty) directory; written atomically (a failed export leaves none).
        seeds: how many training seeds: the study's seed, seed + 1, ...; the first one's model
            is saved, and the metrics give mean ± std over all.
        include_validation: train on train + validation (the metrics and the model card say so).
        merge: for a LoRA trial, save the merged model instead of the adapter.

    Returns:
        The directory and the metrics written to ``metrics.json``.

    Raises:
        StudyNotFoundError: no such study.
        ExportError: no complete trial, an objective other than text_classification, or a
            non-empty ``output``.
        DataMismatchError: the data here differs from the data the study was tuned on.

    Example:
        >>> result = export_study("sqlite:///studies.db", "demo-rotten-tomatoes", "model")
        >>> result.metrics["test"]["accuracy"]  # doctest: +SKIP
    """
    from optuna.trial import TrialState

    from hpo.storage import redact_url
    from hpo.study import open_study
    from hpo.study import stored_config

    if seeds < 1:
        raise ExportError(f"--seeds must be >= 1, got {seeds}")
    from objectives import resolve_objective

    study = open_study(url, name)
    cfg, _ = stored_config(study, url)
    spec = resolve_objective(cfg.objective)
    if spec.export is None:
        raise ExportError(
            f"study {name!r} uses objective {cfg.objective!r}, which has no export (registered "
            "objectives such as text_classification have one)"
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ExportError(
            f"study {name!r} has no complete trial to export; run trials first "
            "(hpo run / hpo worker)"
        )
    best = _chosen_trial(study, complete, cfg, trial, pick)
    n_examples = TrialRecord.from_attrs(best.user_attrs).best_step
    if n_examples is None or n_examples < 1:
        raise ExportError(f"trial {best.number} of study {name!r} has no best_step to retrain to")
    _check_fingerprint(study, cfg, spec)
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose another -o")
    seed_list = [cfg.seed + i for i in range(seeds)]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    for parent in (out.parent, *out.parent.parents):  # the nearest existing ancestor
        if parent.exists():
            if not parent.is_dir():
                raise ExportWriteError(f"cannot write the export to {out}: {parent} is not a directory")
            break
    try:  # before any training: a place we cannot write to fails at once
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise ExportWriteError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    try:
        _LOG.info("retraining trial %d of %s for %d examples with seed(s) %s", best.number,
                  name, n_examples, ", ".join(map(str, seed_list)))
        try:
            result = spec.export(
                cfg.objective_config, best.params, n_examples=n_examples, seeds=seed_list,
                include_validation=include_validation, output_dir=tmp, merge=merge,
            )
        except ValueError as exc:  # DataError and friends: the data or model went missing
            raise ConfigError(f"dataset or model: {exc}") from None
        from hpo.checks import check_data

        findings = check_data(cfg)
        metrics = _metrics(study, best, result)
        run = _run_record(study, best, result, redact_url(url), merge)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "hpo_config.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(_model_card(study, best, result, metrics, run, findings))
        if out.exists():
            out.rmdir()  # empty: checked above
        tmp.replace(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise ExportWriteError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(directory=out, metrics=metrics)


# Errors of writing (not of reading a model or data): a full disk or quota, a read-only place.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _chosen_trial(study: optuna.Study, complete: list[Any], cfg: Any, number: int | None,
                  pick: str | None) -> Any:
    """The trial to export: ``--trial N``, the trial ``--pick`` chooses, or the best one."""
    from hpo.pareto import parse_pick
    from objectives import resolve_objective
    from objectives.record import COSTS

    several = len(study.directions) > 1
    if number is not None:
        found = [t for t in complete if t.number == number]
        if not found:
            raise ExportError(f"study {study.study_name!r} has no complete trial {number} "
                              f"(complete: {', '.join(str(t.number) for t in complete[:20])})")
        return found[0]
    if pick is not None:
        known = [*resolve_objective(cfg.objective).metrics, *COSTS]
        chosen = parse_pick(pick, known).pick(complete, study)
        if chosen is None:
            raise ExportError(f"--pick {pick!r}: no complete trial of study "
                              f"{study.study_name!r} meets it")
        return chosen
    if several:
        front = ", ".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number))
        raise ExportError(
            f"study {study.study_name!r} has {len(study.directions)} objectives: choose a trial "
            f"with --trial N (Pareto front: {front}) or --pick \"max METRIC where COST <= X\"")
    return study.best_trial


def _check_fingerprint(study: optuna.Study, cfg: Any, spec: Any) -> None:
    expected = study.user_attrs.get("data_fingerprint")
    try:
        if spec.fingerprint is not None:
            here = spec.fingerprint(cfg.objective_config)
        else:
            here = spec.prepare(cfg.objective_config)["data_fingerprint"] if spec.prepare else None
    except ValueError as exc:
        raise ConfigError(f"dataset: {exc}") from None
    if here != expected:
        raise DataMismatchError(
            f"the data here has fingerprint {here} but study {study.study_name!r} was tuned on "
            f"data {expected}; export needs the same data files (content, settings and seed)"
        )


def _metrics(study: optuna.Study, best: optuna.trial.FrozenTrial, result: FinalResult) -> dict[str, Any]:
    metric = _primary(study.user_attrs["hpo_config"])
    first = result.seeds[0]
    check = None
    if first.validation is not None:
        search = next(
            (p.metrics[metric] for p in TrialRecord.from_attrs(best.user_attrs).history
             if p.step == result.n_examples and metric in p.metrics),
            best.values[0],
        )
        retrain = first.validation[metric]
        match = abs(retrain - search) <= _VALUE_TOLERANCE * max(1.0, abs(search))
        check = {"metric": metric, "search": search, "retrain": retrain, "match": match}
        if not match:
            _LOG.warning(
                "the retrained model's %s is %.6g where the search measured %.6g at the same step "
                "(nondeterminism: another machine, thread count, library version, or a classifier head "
                "initialized differently in this process)",
                metric, retrain, search,
            )
    per_seed = []
    for s in result.seeds:
        per_seed.append({
            "seed": s.seed,
            **{k: v for k, v in s.test.items() if k != "n_examples"},
            "examples_seen": s.examples_seen,
            "train_seconds": s.train_seconds,
            "validation": s.validation,
        })
    return {
        "study": study.study_name,
        "trial": best.number,
        "trained_on": result.trained_on,
        "validation_used_for_training": result.trained_on == "train+validation",
        "n_train_examples": result.n_examples,
        "seeds": [s.seed for s in result.seeds],
        "saved_seed": first.seed,
        "label_names": result.label_names,
        "n_test_examples": first.test["n_examples"],
        "precision": result.precision,
        "device": result.device,
        "test": {k: v for k, v in first.test.items() if k != "n_examples"},
        "test_summary": result.summary(),
        "per_seed": per_seed,
        "validation_check": check,
    }


def _run_record(
    study: optuna.Study, best: optuna.trial.FrozenTrial, result: FinalResult, url: str, merge: bool
) -> dict[str, Any]:
    from hpo.study import versions

    attrs = study.user_attrs
    record = TrialRecord.from_attrs(best.user_attrs)
    return {
        "study": study.study_name,
        "storage": url,
        "config": attrs["hpo_config"],  # loadable with `hpo run --config` (add search_space)
        "search_space": attrs.get("search_space"),
        "trial": {
            "number": best.number, "value": best.values[0], "params": best.params,
            "best_step": record.best_step,
            "val_accuracy": record.metric("val_accuracy"),
            "val_f1": record.metric("val_f1"),
        },
        "hyperparameters": result.params,
        "trained_on": result.trained_on,
        "n_train_examples": result.n_examples,
        "seeds": [s.seed for s in result.seeds],
        "saved": result.saved,
        "merged": merge and result.saved == "merged-lora",
        "data": result.data,
        "versions": {"search": attrs.get("versions"), "export": versions()},
    }


def _primary(config: dict[str, Any]) -> str:
    """The study's metric (the first of several)."""
    metric = config.get("metric")
    return str(metric[0] if isinstance(metric, list) else metric)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _model_card(
    study: optuna.Study,
    best: optuna.trial.FrozenTrial,
    result: FinalResult,
    metrics: dict[str, Any],
    run: dict[str, Any],
    findings: list[Finding],
) -> str:
    from optuna.trial import TrialState

    config = run["config"]
    data = result.data
    n = len(result.seeds)
    lora = result.saved == "lora-adapter"
    summary = metrics["test_summary"]
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    record = TrialRecord.from_attrs(best.user_attrs)
    labels = f" (labels: {', '.join(result.label_names)})" if result.label_names else ""
    lines = [
        "---",
        f"library_name: {'peft' if lora else 'transformers'}",
        f"pipeline_tag: {result.task}",
        f"tags: [hpo, optuna, {result.task}]",
        "---",
        "",
        f"# {study.study_name}: trial {best.number}",
        "",
        f"`{config.get('model')}`{_packaged_name(config.get('model'))} "
        f"fine-tuned for {result.task.replace('-', ' ')} on "
        f"{_source(data.get('source', {}))}{labels}, "
        f"exported by `hpo export` from the best trial of study `{study.study_name}`.",
        "",
        "## Test results",
        "",
        f"Held-out test split ({metrics['n_test_examples']} rows), evaluated once per seed.",
    ]
    if metrics["validation_used_for_training"]:
        lines.append(
            "**The validation split was used for training** (`--include-validation`): there is no "
            "validation score of this model, and the test split is the only held-out estimate."
        )
    lines += ["", "| metric | " + ("mean ± std | " + " | ".join(f"seed {s.seed}" for s in result.seeds)
                                   if n > 1 else f"seed {result.seeds[0].seed}") + " |"]
    lines.append("|---|" + ("---|" * (n + 1) if n > 1 else "---|"))
    for key, s in summary.items():
        cells = [f"{s['mean']:.4f} ± {s['std']:.4f}"] if n > 1 else []
        cells += [f"{v:.4f}" for v in s["values"]]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += result.card
    check = metrics["validation_check"]
    if check is not None:
        verdict = "reproduces" if check["match"] else "does NOT reproduce"
        lines += ["", f"The retrained model {verdict} the search's {check['metric']} at the same "
                  f"step: {check['retrain']:.6g} (search: {check['search']:.6g})."]
    lines += [
        "",
        "## Training",
        "",
        f"- trained on: {result.trained_on} "
        f"({_split_rows(data, result.trained_on)} rows), for {result.n_examples} training examples "
        f"(where the trial's {_primary(config)} was best), with the search's "
        f"learning-rate schedule for {config.get('epochs')} epoch(s)",
        f"- seeds: {', '.join(str(s.seed) for s in result.seeds)} (the saved model is seed "
        f"{result.seeds[0].seed}'s; the data splits use the study's seed {config.get('seed')})",
        f"- device: {result.device}, precision {result.precision}",
        f"- saved: {result.saved}",
        "",
        "| hyperparameter | value | |",
        "|---|---|---|",
    ]
    lora_keys = ("r", "lora_alpha", "lora_dropout", "target_modules")
    for k, v in result.params.items():
        if result.params.get("finetuning") != "lora" and k in lora_keys:
            continue  # unused by a full fine-tune
        shown = "the model's own" if v is None else _fmt(v)
        lines.append(f"| {k} | {shown} | {'searched' if k in best.params else 'default'} |")
    lines += [
        "",
        "## Data",
        "",
        f"- source: {_source(data.get('source', {}))}",
        f"- fingerprint: `{data.get('fingerprint')}` (split seed {data.get('seed')}, "
        f"{data.get('split_method')})",
        "- split sizes: " + ", ".join(f"{k} {v}" for k, v in data.get("sizes", {}).items()),
    ]
    for split, c in data.get("class_counts", {}).items():
        lines.append(f"- {split} classes: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    if findings:
        lines += ["- data checks:"] + [f"  - {f.severity}: {f.code}: {f.message}" for f in findings]
    else:
        lines.append("- data checks: clean")
    best_metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in record.best.items()
                             if k != _primary(config))
    lines += [
        "",
        "## Study",
        "",
        f"- study: `{study.study_name}` in `{run['storage']}`",
        f"- objective: {config.get('objective')}, metric {_primary(config)} "
        f"({config.get('direction')}), sampler {_fmt(config.get('sampler', {}).get('name'))}, "
        f"pruner {_fmt(config.get('pruner', {}).get('name'))}, seed {config.get('seed')}",
        "- trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
        f"- exported trial: {best.number}, {_primary(config)} {_fmt(best.values[0])}"
        + (f", {best_metrics}" if best_metrics else ""),
        "",
        "## Library versions",
        "",
        "| library | search | export |",
        "|---|---|---|",
    ]
    search_v, export_v = run["versions"]["search"] or {}, run["versions"]["export"]
    for lib in dict.fromkeys([*search_v, *export_v]):
        lines.append(f"| {lib} | {search_v.get(lib, '')} | {export_v.get(lib, '')} |")
    lines += ["", "## Load it", "", "```python", *result.load, "```", ""]
    return "\n".join(lines)


def _source(source: dict[str, Any]) -> str:
    if "name" in source:
        return f"the built-in dataset `{source['name']}`"
    return ", ".join(f"`{v}`" for v in source.values())


def _split_rows(data: dict[str, Any], trained_on: str) -> int:
    sizes = data.get("sizes", {})
    return sum(int(sizes.get(s, 0)) for s in trained_on.split("+"))


def _packaged_name(model: Any) -> str:
    from objectives.models import PACKAGED

    return f" ({PACKAGED[model]})" if isinstance(model, str) and model in PACKAGED else ""
