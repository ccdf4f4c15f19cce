"""Builders of studies that follow hpo's conventions, shared by the report tests.

``test_report.py`` and ``test_report_browser.py`` import them as ``from _studies import ...``:
pytest's default import mode puts this folder on ``sys.path`` for the test files in it.
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

XSS = "<script>alert(1)</script>"
T0 = datetime.datetime(2026, 1, 1, 12, 0, 0)
STEPS = [240, 480, 720, 960]  # examples seen at each evaluation; 960 = a full run

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 5e-4, "log": True},
    "finetuning": {"type": "categorical", "choices": ["lora", "full"]},
    "lora_alpha": {"type": "int", "low": 8, "high": 64, "condition": {"finetuning": "lora"}},
}
DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-5, 5e-4, log=True),
    "finetuning": CategoricalDistribution(["lora", "full"]),
    "lora_alpha": IntDistribution(8, 64),
}


def make_trial(
    number: int,
    state: TrialState = TrialState.COMPLETE,
    *,
    learning_rate: float = 1e-4,
    finetuning: str = "lora",
    n_evals: int = len(STEPS),
    base_loss: float = 0.5,
    worker: int = 0,
    start_s: float | None = None,
    seconds_per_eval: float = 10.0,
    **attrs: Any,
) -> FrozenTrial:
    """One trial as our objective stores it: the value is val_loss at the last evaluation."""
    params: dict[str, Any] = {"learning_rate": learning_rate, "finetuning": finetuning}
    if finetuning == "lora":
        params["lora_alpha"] = 16
    history = [
        {
            "step": step,
            "val_loss": base_loss + 0.4 / (k + 1),
            "val_accuracy": 0.9 - base_loss / 4 - 0.05 / (k + 1),
            "val_f1": 0.8 - base_loss / 4,
            "seconds": seconds_per_eval * (k + 1),
        }
        for k, step in enumerate(STEPS[:n_evals])
    ]
    last = history[-1]
    user_attrs = {
        "val_loss": last["val_loss"],
        "val_accuracy": last["val_accuracy"],
        "val_f1": last["val_f1"],
        "best_step": last["step"],
        "examples_seen": last["step"],
        "planned_examples": STEPS[-1],
        "train_seconds": seconds_per_eval * n_evals,
        "trainable_params": 300_000 if finetuning == "lora" else 22_000_000,
        "total_params": 22_000_000,
        "history": history,
        "worker": {"host": "node1", "pid": 100 + worker, "id": f"w{worker}"},
        **attrs,
    }
    trial = optuna.create_trial(
        state=state,
        value=last["val_loss"] if state == TrialState.COMPLETE else None,
        params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params},
        intermediate_values={h["step"]: h["val_loss"] for h in history},
        user_attrs=user_attrs,
    )
    start = T0 + datetime.timedelta(seconds=60 * number if start_s is None else start_s)
    trial.datetime_start = start
    trial.datetime_complete = start + datetime.timedelta(seconds=seconds_per_eval * n_evals)
    return trial


def hpo_study(
    storage: str | optuna.storages.BaseStorage | None = None,
    name: str = "sst2-lora",
    directions: list[str] | None = None,
) -> optuna.Study:
    """An empty study with the study attributes our runner stores."""
    study = optuna.create_study(
        storage=storage, study_name=name, directions=directions or ["minimize"]
    )
    config = {
        "study": name,
        "objective": "lora_classification",
        "model": "minilm",
        "dataset": {"name": "rotten_tomatoes", "text_column": "text", "label_column": "label"},
        "metric": "val_loss",
        "direction": "minimize",
        "sampler": {"name": "TPESampler", "seed": 0},
        "pruner": {"name": "MedianPruner", "n_startup_trials": 3},
        "n_trials": 20,
    }
    study.set_user_attr("hpo_config", config)
    study.set_user_attr("search_space", SPACE)
    study.set_user_attr("data_fingerprint", "fp-0123abcd")
    study.set_user_attr("data", {"sizes": {"train": 960, "validation": 120, "test": 120}})
    study.set_user_attr("versions", {"optuna": optuna.__version__})
    study.set_user_attr("created_at", T0.isoformat())
    return study


def demo_study(storage: Any = None, name: str = "sst2-lora", n: int = 12) -> optuna.Study:
    """A finished study: complete and pruned trials over two workers, LoRA and full."""
    study = hpo_study(storage, name)
    trials = []
    for i in range(n):
        pruned = i % 3 == 2
        trials.append(
            make_trial(
                i,
                TrialState.PRUNED if pruned else TrialState.COMPLETE,
                learning_rate=10 ** (-5 + 1.5 * ((i * 7) % n) / n),
                finetuning="lora" if i % 2 else "full",
                n_evals=2 if pruned else 4,
                base_loss=0.3 + ((i * 5) % n) / (2 * n),
                worker=i % 2,
                start_s=(i // 2) * 45,
            )
        )
    study.add_trials(trials)
    return study


def xss_study(storage: Any = None) -> optuna.Study:
    """A study whose every user string is a script."""
    study = hpo_study(storage, name=XSS)
    study.set_user_attr("hpo_config", {"study": XSS, "model": XSS, "dataset": {"path": XSS}})
    study.set_user_attr("search_space", {XSS: {"type": "categorical", "choices": [XSS, "b"]}})
    study.set_user_attr("data_fingerprint", XSS)
    dist = {XSS: CategoricalDistribution([XSS, "b"]), "x": FloatDistribution(0, 1)}
    for i in range(6):
        study.add_trial(
            optuna.create_trial(
                value=float(i % 4),
                params={XSS: [XSS, "b"][i % 2], "x": i / 10},
                distributions=dist,
                intermediate_values={10: 1.0, 20: 0.5},
                user_attrs={"worker": {"host": XSS, "pid": XSS}, "warm_start_from": XSS},
            )
        )
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": XSS}))
    return study
