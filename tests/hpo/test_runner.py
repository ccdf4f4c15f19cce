"""Starting runs: one seed per fresh study, objectives a worker may import, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from hpo.cli import cli
from hpo.config import config_from_dict
from hpo.runner import sampler_seed
from hpo.study import create_study

ROOT = Path(__file__).resolve().parents[2]
SPACE = str(ROOT / "search_spaces" / "toy.yaml")


def toy_config(tmp_path: Path, **extra: object) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "toy", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "toy",
        "search_space": SPACE, "n_trials": 8, "sampler": "random", "pruner": "none", **extra,
    }))
    return config


def test_only_the_first_process_of_a_fresh_study_samples_with_the_configs_seed(tmp_path: Path) -> None:
    cfg = config_from_dict(yaml.safe_load(toy_config(tmp_path).read_text()))
    study = create_study(cfg)
    first, second = sampler_seed(study, cfg), sampler_seed(study, cfg)
    assert first == cfg.seed and second != cfg.seed


@pytest.mark.slow
def test_two_runs_of_one_config_started_at_once_sample_different_params(tmp_path: Path) -> None:
    """Two terminals, one config: each pair of trials used to be the same configuration."""
    config = toy_config(tmp_path, n_trials=8, n_steps=2, sleep=0.05)
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", "-q", "run", "--config", str(config)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'db.sqlite'}").trials
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(trials) == 8 and len(set(params)) == 8


@pytest.mark.slow
def test_a_resumed_study_samples_new_params(tmp_path: Path) -> None:
    config = toy_config(tmp_path, n_trials=3)
    assert CliRunner().invoke(cli, ["-q", "run", "--config", str(config)]).exit_code == 0
    assert CliRunner().invoke(cli, ["-q", "run", "--config", str(config), "--n-trials", "6"]).exit_code == 0
    trials = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'db.sqlite'}").trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6


def test_a_module_function_objective_is_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "def objective(trial, params, cfg):\n    return 1.0\n"
        "def not_an_objective(x):\n    return x\n"
        "raise_on_import = None\n")
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for name, message in [
            ("mine:not_an_objective", "objective: mine:not_an_objective is not an objective: it "
             "must take (trial, params, cfg), got not_an_objective(x)"),
            ("mine:missing", "objective: 'mine' has no function 'missing'"),
            ("mine:raise_on_import", "objective: 'mine' has no function 'raise_on_import'"),
            ("broken:objective", "objective: cannot import 'broken' (ModuleNotFoundError: No "
             "module named 'not_a_module_anywhere')"),
        ]:
            config = toy_config(tmp_path, objective=name)
            result = CliRunner().invoke(cli, ["run", "--config", str(config)])
            assert result.exit_code == 2, result.output
            assert result.stderr.strip().splitlines() == [f"Error: {config}: {message}"]
        config = toy_config(tmp_path, objective="mine:objective")
        assert CliRunner().invoke(cli, ["-q", "run", "--config", str(config)]).exit_code == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mine", None)


def test_a_worker_imports_only_objectives_it_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever can write to the database must not choose what every worker imports."""
    (tmp_path / "mine.py").write_text("def objective(trial, params, cfg):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = toy_config(tmp_path, objective="mine:objective", n_trials=2)
    assert CliRunner().invoke(cli, ["-q", "create", "--config", str(config)]).exit_code == 0
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sys.modules.pop("mine", None)
    refused = CliRunner().invoke(cli, ["worker", "--storage", url, "--study", "toy"])
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        "Error: the study's objective 'mine:objective' is not allowed on this worker; pass "
        "--allow-objective mine:objective (or HPO_ALLOW_OBJECTIVES) if you trust it"]
    assert "mine" not in sys.modules  # refused before anything imported it
    allowed = CliRunner().invoke(cli, ["-q", "worker", "--storage", url, "--study", "toy",
                                       "--allow-objective", "mine:objective"])
    assert allowed.exit_code == 0, allowed.output
    by_env = CliRunner().invoke(cli, ["-q", "worker", "--storage", url, "--study", "toy"],
                                env={"HPO_ALLOW_OBJECTIVES": "other:fn mine:objective"})
    assert by_env.exit_code == 0, by_env.output
    sys.modules.pop("mine", None)


def test_ctrl_c_before_the_first_trial_exits_130(tmp_path: Path) -> None:
    """Interrupted while the data loads (before the worker loop): one line, exit 130."""
    config = toy_config(tmp_path, n_trials=1)
    slow = tmp_path / "slow.py"
    marker = tmp_path / "importing"
    # A config's objective whose import hangs; it says when it started.
    slow.write_text(f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(60)\n")
    config.write_text(config.read_text().replace("objective: toy", "objective: slow:objective"))
    env = {**{k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}, "PYTHONPATH": str(tmp_path)}
    # Ctrl-C's default action, whatever this process inherited (a job started in the
    # background of a non-interactive shell ignores SIGINT, and so would its children).
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the run never reached the objective's import"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted"]
