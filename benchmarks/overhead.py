"""(d) Overhead: the share of a study's wall time that is not training or evaluation.

A fresh Python process does what ``hpo run`` does: :func:`hpo.runner.run_study` on a new SQLite
file (heartbeats on), TPE + median pruner over ``search_spaces/default.yaml``, packaged MiniLM on
Rotten Tomatoes. Each trial records ``train_seconds`` (training + evaluation) and
``prefix_seconds`` (the frozen layers' forward pass, computed once): that is the useful work.
Everything else is overhead: creating and validating the study, loading the model and the data,
tokenizing, sampling, storage round-trips, heartbeats, copying the weights for each trial,
building optimizers. Python's start-up and the library imports (torch, transformers, ...) are
measured and shown apart: they are the same for any tool and do not grow with the study.

Figures: overhead share of ``run_study``'s wall time (the goal), the same per trial (each
trial's ``wall_seconds`` minus its training, evaluation and prefix time, median), and the share
of the whole process including start-up and imports.

Run: ``python -m benchmarks.overhead [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import DATASET
from benchmarks._common import MAX_LENGTH
from benchmarks._common import goal_line
from benchmarks._common import header
from benchmarks._common import log
from benchmarks._common import median
from benchmarks._common import parser
from benchmarks._common import save_json

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.05
SETTINGS = {
    "quick": {"max_examples": 300, "n_trials": 4},
    "full": {"max_examples": 600, "n_trials": 8},
}


def child(args: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: import, run the study, read the trials back."""
    t_main = time.time()
    # The library imports a worker pays once, whatever the tool (timed apart).
    import alembic.command  # noqa: F401  (optuna stamps a new database's schema version)
    import alembic.migration  # noqa: F401
    import datasets  # noqa: F401
    import optuna  # noqa: F401
    import optuna.storages._rdb.models  # noqa: F401  (sqlalchemy's ORM; loaded lazily by optuna)
    import optuna.storages._rdb.storage  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from hpo.config import config_from_dict
    from hpo.runner import run_study

    t_imports = time.time()
    work = Path(args["work"])
    cfg = config_from_dict({
        "study": "bench-overhead",
        "storage": f"sqlite:///{work}/overhead.db",
        "objective": "text_classification",
        "model": "minilm",
        "dataset": {"name": DATASET, "max_examples": args["max_examples"]},
        "max_length": MAX_LENGTH,
        "epochs": 2,
        "evals_per_epoch": 2,
        "sampler": {"name": "tpe", "n_startup_trials": 4, "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 3},
        "search_space": str(ROOT / "search_spaces" / "default.yaml"),
        "n_trials": args["n_trials"],
        "cache_dir": str(work / "cache"),
    })
    t0 = time.perf_counter()
    run_study(cfg, quiet=True, threads=os.cpu_count() or 1)
    run_seconds = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    trials = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "wall": t.user_attrs.get("wall_seconds", 0.0),
            "train": t.user_attrs.get("train_seconds", 0.0),
            "prefix": t.user_attrs.get("prefix_seconds", 0.0),
            "params": t.params,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return {"t_main": t_main, "t_imports": t_imports, "run_seconds": run_seconds,
            "trials": trials, "t_end": time.time()}


def run(quick: bool) -> list[str]:
    settings = SETTINGS["quick" if quick else "full"]
    header("overhead: hpo run on SQLite, time outside training and evaluation", quick)
    log(f"{settings['n_trials']} trials x 2 epochs, {settings['max_examples']} rows (70% train), "
        "default space, fresh process, fresh token cache")
    with tempfile.TemporaryDirectory() as tmp:
        t_spawn = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.overhead", "--child",
             json.dumps({**settings, "work": tmp})],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
        t_done = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"overhead child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    trials = out["trials"]
    work = sum(t["train"] + t["prefix"] for t in trials)
    run_s = out["run_seconds"]
    share = (run_s - work) / run_s
    per_trial = [(t["wall"] - t["train"] - t["prefix"]) / t["wall"] for t in trials if t["wall"]]
    process = t_done - t_spawn
    startup = out["t_imports"] - t_spawn
    whole = (process - work) / process
    for t in trials:
        log(f"   trial {t['number']} {t['state']:8s} wall {t['wall']:6.2f} s, training+eval "
            f"{t['train']:6.2f} s, prefix {t['prefix']:5.2f} s, other "
            f"{t['wall'] - t['train'] - t['prefix']:5.2f} s")
    log(f"process {process:.1f} s: Python start-up + imports {startup:.1f} s, run_study "
        f"{run_s:.1f} s, of which training+evaluation+prefix {work:.1f} s")
    log(f"overhead: {share:.1%} of run_study; per trial median {median(per_trial):.1%} "
        f"(max {max(per_trial):.1%}); {whole:.1%} of the whole process incl. start-up")
    # Where the overhead goes: before the first trial (config, data checks, storage, study),
    # the first trial's loading (model weights, tokenization: other time of trial 0), the
    # other trials' own set-up, sampling and storage, and what follows the last trial.
    others = [t["wall"] - t["train"] - t["prefix"] for t in trials]
    outside = run_s - sum(t["wall"] for t in trials)
    parts = {"outside trials (study creation, summary)": outside,
             "first trial (model load, tokenization)": others[0] if others else 0.0,
             "other trials (set-up, sampling, storage)": sum(others[1:])}
    for name, seconds in parts.items():
        log(f"   {name}: {seconds:.2f} s = {seconds / run_s:.1%} of run_study"
            + (f" ({1000 * seconds / (len(others) - 1):.0f} ms per trial)"
               if name.startswith("other") and len(others) > 1 else ""))
    save_json("overhead", {"quick": quick, "settings": settings, "child": out,
                           "process_seconds": process, "startup_seconds": startup,
                           "share": share, "share_per_trial": per_trial, "parts": parts,
                           "share_whole_process": whole})
    line = goal_line("overhead", f"{share:.1%} of run time (per trial median "
                     f"{median(per_trial):.1%}; {whole:.1%} incl. imports)",
                     f"<= {TARGET:.0%}", share <= TARGET)
    log(line)
    return [line]


def main() -> None:
    cli = parser(__doc__, "small data, 4 trials")
    cli.add_argument("--child", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child:
        from benchmarks._common import quiet

        quiet()
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    run(args.quick)


if __name__ == "__main__":
    main()
