"""Run a small study of any objective through the CLI, and export its best trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml
from click.testing import CliRunner

from hpo.cli import cli

PRUNING_SPACE = "learning_rate: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}\n"
# Run first: a learning rate that learns, then one that does not (the median pruner stops it at
# its first step, being worse than the first trial there).
ENQUEUED = ({"learning_rate": 3e-3}, {"learning_rate": 1e-7})


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def run_study(root: Path, objective: str, settings: dict[str, Any], space: str = PRUNING_SPACE,
              n_trials: int = 2, seed: int = 0) -> tuple[str, optuna.Study]:
    """``hpo create`` a study of ``objective`` (median pruner after one trial), enqueue the
    trials of :data:`ENQUEUED`, ``hpo run`` it; return its storage URL and the study."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "space.yaml").write_text(space)
    url = f"sqlite:///{root / 'studies.db'}"
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "s", "storage": url, "objective": objective, "epochs": 2, "evals_per_epoch": 2,
        "sampler": {"name": "random"}, "pruner": {"name": "median", "n_startup_trials": 1},
        "search_space": str(root / "space.yaml"), "n_trials": n_trials, "seed": seed,
        "cache_dir": None, "precision": "fp32", **settings,
    }))
    result = invoke("-q", "create", "--config", str(config))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=url)
    if space == PRUNING_SPACE:
        for params in ENQUEUED:
            study.enqueue_trial(params)
    result = invoke("-q", "run", "--config", str(config))
    assert result.exit_code == 0, result.output
    return url, optuna.load_study(study_name="s", storage=url)


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
