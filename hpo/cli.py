"""The ``hpo`` command line: parse, build a config, call one function, print."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from hpo.errors import HPOError
from hpo.errors import HPOInputError

DEFAULT_STORAGE = "sqlite:///studies.db"


class _InputError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """Turns hpo errors into one-line messages (exit 2 for bad input, 1 otherwise)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HPOError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, HPOInputError):
                raise _InputError(message) from None
            raise click.ClickException(message) from None


def storage_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage``, falling back to HPO_STORAGE, then the config file, then studies.db."""
    return click.option(
        "--storage",
        envvar="HPO_STORAGE",
        show_envvar=True,
        default=None,
        help=f"Storage URL (default: the config's, else {DEFAULT_STORAGE}).",
    )(fn)


def study_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--study", "--study-name", "study", required=required, help="Study name.")


def format_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
    )(fn)


def _log_setup(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hpo").setLevel(level)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and results.")
@click.version_option(package_name="hpo")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Hyperparameter optimization for fine-tuning pretrained transformers."""
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet)
    _log_setup(verbose, quiet)


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                     help="Study config YAML file."),
        storage_option,
        study_option(required=False),
        click.option("--n-trials", type=click.IntRange(min=1), help="Trial budget of the study."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                     help="Seconds this process keeps starting trials."),
        click.option("--sampler", help="tpe, random, gp, cmaes, qmc or grid."),
        click.option("--pruner", help="median, percentile, successive-halving, hyperband, patient or none."),
        click.option("--seed", type=int, help="Seed of the sampler, splits and training."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(config_path: str, storage: str | None, **overrides: Any) -> Any:
    from hpo.config import load_config

    overrides["storage"] = storage
    return load_config(config_path, overrides)


@cli.command()
@_config_options
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: cores / local workers).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Also write the study's HTML report here at the end.")
@click.option("--warm-start-from", help="Earlier study whose best trials run first.")
@click.option("--warm-start-storage", help="Storage URL of that study (default: this study's).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many of its best complete trials to enqueue.")
@click.option("--allow", is_flag=True, help="Run even if the data checks find errors (leakage...).")
@format_option
@click.pass_context
def run(ctx: click.Context, config_path: str, fmt: str, threads: int | None,
        report_path: str | None, warm_start_from: str | None, warm_start_storage: str | None,
        top_k: int, allow: bool, **overrides: Any) -> None:
    """Run a study (create it, or resume it when it exists) and print the best trial."""
    from hpo.checks import run_data_checks
    from hpo.runner import run_study

    cfg = _load(config_path, **overrides)
    run_data_checks(cfg, allow)
    if warm_start_from:
        from hpo.warm_start import warm_start

        warm_start(cfg, warm_start_from, top_k, warm_start_storage)
    summary = run_study(cfg, threads=threads, quiet=ctx.obj["quiet"])
    _print_summary(summary, cfg.metric, fmt)
    if report_path:
        from hpo.report import write_report
        from hpo.storage import redact_url
        from hpo.study import open_study

        path = write_report(open_study(cfg.storage, cfg.study), report_path, redact_url(cfg.storage))
        click.echo(f"report: {path}", err=True)
    if summary.interrupted:
        ctx.exit(130)


@cli.command()
@_config_options
@click.option("--allow", is_flag=True, help="Create it even if the data checks find errors.")
def create(config_path: str, allow: bool, **overrides: Any) -> None:
    """Create a study with its config, search space and data fingerprint; run no trial."""
    from hpo.checks import run_data_checks
    from hpo.study import create_study

    cfg = _load(config_path, **overrides)
    run_data_checks(cfg, allow)
    study = create_study(cfg, exist_ok=False)
    click.echo(study.study_name)


@cli.command()
@storage_option
@study_option()
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: cores / local workers).")
@click.option("--worker-id", envvar="HPO_WORKER_ID", metavar="NAME",
              help="This worker's name in the trials it runs, e.g. a SLURM task or pod name "
              "(env HPO_WORKER_ID; default: host-pid-random).")
@format_option
@click.pass_context
def worker(ctx: click.Context, storage: str | None, study: str, threads: int | None,
           worker_id: str | None, fmt: str) -> None:
    """Join a study: read its config from the storage and run trials until its budget is used."""
    from hpo.runner import run_study_worker

    if worker_id is not None and not worker_id.strip():
        raise _InputError("--worker-id: must not be empty (a name, e.g. the SLURM task or pod)")
    summary, metric = run_study_worker(storage or DEFAULT_STORAGE, study, threads=threads,
                                       quiet=ctx.obj["quiet"], worker_id=worker_id)
    _print_summary(summary, metric, fmt)
    if summary.interrupted:
        ctx.exit(130)


def _print_summary(summary: Any, metric: str, fmt: str) -> None:
    import json
    from dataclasses import asdict

    from hpo.output import summary_text

    click.echo(json.dumps(asdict(summary), default=str, indent=2) if fmt == "json"
               else summary_text(summary, metric))


@cli.command()
@storage_option
@format_option
def studies(storage: str | None, fmt: str) -> None:
    """List the studies in a storage."""
    from hpo.output import format_rows
    from hpo.output import study_rows
    from hpo.storage import build_storage

    click.echo(format_rows(study_rows(build_storage(storage or DEFAULT_STORAGE)), fmt))


@cli.command()
@storage_option
@study_option()
@format_option
def trials(storage: str | None, study: str, fmt: str) -> None:
    """List the trials of a study."""
    from hpo.output import format_rows
    from hpo.output import trial_rows
    from hpo.study import open_study

    s = open_study(storage or DEFAULT_STORAGE, study)
    click.echo(format_rows(trial_rows(s, fmt), fmt))


@cli.command(name="best")
@storage_option
@study_option()
@format_option
def best(storage: str | None, study: str, fmt: str) -> None:
    """Print the best trial of a study: value, metrics and parameters."""
    from hpo.output import best_text
    from hpo.study import open_study

    click.echo(best_text(open_study(storage or DEFAULT_STORAGE, study), fmt))


cli.add_command(best, name="best-trial")


@cli.command()
@storage_option
@study_option()
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--open", "open_", is_flag=True, help="Open the report in a browser.")
def report(storage: str | None, study: str, output: str, open_: bool) -> None:
    """Write one self-contained HTML report of a study (opens offline)."""
    from hpo.report import write_report
    from hpo.storage import redact_url
    from hpo.study import open_study

    url = storage or DEFAULT_STORAGE
    path = write_report(open_study(url, study), output, redact_url(url))
    click.echo(str(path))
    if open_:
        click.launch(str(path.resolve()))


@cli.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def dashboard(storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the same storage (pip install optuna-dashboard)."""
    from hpo.dashboard import serve

    serve(storage or DEFAULT_STORAGE, host, port)


@cli.command(name="delete-study")
@storage_option
@study_option()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_study(storage: str | None, study: str, yes: bool) -> None:
    """Delete a study and all its trials."""
    import optuna

    from hpo.study import open_study

    s = open_study(storage or DEFAULT_STORAGE, study)
    if not yes:
        click.confirm(f"Delete study {study!r} and its {len(s.trials)} trials?", abort=True)
    optuna.delete_study(study_name=study, storage=s._storage)
    click.echo(f"deleted {study}")


@cli.command(name="export")
@storage_option
@study_option()
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="New directory for the model, metrics.json, hpo_config.json and README.md.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training seeds (the study's seed, +1, ...): mean ± std; the first is saved.")
@click.option("--include-validation", is_flag=True,
              help="Train on train + validation (said so in the metrics and model card).")
@click.option("--merge", is_flag=True, help="LoRA: save the merged model instead of the adapter.")
def export(storage: str | None, study: str, output: str, seeds: int, include_validation: bool,
           merge: bool) -> None:
    """Retrain the best trial, test it once on the test split and save it with a model card."""
    from hpo.export import export_study

    result = export_study(storage or DEFAULT_STORAGE, study, output, seeds=seeds,
                          include_validation=include_validation, merge=merge)
    click.echo(result.summary_line())


@cli.command(name="check-data")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Study config YAML file.")
@click.option("--seed", type=int, help="Seed of the splits (default: the config's).")
@format_option
@click.pass_context
def check_data(ctx: click.Context, config_path: str, seed: int | None, fmt: str) -> None:
    """Check a study's data: leakage, conflicting labels, duplicates, imbalance, length."""
    import json

    from hpo.checks import check_data as run_checks
    from hpo.output import format_rows

    findings = run_checks(_load(config_path, None, seed=seed))
    rows = [f.to_dict() for f in findings]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_rows([{k: r[k] for k in ("severity", "code", "message")} for r in rows],
                               fmt) if rows else "data checks: clean")
    errors = sum(f.severity == "error" for f in findings)
    if errors:
        click.echo(f"{errors} error(s): hpo run stops on them; fix the data or pass --allow",
                   err=True)
        ctx.exit(2)


def main() -> None:
    """Entry point of the ``hpo`` console script."""
    cli.main(prog_name="hpo")



if __name__ == "__main__":
    main()
