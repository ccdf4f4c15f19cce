"""(b) End-to-end search: ``hpo run`` vs ``Trainer.hyperparameter_search`` (optuna backend).

Both sides search ``search_spaces/default.yaml`` (learning rate, batch size, frozen layers 0-6,
weight decay, dropout, warmup ratio) on the same Rotten Tomatoes split (seed 0, max
length 64) for the same number of trials of 2 epochs, with validation accuracy evaluated every
half epoch and maximized, the same sampler (optuna TPE, ``n_startup_trials=3``, seeded per run)
and the same pruner (``MedianPruner(n_startup_trials=3)``), in one process with all cores:

- ours: :func:`hpo.runner.run_study` on a fresh SQLite file (the ``hpo run`` path: study
  creation, model load, tokenization, heartbeats, everything), with fresh per-process caches.
- HF: ``Trainer(model_init=...)`` + ``hyperparameter_search(backend="optuna", sampler=...,
  pruner=...)``, as a fair user writes it: ``model_init(trial)`` reads the frozen depth and the
  dropout from the trial and sets ``requires_grad=False`` on the frozen modules;
  ``eval_strategy="steps"`` with ``eval_steps=0.25`` (each half epoch), ``compute_metrics`` for
  accuracy, ``direction="maximize"``, dynamic padding, no checkpoints. Its tokenization and
  Trainer set-up count in its time, as model loading and tokenization count in ours.

Each run records a timeline of (seconds since its start, best validation accuracy so far) over
all evaluations. The target is the median over the HF runs of their final best accuracy; the
figure is median HF time-to-target / median ours time-to-target. HF and ours alternate.

Run: ``python -m benchmarks.search [--quick]``.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import DATASET
from benchmarks._common import MAX_LENGTH
from benchmarks._common import accuracy_metrics
from benchmarks._common import eval_clock
from benchmarks._common import goal_line
from benchmarks._common import header
from benchmarks._common import hf_args
from benchmarks._common import hf_data
from benchmarks._common import hf_model
from benchmarks._common import log
from benchmarks._common import median
from benchmarks._common import parser
from benchmarks._common import quiet
from benchmarks._common import save_json
from benchmarks._common import set_threads
from benchmarks._common import trainer_callback

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "search_spaces" / "default.yaml"
TARGET = 3.0  # ours must reach the target accuracy this many times faster
N_STARTUP = 3  # random trials before TPE models the space, on both sides
PRUNER_STARTUP = 3  # complete trials before the median pruner acts, on both sides
SETTINGS = {
    "quick": {"max_examples": 300, "n_trials": 4, "seeds": [0]},
    "full": {"max_examples": 700, "n_trials": 6, "seeds": [0, 1, 2]},
}


def best_so_far(events: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(time, accuracy) of each evaluation -> (time, best accuracy so far), only improvements."""
    out: list[tuple[float, float]] = []
    for t, acc in sorted(events):
        if not out or acc > out[-1][1]:
            out.append((t, acc))
    return out


def time_to(timeline: list[tuple[float, float]], target: float) -> float:
    for t, acc in timeline:
        if acc >= target - 1e-9:
            return t
    return math.inf


def run_ours(seed: int, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    from optuna.trial import TrialState

    from hpo.config import config_from_dict
    from hpo.runner import run_study
    from objectives.models import clear_resources

    clear_resources()  # a new `hpo run` process: weights, tokens and prefixes not yet loaded
    cfg = config_from_dict({
        "study": f"bench-search-{seed}",
        "storage": f"sqlite:///{work}/ours-{seed}.db",
        "objective": "text_classification",
        "model": "minilm",
        "dataset": {"name": DATASET, "max_examples": settings["max_examples"]},
        "max_length": MAX_LENGTH,
        "epochs": 2,
        "evals_per_epoch": 2,
        "metric": "val_accuracy",
        "sampler": {"name": "tpe", "n_startup_trials": N_STARTUP, "seed": seed},
        "pruner": {"name": "median", "n_startup_trials": PRUNER_STARTUP},
        "search_space": str(SPACE),
        "n_trials": settings["n_trials"],
        "cache_dir": str(work / f"cache-{seed}"),  # fresh: tokenization counts
        "precision": "fp32",  # as HF's side; bf16 (hpo's default on AVX512-BF16 CPUs) adds 1.6x
        "seed": 0,
    })
    t0 = time.perf_counter()
    with eval_clock() as evals:
        summary = run_study(cfg, quiet=True, threads=os.cpu_count() or 1)
    total = time.perf_counter() - t0
    import optuna

    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    trials = study.get_trials(deepcopy=False)
    return {
        "seconds": total,
        "events": [(end - t0, acc) for _, end, acc in evals],
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best": summary.best["value"] if summary.best else None,
        "trials": trial_rows(study),
    }


@functools.lru_cache(maxsize=1)
def _space() -> Any:
    from hpo.search_space import load_search_space

    return load_search_space(str(SPACE))


def suggest(trial: Any) -> dict[str, Any]:
    """The space of ours, suggested in the same order (what ``hpo run`` does), so that both sides
    draw the same random start-up configurations from the same sampler seed."""
    return _space().sample(trial)


def trial_rows(study: Any, seconds: dict[int, float] | None = None) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = list(t.intermediate_values.values())
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": t.params,
                     "best": max(values) if values else None, "n_evals": len(values),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete else None})
    return rows


def run_hf(seed: int, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    import optuna
    from transformers import DataCollatorWithPadding
    from transformers import PrinterCallback
    from transformers import Trainer

    t0 = time.perf_counter()
    events: list[tuple[float, float]] = []
    studies: list[Any] = []

    def on(event: str, state: Any, metrics: Any) -> None:
        if event == "evaluate" and metrics and "eval_accuracy" in metrics:
            events.append((time.perf_counter() - t0, float(metrics["eval_accuracy"])))

    data = hf_data(settings["max_examples"], seed=0)
    n_labels = len(data.label_names)

    def model_init(trial: Any) -> Any:
        if trial is None:  # the Trainer's constructor calls it once without a trial
            return hf_model(n_labels)
        studies[:] = [trial.study]
        p = suggest(trial)
        return hf_model(n_labels, freeze_layers=p.get("freeze_layers", 0), dropout=p.get("dropout"))

    def hp_space(trial: Any) -> dict[str, Any]:
        p = suggest(trial)  # the values model_init drew: optuna returns them again
        return {
            "learning_rate": p.get("learning_rate", 5e-5),
            "per_device_train_batch_size": p.get("batch_size", 32),
            "weight_decay": p.get("weight_decay", 0.0),
            "warmup_steps": float(p.get("warmup_ratio", 0.0)),  # below 1: a ratio of the steps
        }

    trainer = Trainer(
        model_init=model_init,
        args=hf_args(
            str(work / f"hf-{seed}"),
            num_train_epochs=2,
            eval_strategy="steps",
            eval_steps=0.25,  # each half epoch of this 2-epoch run, whatever the batch size
            warmup_steps=0.0,  # a float, so the sampled ratio is not cast to int
        ),
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=DataCollatorWithPadding(data.tokenizer),
        compute_metrics=accuracy_metrics,
        callbacks=[trainer_callback(on)],
    )
    trainer.remove_callback(PrinterCallback)
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        n_trials=settings["n_trials"],
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(n_startup_trials=N_STARTUP, seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP),
    )
    states = [t.state.name.lower() for t in studies[0].get_trials(deepcopy=False)]
    return {
        "seconds": time.perf_counter() - t0,
        "events": events,
        "best": best.objective,
        "trials": trial_rows(studies[0]),
        "complete": states.count("complete"),
        "pruned": states.count("pruned"),
    }


def run(quick: bool) -> list[str]:
    quiet()
    set_threads()
    settings = SETTINGS["quick" if quick else "full"]
    header("search: hpo run vs Trainer.hyperparameter_search", quick)
    log(f"{settings['n_trials']} trials x 2 epochs, {settings['max_examples']} rows "
        f"(70% train), seeds {settings['seeds']}, space {SPACE.name}")
    runs: dict[str, list[dict[str, Any]]] = {"hf": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, seed in enumerate(settings["seeds"]):
            order = ("hf", "ours") if i % 2 == 0 else ("ours", "hf")
            for side in order:
                r = (run_hf if side == "hf" else run_ours)(seed, settings, work)
                r["seed"] = seed
                r["timeline"] = best_so_far(r["events"])
                runs[side].append(r)
                final = r["timeline"][-1][1] if r["timeline"] else float("nan")
                for t in r["trials"]:
                    params = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in t["params"].items())
                    log(f"   trial {t['number']} {t['state']:8s} best {t['best'] or 0:.3f} "
                        f"after {t['n_evals']} evals, {t['seconds'] or 0:5.1f} s: {params}")
                log(f"seed {seed} {side:4s}: {r['seconds']:6.1f} s, {r['complete']} complete, "
                    f"{r['pruned']} pruned, best accuracy {final:.3f} first at "
                    f"{r['timeline'][-1][0] if r['timeline'] else float('nan'):.1f} s")
    target = median([r["timeline"][-1][1] for r in runs["hf"] if r["timeline"]])
    times = {side: [time_to(r["timeline"], target) for r in rs] for side, rs in runs.items()}
    hf_t, ours_t = median(times["hf"]), median(times["ours"])
    speedup = hf_t / ours_t if ours_t > 0 else math.inf
    for side in ("hf", "ours"):
        shown = ", ".join("never" if math.isinf(t) else f"{t:.1f} s" for t in times[side])
        log(f"{side:4s} time to accuracy {target:.3f}: {shown} (median {median(times[side]):.1f} s)")
    save_json("search", {"quick": quick, "settings": settings, "target_accuracy": target,
                         "time_to_target": times, "speedup": speedup, "runs": runs})
    measured = "not reached" if math.isinf(ours_t) else f"{speedup:.2f}x"
    line = goal_line("search", measured, f">= {TARGET:g}x", speedup >= TARGET)
    log(line)
    return [line]


def main() -> None:
    run(parser(__doc__, "small data, 4 trials, one seed").parse_args().quick)


if __name__ == "__main__":
    main()
