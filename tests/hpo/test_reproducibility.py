"""The same config and seed give the same sampled parameters and the same validation values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner

from hpo.cli import cli

SPACE = (
    "learning_rate: {type: float, low: 1e-3, high: 3e-2, log: true}\n"
    "batch_size: {type: categorical, choices: [8, 16]}\n"
    "freeze_layers: {type: int, low: 0, high: 2}\n"
    "dropout: {type: float, low: 0.0, high: 0.3}\n"
)


def write_config(tmp_path: Path, model: str, data: Path, db: str, **values: Any) -> Path:
    (tmp_path / "space.yaml").write_text(SPACE)
    path = tmp_path / f"{db}.yaml"
    path.write_text(yaml.safe_dump({
        "study": "repro", "storage": f"sqlite:///{tmp_path / db}", "model": model,
        "dataset": {"path": str(data)}, "max_length": 32, "epochs": 1, "evals_per_epoch": 2,
        "sampler": "tpe", "pruner": "none", "search_space": str(tmp_path / "space.yaml"),
        "n_trials": 3, "seed": 3, "cache_dir": None, "deterministic": True, **values,
    }))
    return path


def trials(db: Path) -> list[tuple[dict[str, Any], float | None, dict[int, float]]]:
    study = optuna.load_study(study_name="repro", storage=f"sqlite:///{db}")
    return [(t.params, t.value, t.intermediate_values) for t in study.trials]


@pytest.mark.slow
def test_same_seed_same_params_and_values(tiny_model: str, data_csv: Path, tmp_path: Path) -> None:
    runs = []
    for db in ("a.db", "b.db"):
        config = write_config(tmp_path, tiny_model, data_csv, db)
        # One thread: by default a run takes cores / live hpo workers on the machine, so
        # another hpo process starting between the two runs changed the float sums.
        result = CliRunner().invoke(cli, ["-q", "run", "--config", str(config), "--threads", "1"])
        assert result.exit_code == 0, result.output
        runs.append(trials(tmp_path / db))
    assert len(runs[0]) == 3 and all(value is not None for _, value, _ in runs[0])
    assert runs[0] == runs[1]  # exactly equal: params, values and every reported step

    # Another seed samples other params.
    config = write_config(tmp_path, tiny_model, data_csv, "c.db", seed=4)
    assert CliRunner().invoke(cli, ["-q", "run", "--config", str(config)]).exit_code == 0
    assert [p for p, _, _ in trials(tmp_path / "c.db")] != [p for p, _, _ in runs[0]]

    # The study records the seed and the library versions.
    attrs = optuna.load_study(study_name="repro", storage=f"sqlite:///{tmp_path / 'a.db'}").user_attrs
    assert attrs["hpo_config"]["seed"] == 3 and attrs["hpo_config"]["deterministic"] is True
    assert attrs["data"]["seed"] == 3
    assert {"python", "optuna", "torch", "transformers", "peft", "numpy"} <= set(attrs["versions"])


@pytest.mark.slow
def test_separate_processes_reproduce(tiny_model: str, data_csv: Path, tmp_path: Path) -> None:
    """Two fresh `hpo run` processes, on an encoder saved without a classifier head (like the
    packaged MiniLM): each process initializes the head anew."""
    from transformers import AutoTokenizer
    from transformers import BertForSequenceClassification

    from objectives.models import quiet_transformers

    quiet_transformers()
    encoder = tmp_path / "encoder"
    BertForSequenceClassification.from_pretrained(tiny_model).bert.save_pretrained(encoder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(encoder)
    hpo = str(Path(sys.executable).with_name("hpo"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for db in ("a.db", "b.db"):
        config = write_config(tmp_path, str(encoder), data_csv, db, n_trials=2)
        subprocess.run([hpo, "-q", "run", "--config", str(config), "--threads", "1"], check=True,
                       env=env, capture_output=True, timeout=300)
    a, b = trials(tmp_path / "a.db"), trials(tmp_path / "b.db")
    assert all(value is not None for _, value, _ in a)
    assert a == b
