"""Mixed precision: speed and quality of ``precision: bf16`` against ``fp32``.

- Speed: training steps (forward, backward, fused AdamW; batch 32, max length 64, Rotten
  Tomatoes, length-grouped batches) and inference batches of the packaged MiniLM under
  ``torch.autocast(bfloat16)`` and in fp32, interleaved; the best of several repeats each.
  Full fine-tuning and freeze 3 of 6.
- Quality: the same configurations, sampled at random from ``search_spaces/default.yaml``
  narrowed to ``freeze_layers`` 2-4 and ``learning_rate`` 1e-4..5e-4 (where 2 epochs on a few
  hundred examples learn, and affordable where bf16 is emulated), each trained with our
  objective in fp32 and in bf16: the best validation loss and accuracy of each, and the best
  over all configurations (what a search would pick).

Whether bf16 is fast depends on the CPU: native bf16 needs AVX512-BF16 or AMX (or a GPU); on
AVX2-only CPUs oneDNN emulates it. The script prints what this CPU has.

Run: ``python -m benchmarks.precision [--quick]``. Not part of ``python -m benchmarks`` (no goal
line; the issue asks for the measurement and a recommendation).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import header
from benchmarks._common import log
from benchmarks._common import median
from benchmarks._common import parser
from benchmarks._common import quiet
from benchmarks._common import save_json
from benchmarks._common import set_threads
from benchmarks._common import text_config

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "quick": {"max_examples": 300, "n_configs": 2, "repeats": 2, "steps": 2},
    "full": {"max_examples": 400, "n_configs": 4, "repeats": 3, "steps": 4},
}


def cpu_support() -> dict[str, Any]:
    import torch

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cuda_bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }


def speed(task: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Seconds per training step and per inference batch, fp32 vs bf16 (best of repeats)."""
    import torch

    from objectives.core import _batches
    from objectives.devices import Precision
    from objectives.structure import find_structure

    examples, lengths = task.examples("train"), task.lengths("train")
    rng = np.random.default_rng(0)
    batches = _batches(rng.permutation(len(examples)), lengths, 32, rng)
    batches = [task.collate([examples[i] for i in idx], "cpu") for idx in batches[: settings["steps"]]]
    out: dict[str, Any] = {}
    for k in (0, 3):
        model = copy.deepcopy(task.base_model)
        for p in model.parameters():
            p.requires_grad_(True)
        frozen = find_structure(model).frozen(k)
        for m in frozen:
            m.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=1e-5, fused=True)
        times: dict[str, list[float]] = {}
        for _ in range(settings["repeats"]):
            for precision in ("fp32", "bf16"):
                autocast = Precision(precision, "cpu").autocast
                model.train()
                for m in frozen:
                    m.eval()
                t0 = time.perf_counter()
                for batch in batches:
                    with autocast():
                        outputs = model(**batch.inputs)
                    loss = task.loss(outputs, batch) / batch.units
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                times.setdefault(f"train-{precision}", []).append(
                    (time.perf_counter() - t0) / len(batches))
                model.eval()
                t0 = time.perf_counter()
                with torch.inference_mode(), autocast():
                    for batch in batches:
                        model(**batch.inputs)
                times.setdefault(f"infer-{precision}", []).append(
                    (time.perf_counter() - t0) / len(batches))
        best = {key: min(v) for key, v in times.items()}
        out[f"freeze{k}"] = {
            **best,
            "train_speedup": best["train-fp32"] / best["train-bf16"],
            "infer_speedup": best["infer-fp32"] / best["infer-bf16"],
        }
        log(f"freeze {k}: training step fp32 {best['train-fp32']:.3f} s, bf16 "
            f"{best['train-bf16']:.3f} s -> bf16 {out[f'freeze{k}']['train_speedup']:.2f}x; "
            f"inference batch fp32 {best['infer-fp32']:.3f} s, bf16 {best['infer-bf16']:.3f} s "
            f"-> {out[f'freeze{k}']['infer_speedup']:.2f}x")
    return out


def sample_configs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Random configs from default.yaml, narrowed to where 2 epochs learn and bf16 is affordable."""
    import optuna
    import yaml

    from hpo.search_space import search_space_from_dict

    raw = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    raw["freeze_layers"] = {"type": "int", "low": 2, "high": 4}
    raw["learning_rate"] = {"type": "float", "low": 1e-4, "high": 5e-4, "log": True}
    space = search_space_from_dict(raw, "precision space")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(space.sample(trial))
        study.tell(trial, 0.0)
    return configs


def quality(cfg: Any, task: Any, settings: dict[str, Any]) -> dict[str, Any]:
    from objectives.core import train
    from objectives.params import TrainParams
    from objectives.text_classification import TextClassificationTask

    rows = []
    for i, params in enumerate(sample_configs(settings["n_configs"])):
        row: dict[str, Any] = {"params": params}
        for precision in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            run = TextClassificationTask(dataclasses.replace(cfg, precision=precision), task.res)
            r = train(TrainParams.from_params(params), run).record
            row[precision] = {"val_loss": r.metric("val_loss"), "val_accuracy": r.metric("val_accuracy"),
                              "seconds": r.train_seconds + r.prefix_seconds}
        rows.append(row)
        log(f"config {i} (freeze {params['freeze_layers']}, lr {params['learning_rate']:.1e}, "
            f"batch {params['batch_size']}): val_loss fp32 {row['fp32']['val_loss']:.4f} bf16 "
            f"{row['bf16']['val_loss']:.4f}; accuracy fp32 {row['fp32']['val_accuracy']:.3f} "
            f"bf16 {row['bf16']['val_accuracy']:.3f}; seconds fp32 {row['fp32']['seconds']:.1f} "
            f"bf16 {row['bf16']['seconds']:.1f}")
    best = {p: min(r[p]["val_loss"] for r in rows) for p in ("fp32", "bf16")}
    best_acc = {p: max(r[p]["val_accuracy"] for r in rows) for p in ("fp32", "bf16")}
    diffs = [abs(r["fp32"]["val_loss"] - r["bf16"]["val_loss"]) for r in rows]
    log(f"best over configs: val_loss fp32 {best['fp32']:.4f} bf16 {best['bf16']:.4f}; accuracy "
        f"fp32 {best_acc['fp32']:.3f} bf16 {best_acc['bf16']:.3f}; per-config |diff| median "
        f"{median(diffs):.4f} max {max(diffs):.4f}")
    return {"rows": rows, "best_val_loss": best, "best_accuracy": best_acc,
            "abs_diff_median": median(diffs), "abs_diff_max": max(diffs)}


def run(quick: bool) -> dict[str, Any]:
    from objectives.text_classification import task_for

    quiet()
    set_threads()
    settings = SETTINGS["quick" if quick else "full"]
    header("precision: bf16 autocast vs fp32", quick)
    support = cpu_support()
    log(f"CPU: {support}")
    cfg = text_config(settings["max_examples"])
    task = task_for(cfg)
    result = {"support": support, "speed": speed(task, settings),
              "quality": quality(cfg, task, settings)}
    save_json("precision", {"quick": quick, "settings": settings, **result})
    return result


def main() -> None:
    run(parser(__doc__, "2 configs, fewer repeats").parse_args().quick)


if __name__ == "__main__":
    main()
