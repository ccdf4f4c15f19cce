"""Quality against cost: the hypervolume of ``hpo``'s Pareto front (TPE over two objectives,
pareto-halving pruning) against random search without pruning, at the same trial budget.

The default classification task (Rotten Tomatoes, 64 tokens, 2 epochs, validation twice per
epoch) with the base model as a hyperparameter (the packaged MiniLM, 22.7M parameters, and
MPNet, 109.5M), the learning rate, batch size and freezing depth; objectives: validation
accuracy (maximized) and inference latency per example (``inference_ms``, minimized). Both
sides run ``n_trials`` trials on the same data; 3 seeds.

Reported per seed and as medians: each side's hypervolume (2-d, reference point: accuracy 0.5,
the largest latency seen in any run x 1.1), the training examples each side used (all trials'
``examples_seen``), and the front's best-accuracy point with its cheapest point within one
accuracy point. Goal: ours >= random's hypervolume with <= 1/2 of its training examples.

Run: ``make setup-mpnet`` once (the packaged MPNet, ~404 MB), then
``python -m benchmarks.pareto [--quick]``.
"""

from __future__ import annotations

import os
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
from benchmarks._common import quiet
from benchmarks._common import save_json
from benchmarks._common import set_threads

SETTINGS = {
    "quick": {"max_examples": 200, "n_trials": 6, "seeds": [0], "models": ["minilm", "mpnet"]},
    "full": {"max_examples": 600, "n_trials": 16, "seeds": [0, 1, 2], "models": ["minilm", "mpnet"]},
}


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (accuracy maximized, latency minimized) up to ``ref``."""
    acc_ref, ms_ref = ref
    front: list[tuple[float, float]] = []
    for acc, ms in sorted(points, key=lambda p: (p[1], -p[0])):  # cheapest first
        if acc <= acc_ref or ms >= ms_ref:
            continue
        if not front or acc > front[-1][0]:
            front.append((acc, ms))
    area = 0.0
    for i, (acc, ms) in enumerate(front):
        right = front[i + 1][1] if i + 1 < len(front) else ms_ref
        area += (acc - acc_ref) * (right - ms)
    return area


def run_side(side: str, seed: int, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    import optuna
    import yaml

    from hpo.checks import run_data_checks
    from hpo.config import config_from_dict
    from hpo.defaults import apply_defaults
    from hpo.runner import run_study
    from objectives.models import clear_resources
    from objectives.record import TrialRecord

    clear_resources()
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump({
        "model": {"type": "categorical", "choices": settings["models"]},
        "learning_rate": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
        "batch_size": {"type": "categorical", "choices": [16, 32]},
        "freeze_layers": {"type": "int", "low": 0, "high": 6},
    }))
    name = f"pareto-{side}-{seed}"
    url = f"sqlite:///{work}/{name}.db"
    cfg = config_from_dict({
        "study": name, "storage": url, "model": settings["models"][0],
        "dataset": {"name": DATASET, "max_examples": settings["max_examples"]},
        "max_length": MAX_LENGTH, "epochs": 2, "evals_per_epoch": 2, "seed": seed,
        "cache_dir": str(work / "cache"), "search_space": str(space),
        "metric": ["val_accuracy", "inference_ms"], "n_trials": settings["n_trials"],
        "sampler": {"name": "tpe"} if side == "ours" else {"name": "random"},
        "pruner": {"name": "pareto-halving"} if side == "ours" else "none",
        "start_with_recipe": side == "ours",
    })
    t0 = time.perf_counter()
    cfg, chosen = apply_defaults(cfg, run_data_checks(cfg, allow=True))
    run_study(cfg, quiet=True, defaults=chosen, threads=os.cpu_count() or 1)
    seconds = time.perf_counter() - t0
    trials = optuna.load_study(study_name=name, storage=url).trials
    points, examples = [], 0
    for t in trials:
        record = TrialRecord.from_attrs(t.user_attrs)
        examples += record.examples_seen or 0
        if t.values is not None:
            points.append((float(t.values[0]), float(t.values[1]), t.params.get("model")))
    return {"seconds": seconds, "examples": examples, "points": points,
            "states": [t.state.name.lower() for t in trials]}


def _front_summary(points: list[tuple[float, float, Any]]) -> dict[str, Any]:
    best = max(points, key=lambda p: (p[0], -p[1]))
    close = [p for p in points if p[0] >= best[0] - 0.01]
    cheapest = min(close, key=lambda p: p[1])
    return {"best": best, "cheapest_within_1pt": cheapest}


def run(quick: bool, overrides: dict[str, Any] | None = None) -> list[str]:
    quiet()
    set_threads()
    settings = {**SETTINGS["quick" if quick else "full"],
                **{k: v for k, v in (overrides or {}).items() if v}}
    header("pareto: hypervolume of ours (TPE + pareto-halving) vs random without pruning", quick)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "random": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, seed in enumerate(settings["seeds"]):
            for side in (("ours", "random") if i % 2 == 0 else ("random", "ours")):
                r = run_side(side, seed, settings, work)
                r["seed"] = seed
                runs[side].append(r)
                log(f"seed {seed} {side:6s}: {r['seconds']:6.1f} s, {r['examples']} training "
                    f"examples, states {r['states']}")
    worst = max(p[1] for rs in runs.values() for r in rs for p in r["points"])
    ref = (0.5, worst * 1.1)
    for rs in runs.values():
        for r in rs:
            r["hypervolume"] = hypervolume([(a, m) for a, m, _ in r["points"]], ref)
            r["front"] = _front_summary(r["points"])
    hv = {side: median([r["hypervolume"] for r in rs]) for side, rs in runs.items()}
    ex = {side: median([r["examples"] for r in rs]) for side, rs in runs.items()}
    share = ex["ours"] / ex["random"] if ex["random"] else float("inf")
    for side, rs in runs.items():
        for r in rs:
            f = r["front"]
            log(f"seed {r['seed']} {side:6s}: hypervolume {r['hypervolume']:.4f}; best accuracy "
                f"{f['best'][0]:.3f} at {f['best'][1]:.3f} ms ({f['best'][2]}); cheapest within 1 "
                f"point: {f['cheapest_within_1pt'][0]:.3f} at {f['cheapest_within_1pt'][1]:.3f} ms "
                f"({f['cheapest_within_1pt'][2]})")
    log(f"median hypervolume ours {hv['ours']:.4f} vs random {hv['random']:.4f}; training "
        f"examples ours/random {share:.2f}")
    save_json("pareto", {"quick": quick, "settings": settings, "reference": ref,
                         "hypervolume": hv, "examples": ex, "runs": runs})
    line = goal_line("pareto", f"hypervolume {hv['ours']:.4f} vs {hv['random']:.4f}, examples "
                     f"{share:.2f}x", ">= random, <= 0.5x", hv["ours"] >= hv["random"] and share <= 0.5)
    log(line)
    return [line]


def main() -> None:
    cli = parser(__doc__, "200 rows, 6 trials, one seed")
    cli.add_argument("--max-examples", type=int, help="rows (default: the mode's)")
    cli.add_argument("--n-trials", type=int, help="trials per side (default: the mode's)")
    cli.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the mode's)")
    args = cli.parse_args()
    run(args.quick, {"max_examples": args.max_examples, "n_trials": args.n_trials,
                     "seeds": args.seeds})


if __name__ == "__main__":
    main()
