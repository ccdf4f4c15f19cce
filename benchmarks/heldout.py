"""The held-out protocol: ``hpo`` with its defaults vs ``Trainer.hyperparameter_search`` on data
the defaults were not shaped on.

Datasets: TREC-6 (6 question types), SMS spam (13% spam), the VADER snippets by source (4-way:
tweets, movie reviews, product reviews, editorials), and Rotten Tomatoes, the data the defaults
were shaped on (reported apart). Each is subsampled (seeded, stratified) to ``max_examples``
rows, split 70/15/15, cut at 64 tokens; the packaged MiniLM; 2 epochs, validation twice per
epoch; 3 seeds, the two sides interleaved.

- **The peer** (what a user writes, FACTS.md): ``Trainer.hyperparameter_search`` with optuna
  (TPE seeded, ``MedianPruner(n_startup_trials=3)``), learning rate 1e-5..5e-4 log, batch size
  8/16/32, weight decay 0..0.1, warmup 0..0.2, full fine-tuning, validation accuracy maximized,
  8 trials, dynamic padding.
- **Ours at equal wall time**: ``hpo run`` with nothing but the model, the data and the budget:
  ``timeout`` = the peer's wall time on the same seed (every default is hpo's: metric, automatic
  search space, start-up, pruner, the usual recipe first).
- **Ours at equal trials**: the same, ``n_trials: 8``.

Reported per dataset: the time each side takes to the peer's median final best validation
accuracy (its ratio), the final best validation accuracy and macro-F1 (median over seeds), and
the test scores (accuracy, macro-F1; mean ± std over seeds) of ``hpo export``'s model of the
equal-time study. Rotten Tomatoes is where the defaults were tuned: its line is marked.

Run: ``python -m benchmarks.heldout [--quick] [--datasets trec sms_spam ...]``.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import MAX_LENGTH
from benchmarks._common import accuracy_metrics
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
from benchmarks.search import best_so_far
from benchmarks.search import time_to

HELD_OUT = ("trec", "sms_spam", "vader_sources")
TUNED_ON = "rotten_tomatoes"
N_TRIALS = 8
SETTINGS = {
    "quick": {"max_examples": 300, "seeds": [0], "datasets": ["trec"]},
    "full": {"max_examples": 1200, "seeds": [0, 1, 2], "datasets": [*HELD_OUT, TUNED_ON]},
}


def _macro_f1(preds: Any, labels: Any) -> float:
    from objectives.metrics import macro_f1

    return macro_f1(labels, preds, int(max(labels.max(), preds.max())) + 1)


def run_peer(name: str, seed: int, rows: int, work: Path) -> dict[str, Any]:
    import numpy as np
    import optuna
    from transformers import DataCollatorWithPadding
    from transformers import PrinterCallback
    from transformers import Trainer

    t0 = time.perf_counter()
    events: list[tuple[float, float, float]] = []  # (seconds, accuracy, macro-F1)

    def metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred
        preds = np.argmax(logits, axis=-1)
        return {**accuracy_metrics(eval_pred), "f1": _macro_f1(preds, labels)}

    def on(event: str, state: Any, m: Any) -> None:
        if event == "evaluate" and m and "eval_accuracy" in m:
            events.append((time.perf_counter() - t0, float(m["eval_accuracy"]), float(m["eval_f1"])))

    data = hf_data(rows, seed=0, name=name)
    n_labels = len(data.label_names)

    def hp_space(trial: Any) -> dict[str, Any]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 5e-4, log=True),
            "per_device_train_batch_size": trial.suggest_categorical("batch_size", [8, 16, 32]),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
            "warmup_steps": trial.suggest_float("warmup_ratio", 0.0, 0.2),  # < 1: a ratio
        }

    trainer = Trainer(
        model_init=lambda trial: hf_model(n_labels),
        args=hf_args(str(work / f"hf-{name}-{seed}"), num_train_epochs=2, eval_strategy="steps",
                     eval_steps=0.25, warmup_steps=0.0),
        train_dataset=data.train, eval_dataset=data.validation,
        data_collator=DataCollatorWithPadding(data.tokenizer), compute_metrics=metrics,
        callbacks=[trainer_callback(on)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.hyperparameter_search(
        hp_space=hp_space, compute_objective=lambda m: m["eval_accuracy"], n_trials=N_TRIALS,
        direction="maximize", backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3),
    )
    return {"seconds": time.perf_counter() - t0, "events": events,
            "best_accuracy": max((a for _, a, _ in events), default=math.nan),
            "best_f1": max((f for _, _, f in events), default=math.nan)}


def run_ours(name: str, seed: int, rows: int, work: Path, *, timeout: float | None,
             n_trials: int | None, export: bool) -> dict[str, Any]:
    import optuna

    from hpo.checks import run_data_checks
    from hpo.config import config_from_dict
    from hpo.defaults import apply_defaults
    from hpo.export import export_study
    from hpo.runner import run_study
    from objectives.models import clear_resources
    from objectives.record import TrialRecord

    clear_resources()  # a new `hpo run` process
    study = f"heldout-{name}-{seed}-{'time' if timeout else 'trials'}"
    url = f"sqlite:///{work}/{study}.db"
    cfg = config_from_dict({
        "study": study, "storage": url, "model": "minilm",
        "dataset": {"name": name, "max_examples": rows}, "max_length": MAX_LENGTH,
        "epochs": 2, "evals_per_epoch": 2, "cache_dir": str(work / f"cache-{name}-{seed}"),
        "timeout": timeout, "n_trials": n_trials, "seed": seed,
    })
    t0 = time.perf_counter()
    cfg, chosen = apply_defaults(cfg, run_data_checks(cfg, allow=True))
    run_study(cfg, quiet=True, defaults=chosen, threads=os.cpu_count() or 1)
    seconds = time.perf_counter() - t0
    trials = optuna.load_study(study_name=study, storage=url).trials
    events = []
    for t in trials:
        start = (t.datetime_start - min(x.datetime_start for x in trials)).total_seconds()
        for p in TrialRecord.from_attrs(t.user_attrs).history:
            events.append((start + p.seconds, p.metrics.get("val_accuracy", math.nan),
                           p.metrics.get("val_f1", math.nan)))
    out = {"seconds": seconds, "events": events, "n_trials": len(trials),
           "best_accuracy": max((a for _, a, _ in events), default=math.nan),
           "best_f1": max((f for _, _, f in events), default=math.nan),
           "defaults": chosen}
    if export:
        result = export_study(url, study, work / f"export-{study}")
        out["test"] = {k: result.metrics["test"][k] for k in ("accuracy", "macro_f1")}
    return out


def run(quick: bool, datasets: list[str] | None = None, max_examples: int | None = None,
        seeds: list[int] | None = None) -> list[str]:
    quiet()
    set_threads()
    settings = dict(SETTINGS["quick" if quick else "full"])
    if max_examples:
        settings["max_examples"] = max_examples
    if seeds:
        settings["seeds"] = seeds
    header("held-out protocol: hpo defaults vs Trainer.hyperparameter_search", quick)
    names = datasets or settings["datasets"]
    lines: list[str] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            runs: dict[str, list[dict[str, Any]]] = {"peer": [], "ours_time": [], "ours_trials": []}
            for seed in settings["seeds"]:
                # Equal wall time needs the peer's time: the peer runs first on each seed; the
                # two sides alternate from there (peer, ours, peer, ours...).
                rows = settings["max_examples"]
                peer = run_peer(name, seed, rows, work)
                runs["peer"].append(peer)
                runs["ours_time"].append(run_ours(name, seed, rows, work, timeout=peer["seconds"],
                                                  n_trials=None, export=True))
                runs["ours_trials"].append(run_ours(name, seed, rows, work, timeout=None,
                                                    n_trials=N_TRIALS, export=False))
                for side, rs in runs.items():
                    r = rs[-1]
                    log(f"{name} seed {seed} {side:11s}: {r['seconds']:6.1f} s, best val accuracy "
                        f"{r['best_accuracy']:.3f}, macro-F1 {r['best_f1']:.3f}"
                        + (f", test accuracy {r['test']['accuracy']:.3f}" if "test" in r else ""))
            target = median([r["best_accuracy"] for r in runs["peer"]])
            times = {side: [time_to(best_so_far([(t, a) for t, a, _ in r["events"]]), target)
                            for r in rs] for side, rs in runs.items()}
            speedup = median(times["peer"]) / median(times["ours_time"])
            acc = {side: median([r["best_accuracy"] for r in rs]) for side, rs in runs.items()}
            f1 = {side: median([r["best_f1"] for r in rs]) for side, rs in runs.items()}
            tests = [r["test"] for r in runs["ours_time"]]
            test = {k: (statistics.mean(t[k] for t in tests),
                        statistics.stdev(t[k] for t in tests) if len(tests) > 1 else 0.0)
                    for k in ("accuracy", "macro_f1")}
            results[name] = {"target": target, "time_to_target": times, "speedup": speedup,
                             "accuracy": acc, "f1": f1, "test": test, "runs": runs}
            tag = " (tuned on)" if name == TUNED_ON else ""
            log(f"{name}{tag}: peer's median final best {target:.3f}; reached {speedup:.2f}x sooner; "
                f"best val accuracy ours {acc['ours_time']:.3f} (8 trials {acc['ours_trials']:.3f}) vs "
                f"peer {acc['peer']:.3f}; macro-F1 ours {f1['ours_time']:.3f} vs {f1['peer']:.3f}; "
                f"test accuracy {test['accuracy'][0]:.3f} ± {test['accuracy'][1]:.3f}")
            lines.append(goal_line(f"heldout-{name}-time", f"{acc['ours_time']:.3f} vs {acc['peer']:.3f}, "
                                   f"{speedup:.2f}x sooner", ">= peer, >= 3x",
                                   acc["ours_time"] >= acc["peer"] and speedup >= 3))
            lines.append(goal_line(f"heldout-{name}-trials", f"{acc['ours_trials']:.3f} vs "
                                   f"{acc['peer']:.3f}", "within 1 point",
                                   acc["ours_trials"] >= acc["peer"] - 0.01))
            save_json("heldout", {"quick": quick, "settings": settings, "results": results})
    for line in lines:
        log(line)
    return lines


def main() -> None:
    cli = parser(__doc__, "one dataset, one seed, 300 rows")
    cli.add_argument("--datasets", nargs="+", choices=[*HELD_OUT, TUNED_ON])
    cli.add_argument("--max-examples", type=int, help="rows per dataset (default: the mode's)")
    cli.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the mode's)")
    args = cli.parse_args()
    run(args.quick, args.datasets, args.max_examples, args.seeds)


if __name__ == "__main__":
    main()
