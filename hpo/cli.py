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
        except click.UsageError as exc:  # one line, not click's usage and hint lines
            if exc.ctx is not None and exc.ctx.obj and exc.ctx.obj.get("debug"):
                raise
            raise _InputError(exc.format_message().splitlines()[0]) from None
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
        click.option("--sampler", help="tpe, nsga2, random, gp, cmaes, qmc or grid."),
        click.option("--pruner", help="median, percentile, successive-halving, hyperband, patient, threshold, pareto-halving or none."),
        click.option("--seed", type=int, help="Seed of the sampler, splits and training."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--devices", metavar="LIST",
                     help="GPUs to use, e.g. 0,1,2,3 or all: one worker process pinned to each "
                     "(CUDA_VISIBLE_DEVICES), all on this study."),
        click.option("--workers-per-device", type=click.IntRange(min=1), default=1,
                     show_default=True, help="Workers on each device (small models)."),
        click.option("--device", help="Train on this device (auto, cpu, cuda, cuda:N, mps) "
                     "instead of the config's."),
        click.option("--log-dir", default=".hpo_logs", show_default=True,
                     help="Tracebacks of failed trials go to DIR/STUDY/WORKER.log."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _exit_code(summary: Any) -> int:
    """130 after SIGINT, 143 after SIGTERM (128 + the signal), else 0."""
    import signal

    if not summary.interrupted:
        return 0
    return 128 + int(getattr(signal, summary.interrupted, signal.SIGINT))


def _all_failed(summary: Any) -> str | None:
    """A line when every trial of the study failed (the study found nothing), else None."""
    counts = summary.counts
    if counts.get("fail", 0) and not (counts.get("complete", 0) or counts.get("pruned", 0)):
        return (f"all {counts['fail']} trials failed; their reasons: hpo trials --study "
                f"{summary.study} (tracebacks in the log directory)")
    return None


def _load(config_path: str, storage: str | None, **overrides: Any) -> Any:
    from hpo.config import load_config

    overrides["storage"] = storage
    return load_config(config_path, overrides)


@cli.command()
@_config_options
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: cores / local workers).")
@_device_options
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
        devices: str | None, workers_per_device: int, device: str | None, log_dir: str,
        report_path: str | None, warm_start_from: str | None, warm_start_storage: str | None,
        top_k: int, allow: bool, **overrides: Any) -> None:
    """Run a study (create it, or resume it when it exists) and print the best trial."""
    from hpo.checks import run_data_checks
    from hpo.defaults import apply_defaults

    cfg = _load(config_path, **overrides)
    local = _local_groups(devices, workers_per_device, cfg.devices_per_trial, device)
    cfg, chosen = apply_defaults(cfg, run_data_checks(cfg, allow))
    if warm_start_from:
        from hpo.warm_start import warm_start

        warm_start(cfg, warm_start_from, top_k, warm_start_storage, defaults=chosen)
    if local is None:
        from hpo.runner import run_study

        summary = run_study(cfg, threads=threads, quiet=ctx.obj["quiet"], device=device,
                            log_dir=log_dir, defaults=chosen)
    else:
        from hpo.study import create_study

        create_study(cfg, defaults=chosen)
        summary = _run_local(cfg.storage, cfg.study, local, threads, ctx.obj["quiet"], log_dir,
                             cfg.n_trials)
    _print_summary(summary, list(cfg.metrics) if cfg.multi_objective else cfg.metric, fmt)
    if report_path:
        from hpo.report import write_report
        from hpo.storage import redact_url
        from hpo.study import open_study

        path = write_report(open_study(cfg.storage, cfg.study), report_path, redact_url(cfg.storage))
        click.echo(f"report: {path}", err=True)
    _finish(ctx, summary)


def _local_groups(devices: str | None, per_device: int, devices_per_trial: int,
                  device: str | None, name: str | None = None) -> list[Any] | None:
    """The local workers to launch (None: run in this process)."""
    import os
    import socket

    from hpo.errors import ConfigError
    from hpo.launch import parse_devices
    from hpo.launch import plan_groups
    from objectives.distributed import env_world_size

    if devices is None and per_device == 1 and (devices_per_trial == 1 or env_world_size() > 1):
        return None
    if devices is not None and device is not None:
        raise ConfigError("--device and --devices: give one (--devices pins a worker to each GPU)")
    if device is not None and device != "cpu" and devices_per_trial > 1:
        raise ConfigError("--device: with devices_per_trial > 1 give --devices (the GPUs) instead")
    gpus = parse_devices(devices) if devices is not None else None
    return plan_groups(gpus, per_device, devices_per_trial,
                       name or f"{socket.gethostname()}-{os.getpid()}")


def _run_local(url: str, study: str, groups: list[Any], threads: int | None, quiet: bool,
               log_dir: str, n_trials: int | None) -> Any:
    from hpo.launch import run_local_workers

    summary, failed = run_local_workers(url, study, groups, threads=threads, quiet=quiet,
                                        log_dir=log_dir, n_trials=n_trials)
    for line in failed:
        click.echo(f"Error: {line}", err=True)
    if failed and len(failed) == len(groups) and not summary.ran:
        raise click.ClickException(f"no worker could run trials ({failed[0]})")
    return summary


def _finish(ctx: click.Context, summary: Any) -> None:
    code = _exit_code(summary)
    if code:
        ctx.exit(code)
    line = _all_failed(summary)
    if line:
        raise click.ClickException(line)


@cli.command()
@_config_options
@click.option("--allow", is_flag=True, help="Create it even if the data checks find errors.")
def create(config_path: str, allow: bool, **overrides: Any) -> None:
    """Create a study with its config, search space and data fingerprint; run no trial."""
    from hpo.checks import run_data_checks
    from hpo.defaults import apply_defaults
    from hpo.study import create_study

    cfg = _load(config_path, **overrides)
    cfg, chosen = apply_defaults(cfg, run_data_checks(cfg, allow))
    study = create_study(cfg, exist_ok=False, defaults=chosen)
    click.echo(study.study_name)


@cli.command()
@storage_option
@study_option()
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: cores / local workers).")
@_device_options
@click.option("--worker-id", envvar="HPO_WORKER_ID", metavar="NAME",
              help="This worker's name in the trials it runs, e.g. a SLURM task or pod name "
              "(env HPO_WORKER_ID; default: host-pid).")
@click.option("--allow-objective", "allowed", multiple=True, envvar="HPO_ALLOW_OBJECTIVES",
              metavar="MODULE:FUNCTION", help="A module:function objective this worker may "
              "import (env HPO_ALLOW_OBJECTIVES, space-separated); registered ones always may.")
@format_option
@click.pass_context
def worker(ctx: click.Context, storage: str | None, study: str, threads: int | None,
           devices: str | None, workers_per_device: int, device: str | None, log_dir: str,
           worker_id: str | None, allowed: tuple[str, ...], fmt: str) -> None:
    """Join a study: read its config from the storage and run trials until its budget is used."""
    from hpo.study import open_study
    from hpo.study import stored_config
    from objectives.distributed import env_world_size

    if worker_id is not None and not worker_id.strip():
        raise _InputError("--worker-id: must not be empty (a name, e.g. the SLURM task or pod)")
    url = storage or DEFAULT_STORAGE
    args = {"threads": threads, "quiet": ctx.obj["quiet"], "worker_id": worker_id,
            "device": device, "log_dir": log_dir, "allowed_objectives": allowed}
    if devices is not None or workers_per_device > 1:
        cfg, _ = stored_config(open_study(url, study), url)
        groups = _local_groups(devices, workers_per_device, cfg.devices_per_trial, device,
                               worker_id)
        summary, metric = _run_local(url, study, groups or [], threads, ctx.obj["quiet"],
                                     log_dir, cfg.n_trials), cfg.metric
    elif env_world_size() > 1:  # started by torchrun: one data-parallel trial at a time
        from hpo.ranks import run_ranked_worker

        summary, metric = run_ranked_worker(url, study, **args)
        if not metric:
            return  # not rank 0: rank 0 prints
    else:
        from hpo.runner import run_study_worker

        summary, metric = run_study_worker(url, study, **args)
    _print_summary(summary, metric, fmt)
    _finish(ctx, summary)


def _print_summary(summary: Any, metric: str, fmt: str) -> None:
    from dataclasses import asdict

    from hpo.output import summary_text
    from hpo.output import to_json

    click.echo(to_json(asdict(summary)) if fmt == "json" else summary_text(summary, metric))


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

    from hpo._optuna import storage_of
    from hpo.study import open_study

    s = open_study(storage or DEFAULT_STORAGE, study)
    if not yes:
        click.confirm(f"Delete study {study!r} and its {len(s.trials)} trials?", abort=True)
    optuna.delete_study(study_name=study, storage=storage_of(s))
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
@click.option("--trial", "trial_number", type=click.IntRange(min=0),
              help="Export this trial instead of the best (a study of several objectives: one "
              "of its Pareto trials).")
@click.option("--pick", metavar="RULE",
              help="Choose the trial by a rule, e.g. \"max val_accuracy where inference_ms <= 5\".")
def export(storage: str | None, study: str, output: str, seeds: int, include_validation: bool,
           merge: bool, trial_number: int | None, pick: str | None) -> None:
    """Retrain the best trial, test it once on the test split and save it with a model card."""
    from hpo.export import export_study

    if trial_number is not None and pick is not None:
        raise _InputError("--trial and --pick: give one")
    result = export_study(storage or DEFAULT_STORAGE, study, output, seeds=seeds,
                          include_validation=include_validation, merge=merge,
                          trial=trial_number, pick=pick)
    click.echo(result.summary_line())


@cli.command(name="check-data")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Study config YAML file.")
@click.option("--seed", type=int, help="Seed of the splits (default: the config's).")
@format_option
@click.pass_context
def check_data(ctx: click.Context, config_path: str, seed: int | None, fmt: str) -> None:
    """Check a study's data: leakage, conflicting labels, duplicates, imbalance, length."""
    from hpo.checks import check_data as run_checks
    from hpo.output import format_rows
    from hpo.output import to_json

    findings = run_checks(_load(config_path, None, seed=seed))
    rows = [f.to_dict() for f in findings]
    if fmt == "json":
        click.echo(to_json(rows))
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
    try:
        code = cli.main(prog_name="hpo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        # Ctrl-C before the worker loop took over signals (loading data, creating the study).
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)



if __name__ == "__main__":
    main()
