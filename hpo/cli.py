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
@format_option
@click.pass_context
def run(ctx: click.Context, config_path: str, fmt: str, threads: int | None,
        report_path: str | None, **overrides: Any) -> None:
    """Run a study (create it, or resume it when it exists) and print the best trial."""
    from hpo.runner import run_study

    cfg = _load(config_path, **overrides)
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
def create(config_path: str, **overrides: Any) -> None:
    """Create a study with its config, search space and data fingerprint; run no trial."""
    from hpo.study import create_study

    cfg = _load(config_path, **overrides)
    study = create_study(cfg, exist_ok=False)
    click.echo(study.study_name)


@cli.command()
@storage_option
@study_option()
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: cores / local workers).")
@format_option
@click.pass_context
def worker(ctx: click.Context, storage: str | None, study: str, threads: int | None, fmt: str) -> None:
    """Join a study: read its config from the storage and run trials until its budget is used."""
    from hpo.runner import run_study_worker

    summary, metric = run_study_worker(storage or DEFAULT_STORAGE, study, threads=threads,
                                       quiet=ctx.obj["quiet"])
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


def main() -> None:
    """Entry point of the ``hpo`` console script."""
    cli.main(prog_name="hpo")



if __name__ == "__main__":
    main()
