"""Devices on the study side: memory back at baseline after every trial, out of memory as an
infeasible trial, one pinned worker per device, and data-parallel trials across processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from hpo.cli import cli
from hpo.config import config_from_dict
from hpo.search_space import search_space_from_dict
from hpo.study import create_study
from hpo.worker import run_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_memory_returns_to_baseline_after_every_trial(
    tmp_path: Path, tiny_model: str, data_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 trials in one worker (complete, pruned, out of memory): after each one, the bytes
    alive on the device are the worker's baseline (model, data, the bounded prefix cache)."""
    import torch

    from objectives import core
    from objectives.devices import allocated_bytes
    from objectives.text_classification import task_for

    original = core._optimizer

    def oom_at_64(model: Any, params: Any, *rest: Any) -> Any:
        if params.batch_size == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return original(model, params, *rest)

    monkeypatch.setattr(core, "_optimizer", oom_at_64)
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "batch_size": {"type": "categorical", "choices": [8, 16, 64]},
             "freeze_layers": {"type": "int", "low": 0, "high": 2}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    cfg = config_from_dict({
        "study": "memory", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "model": tiny_model,
        "dataset": {"path": str(data_csv)}, "max_length": 32, "cache_dir": None,
        "search_space": str(tmp_path / "space.yaml"), "n_trials": 12, "sampler": "random",
        "pruner": {"name": "median", "n_startup_trials": 1}, "precision": "fp32",
    })
    study = create_study(cfg)
    after: list[int] = []

    def measure(frozen: optuna.trial.FrozenTrial, seconds: float) -> None:
        cache = task_for(cfg.objective_config).prefix_cache
        after.append(allocated_bytes("cpu") - cache.nbytes)

    summary = run_worker(study, cfg, search_space_from_dict(space), on_trial=measure,
                         failure_log=tmp_path / "failures.log")
    states = [t.state for t in study.trials]
    assert summary.ran == 12 and len(after) == 12
    assert {TrialState.COMPLETE, TrialState.FAIL} <= set(states), states
    assert after == [after[0]] * 12, [a - after[0] for a in after]
    # Out of memory failed its trials with a clear reason, marked them infeasible, and the
    # worker went on; their tracebacks are in the failure log.
    oom = [t for t in study.trials if t.params["batch_size"] == 64]
    assert oom and all(t.state == TrialState.FAIL for t in oom)
    for t in oom:
        assert t.user_attrs["fail_reason"].startswith(
            "OutOfMemory: out of memory at batch_size=64 on cpu, peak ")
        assert t.user_attrs["infeasible"] == "out of memory"
        assert t.constraints == {"out_of_memory": 1.0}
        assert t.user_attrs["peak_memory_mb"] > 0
    log = (tmp_path / "failures.log").read_text()
    assert "Traceback (most recent call last)" in log and "OutOfMemoryError" in log


def test_a_failed_trial_logs_its_traceback_and_stores_its_first_line(tmp_path: Path) -> None:
    """The toy objective fails on purpose (param fail=true): the reason is the error's first
    line; the whole traceback is in the worker's log file, printed nowhere else."""
    (tmp_path / "space.yaml").write_text("fail: {type: categorical, choices: [true]}\n")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "failing", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "toy",
        "search_space": str(tmp_path / "space.yaml"), "n_trials": 2,
    }))
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--log-dir",
                                      str(tmp_path / "logs")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: all 2 trials failed")
    study = optuna.load_study(study_name="failing", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    reasons = {t.user_attrs["fail_reason"] for t in study.trials}
    assert reasons == {"RuntimeError: this configuration fails on purpose (param fail=true)"}
    logs = list((tmp_path / "logs" / "failing").glob("*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.count("Traceback (most recent call last)") == 2
    assert 'raise RuntimeError("this configuration fails on purpose' in text


@pytest.fixture
def toy_study(tmp_path: Path) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "pinned", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "toy",
        "search_space": str(ROOT / "search_spaces" / "toy.yaml"), "n_trials": 12,
        "n_steps": 3, "sleep": 0.05, "sampler": "random", "pruner": "none",
    }))
    return config


@pytest.mark.slow
def test_devices_start_one_pinned_worker_per_gpu(
    toy_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hpo run --devices 0,2 --workers-per-device 2``: four workers, two pinned to each GPU
    (CUDA_VISIBLE_DEVICES, as the toy objective records), one study and budget, one summary."""
    from objectives import devices

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 4)  # a machine with 4 GPUs
    result = CliRunner().invoke(cli, ["run", "--config", str(toy_study), "--devices", "0,2",
                                      "--workers-per-device", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pinned", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    trials = study.trials
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    seen = {(t.user_attrs["worker"]["id"], t.user_attrs["seen_env"]["CUDA_VISIBLE_DEVICES"])
            for t in trials}
    for worker, visible in seen:
        assert worker.endswith((f"-gpu{visible}-0", f"-gpu{visible}-1")), (worker, visible)
    assert {v for _, v in seen} <= {"0", "2"}
    summary = yaml.safe_load(result.stdout)
    assert summary["counts"] == {"complete": 12} and summary["ran"] == 12
    assert len(summary["worker"]["workers"]) == 4
    # One combined progress display: each finished trial once, with its worker.
    lines = [x for x in result.stderr.splitlines() if x.startswith("trial ")]
    assert len(lines) == 12 and all("-gpu" in x for x in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0,5"], "--devices 0,5: this machine has 4 visible GPU(s) (0..3), not 5"),
        (["--devices", "0,0"], "--devices '0,0': expected distinct GPU indices like 0,1,2 or 'all'"),
        (["--devices", "one"], "--devices 'one': expected GPU indices like 0,1,2 or 'all'"),
        (["--devices", "0", "--device", "cpu"], "--device and --devices: give one (--devices pins a worker to each GPU)"),
    ],
)
def test_bad_devices_are_one_line_exit_2(toy_study: Path, monkeypatch: pytest.MonkeyPatch,
                                         args: list[str], message: str) -> None:
    from objectives import devices

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 4)
    result = CliRunner().invoke(cli, ["run", "--config", str(toy_study), *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {message}"]


def test_devices_without_cuda_say_so(toy_study: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--config", str(toy_study), "--devices", "all"])
    assert result.exit_code == 2
    assert "no CUDA device is visible here" in result.stderr


@pytest.mark.slow
def test_a_data_parallel_trial_on_two_gloo_processes(tmp_path: Path, tiny_model: str,
                                                     data_csv: Path) -> None:
    """``devices_per_trial: 2`` on the CPU: each trial is a torchrun job of two gloo ranks.
    Rank 0 reports once per step, the pruning decision stops both ranks together, and each
    trial finishes once (not once per rank)."""
    (tmp_path / "space.yaml").write_text(
        "learning_rate: {type: categorical, choices: [0.001, 1.0]}\n")
    config = tmp_path / "study.yaml"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config.write_text(yaml.safe_dump({
        "study": "ddp", "storage": url, "model": tiny_model, "dataset": {"path": str(data_csv)},
        "max_length": 32, "cache_dir": None, "device": "cpu", "precision": "fp32",
        "search_space": str(tmp_path / "space.yaml"), "n_trials": 2, "devices_per_trial": 2,
        "sampler": {"name": "grid"}, "epochs": 2, "evals_per_epoch": 2,
        # learning rate 1.0 diverges (validation loss ~3 at the first step): pruned there.
        "pruner": {"name": "threshold", "upper": 1.5},
        "seed": 0,
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "WORLD_SIZE", "RANK")}
    proc = subprocess.run([sys.executable, "-m", "hpo", "run", "--config", str(config),
                           "--format", "json"], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="ddp", storage=url)
    trials = study.trials
    assert len(trials) == 2, [t.state for t in trials]
    for t in trials:
        assert t.user_attrs["world_size"] == 2
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        steps = sorted(t.intermediate_values)
        assert steps == sorted(set(steps))  # one report per step: rank 0 only
        assert t.user_attrs["examples_seen"] == steps[-1]
    by_lr = {t.params["learning_rate"]: t for t in trials}
    assert by_lr[0.001].state == TrialState.COMPLETE
    assert by_lr[1.0].state == TrialState.PRUNED
    assert len(by_lr[1.0].intermediate_values) == 1  # both ranks stopped at the first step
    assert by_lr[1.0].user_attrs["examples_seen"] < by_lr[1.0].user_attrs["planned_examples"]
    assert "Traceback" not in proc.stderr


def test_job_files_ask_for_gpus_and_start_one_worker_per_gpu() -> None:
    job = yaml.safe_load((ROOT / "deploy" / "k8s_job.yaml").read_text())
    worker = job["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert worker["command"][:2] == ["hpo", "worker"] and "--devices" in worker["command"]
    slurm = (ROOT / "deploy" / "slurm_array.sh").read_text()
    assert "#SBATCH --gres=gpu:4" in slurm and "--devices all" in slurm
    # The flags they use exist (click parses them without running anything).
    for command in (worker["command"][1:], ["worker", "--study", "s", "--devices", "all",
                                            "--workers-per-device", "2", "--worker-id", "w"]):
        ctx = cli.make_context("hpo", list(command), resilient_parsing=True)
        sub = cli.get_command(ctx, command[0])
        sub.make_context(command[0], list(command[1:]), resilient_parsing=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_local_worker_cleanly(tmp_path: Path, signum: str) -> None:
    """SIGTERM (or Ctrl-C's SIGINT) to ``hpo run`` with several local workers: each worker hands
    its running trial back, the launcher prints one summary and exits 128 + the signal."""
    import signal
    import time

    config = tmp_path / "study.yaml"
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config.write_text(yaml.safe_dump({
        "study": "stop", "storage": url, "objective": "toy",
        "search_space": str(ROOT / "search_spaces" / "toy.yaml"), "n_trials": 40,
        "n_steps": 50, "sleep": 0.1, "sampler": "random", "pruner": "none",
    }))
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "--config", str(config),
                             "--workers-per-device", "2", "--format", "json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        running: list[Any] = []
        while len(running) < 2 and time.monotonic() < deadline:  # both workers mid-trial
            time.sleep(0.2)
            with contextlib.suppress(KeyError):  # the study may not exist yet
                study = optuna.load_study(study_name="stop", storage=url)
                running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                           if t.user_attrs.get("worker")]
        assert len(running) == 2, "the workers never started their trials"
        proc.send_signal(getattr(signal, signum))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, signum), err[-3000:]
    assert "Traceback" not in err
    handed_back = [x for x in err.splitlines() if "WARNING hpo: trial" in x and "handed back" in x]
    assert len(handed_back) == 2, err[-3000:]
    summary = yaml.safe_load(out)
    assert summary["interrupted"] == signum
    trials = optuna.load_study(study_name="stop", storage=url).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    handed = {t.number for t in running}
    assert {t.number for t in trials if t.state == TrialState.FAIL} == handed
    assert sum(t.state == TrialState.WAITING for t in trials) == 2  # their params, to run again


