"""(c) Pruning: our sampler with the median pruner vs random search without pruning.

Both arms run the same number of trials through :func:`hpo.runner.run_study` (the ``hpo run``
path) on the same data, minimizing the validation loss (the default metric), 2 epochs with an
evaluation every half epoch (the fidelity steps), real training of the packaged MiniLM:

- ours: TPE (``n_startup_trials=4``) + ``MedianPruner(n_startup_trials=3)``, the settings of
  ``examples/demo.yaml``; steps are training examples seen.
- baseline: random search, no pruning.

To afford 3 seeds x (2 arms + replays) of real training, the trials are the fast ones: the
space is ``search_spaces/default.yaml`` with ``freeze_layers`` 5-6 (the frozen-prefix cache
makes a trial take seconds) and the learning rate widened to 1e-5..3e-3 (at that depth the
default range mostly learns too slowly to tell configs apart), on SMS spam (built in), where a
top layer and head learn within two epochs of a few hundred examples and the validation loss
spreads from 0.1 to 0.6 across configs (Rotten Tomatoes stays near chance there). Only
examples are counted, not seconds.

Both arms draw their first 4 configurations from the same seed (TPE starts at random), so
they differ only by what TPE and the pruner add. The target is the median over the random runs
of their final best validation loss. The goal figure is the training examples ours needed until
its best validation loss so far (over every evaluation, in trial order) first reached the
target, as a share of the examples random search spends for its final best (its whole budget);
both medians over seeds. Also shown, stricter: the share of the examples random search had used
when its best first reached the target. Then a replay: every trial the pruner stopped is run
again to the end on the same config with pruning off, and we count how many of them would have
been among the 5 best trials of their study.

Run: ``python -m benchmarks.pruning [--quick]``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import MAX_LENGTH
from benchmarks._common import goal_line
from benchmarks._common import header
from benchmarks._common import log
from benchmarks._common import median
from benchmarks._common import parser
from benchmarks._common import quiet
from benchmarks._common import save_json
from benchmarks._common import set_threads

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1 / 3  # ours may use at most this share of random search's examples
TOP = 5
DATASET = "sms_spam"
SETTINGS = {
    "quick": {"max_examples": 300, "n_trials": 8, "seeds": [0]},
    "full": {"max_examples": 400, "n_trials": 16, "seeds": [0, 1, 2]},
}


def _space(work: Path) -> Path:
    import yaml

    space = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    space["freeze_layers"] = {"type": "int", "low": 5, "high": 6}
    space["learning_rate"] = {"type": "float", "low": 1e-5, "high": 3e-3, "log": True}
    path = work / "pruning-space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _config(arm: str, seed: int, settings: dict[str, Any], work: Path) -> Any:
    from hpo.config import config_from_dict

    sampler: dict[str, Any] = {"name": "tpe", "n_startup_trials": 4, "seed": seed}
    pruner: dict[str, Any] = {"name": "median", "n_startup_trials": 3}
    if arm == "random":
        sampler, pruner = {"name": "random", "seed": seed}, {"name": "none"}
    return config_from_dict({
        "study": f"bench-pruning-{arm}-{seed}",
        "storage": f"sqlite:///{work}/{arm}-{seed}.db",
        "objective": "text_classification",
        "model": "minilm",
        "dataset": {"name": DATASET, "max_examples": settings["max_examples"]},
        "max_length": MAX_LENGTH,
        "epochs": 2,
        "evals_per_epoch": 2,
        "metric": "val_loss",
        "sampler": sampler,
        "pruner": pruner,
        "search_space": str(_space(work)),
        "n_trials": settings["n_trials"],
        "cache_dir": str(work / "cache"),
        "seed": 0,
    })


def curve(trials: list[Any]) -> list[tuple[int, float]]:
    """(training examples used so far, best validation loss so far) at each evaluation."""
    out: list[tuple[int, float]] = []
    used = 0
    best = math.inf
    for t in sorted(trials, key=lambda t: t.number):
        for h in t.user_attrs.get("history", []):
            best = min(best, h["val_loss"])
            out.append((used + int(h["step"]), best))
        used += int(t.user_attrs.get("examples_seen", 0))
    return out


def examples_to(points: list[tuple[int, float]], target: float) -> float:
    for used, best in points:
        if best <= target + 1e-12:
            return used
    return math.inf


def run_arm(arm: str, seed: int, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    import optuna

    from hpo.runner import run_study

    cfg = _config(arm, seed, settings, work)
    run_study(cfg, quiet=True, threads=os.cpu_count() or 1)
    trials = optuna.load_study(study_name=cfg.study, storage=cfg.storage).get_trials()
    return {"cfg": cfg, "trials": trials, "curve": curve(trials)}


def replay(run: dict[str, Any]) -> dict[str, Any]:
    """Run each pruned trial's config to the end without pruning; is it in the top 5?"""
    import optuna

    from objectives.text_classification import objective

    cfg = run["cfg"]
    finals: dict[int, float] = {}
    pruned = []
    for t in run["trials"]:
        if t.state == optuna.trial.TrialState.COMPLETE:
            finals[t.number] = float(t.value)
        elif t.state == optuna.trial.TrialState.PRUNED:
            study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
            trial = study.ask()
            finals[t.number] = objective(trial, dict(t.params), cfg.objective_config)
            pruned.append(t.number)
    top = sorted(finals, key=finals.get)[:TOP]
    return {"n_pruned": len(pruned), "pruned_in_top": sorted(set(pruned) & set(top)),
            "finals": finals}


def run(quick: bool) -> list[str]:
    quiet()
    set_threads()
    settings = SETTINGS["quick" if quick else "full"]
    header("pruning: TPE + median pruner vs random search, no pruning", quick)
    log(f"{settings['n_trials']} trials per run x 2 epochs, {DATASET} {settings['max_examples']} "
        f"rows (70% train), freeze_layers 5-6, seeds {settings['seeds']}")
    runs: dict[str, list[dict[str, Any]]] = {"random": [], "ours": []}
    replays = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, seed in enumerate(settings["seeds"]):
            for arm in (("random", "ours") if i % 2 == 0 else ("ours", "random")):
                r = run_arm(arm, seed, settings, work)
                runs[arm].append(r)
                states = [t.state.name.lower() for t in r["trials"]]
                log(f"seed {seed} {arm:6s}: {sum(t.user_attrs.get('examples_seen', 0) for t in r['trials'])}"
                    f" examples, {states.count('complete')} complete, {states.count('pruned')} "
                    f"pruned, best val_loss {r['curve'][-1][1]:.4f}")
            rep = replay(runs["ours"][-1])
            replays.append(rep)
            log(f"seed {seed} replay: {len(rep['pruned_in_top'])} of {rep['n_pruned']} pruned "
                f"trials would have been in the top {TOP}")
    target = median([r["curve"][-1][1] for r in runs["random"]])
    needed = {arm: [examples_to(r["curve"], target) for r in rs] for arm, rs in runs.items()}
    spent = median([r["curve"][-1][0] for r in runs["random"]])  # random's whole budget
    ratio = median(needed["ours"]) / spent
    strict = median(needed["ours"]) / median(needed["random"])
    for arm in ("random", "ours"):
        shown = ", ".join("never" if math.isinf(n) else str(int(n)) for n in needed[arm])
        log(f"{arm:6s} examples to val_loss {target:.4f}: {shown}")
    log(f"ours / random's budget ({int(spent)} examples): {ratio:.2f}; ours / random's examples "
        f"to the target: {strict:.2f}")
    n_pruned = sum(r["n_pruned"] for r in replays)
    n_top = sum(len(r["pruned_in_top"]) for r in replays)
    log(f"replay: {n_top} of {n_pruned} pruned trials would have been in the top {TOP} "
        f"({n_top / n_pruned:.0%} of pruned)" if n_pruned else "replay: nothing was pruned")
    save_json("pruning", {
        "quick": quick, "settings": settings, "target_val_loss": target, "examples": needed,
        "ratio": ratio, "ratio_to_first_reach": strict, "random_budget": spent, "replays": replays,
        "curves": {arm: [r["curve"] for r in rs] for arm, rs in runs.items()},
        "trials": {arm: [[{"number": t.number, "state": t.state.name, "params": t.params,
                           "value": t.value, "examples": t.user_attrs.get("examples_seen")}
                          for t in r["trials"]] for r in rs] for arm, rs in runs.items()},
    })
    measured = "not reached" if math.isinf(ratio) else f"{ratio:.2f} of random's examples"
    line = goal_line("pruning", f"{measured}; {n_top}/{n_pruned} pruned were top-{TOP}",
                     "<= 0.33", ratio <= TARGET)
    log(line)
    return [line]


def main() -> None:
    run(parser(__doc__, "small data, 8 trials, one seed").parse_args().quick)


if __name__ == "__main__":
    main()
