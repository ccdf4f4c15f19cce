"""(a) Per-epoch training throughput: our objective vs the same configuration under HF Trainer.

Both sides train the packaged MiniLM on the same Rotten Tomatoes split (max length 64, batch 32,
learning rate 5e-5, linear schedule, fp32, all cores) for two epochs, and we time the second:

- ours: ``objectives.core.train`` with one evaluation per epoch; the epoch-2 time runs
  from the end of the first evaluation to the start of the second (training only).
- HF: ``Trainer.train`` with ``DataCollatorWithPadding`` (dynamic padding, no length grouping:
  the defaults), ``eval_strategy="no"``; the epoch-2 time runs from ``on_epoch_begin`` to
  ``on_epoch_end``. Frozen layers get ``requires_grad=False`` and stay in train mode, as a
  Trainer user leaves them; LoRA is peft's ``get_peft_model`` on both sides.

Modes: full fine-tuning, freeze 3 of 6 (embeddings + bottom 3 layers), freeze 6 of 6 (head
only), LoRA r=8 on query,value. Each repeat measures ours and HF back to back (their order
alternates between repeats); the figure is the median over the repeats of ours / HF.

Run: ``python -m benchmarks.throughput [--quick]``.
"""

from __future__ import annotations

import tempfile
from typing import Any

from benchmarks._common import BASE_PARAMS
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
from benchmarks._common import text_config
from benchmarks._common import trainer_callback

MODES: dict[str, dict[str, Any]] = {
    "full": {"freeze_layers": 0, "finetuning": "full"},
    "freeze3": {"freeze_layers": 3, "finetuning": "full"},
    "freeze6": {"freeze_layers": 6, "finetuning": "full"},
    "lora": {"freeze_layers": 0, "finetuning": "lora", "r": 8, "lora_alpha": 16,
             "lora_dropout": 0.1, "target_modules": "query,value"},
}
# Ratio ours / HF (examples per second in epoch 2) that each mode must reach.
TARGETS = {"full": 1.0, "freeze3": 2.0, "freeze6": 10.0, "lora": 1.0}
SETTINGS = {  # rows before the 70/15/15 split, repeats per mode
    "quick": {"max_examples": 200, "repeats": 1},
    "full": {"max_examples": 400, "repeats": 3},
}


def run_ours(mode: str, task: Any) -> dict[str, float]:
    from objectives.core import train
    from objectives.models import PrefixCache
    from objectives.params import TrainParams

    task.prefix_cache = task.res.prefix_cache = PrefixCache(
        task.config.prefix_cache_mb * 2**20)  # each run pays its prefix
    params = TrainParams.from_params({**BASE_PARAMS, **MODES[mode]})
    with eval_clock() as evals:
        record = train(params, task).record
    n = len(task.examples("train"))
    (s1, e1, _), (s2, _, _) = evals[0], evals[1]
    epoch1 = record.prefix_seconds + (record.history[0].seconds - (e1 - s1))
    epoch2 = s2 - e1
    return {"epoch1_s": epoch1, "epoch2_s": epoch2, "ex_per_s": n / epoch2,
            "prefix_s": record.prefix_seconds, "cached": record.prefix_cached}


def run_hf(mode: str, data: Any) -> dict[str, float]:
    import time

    from transformers import DataCollatorWithPadding
    from transformers import PrinterCallback
    from transformers import Trainer

    spec = MODES[mode]
    times: dict[str, list[float]] = {"epoch_begin": [], "epoch_end": []}

    def on(event: str, state: Any, metrics: Any) -> None:
        if event in times:
            times[event].append(time.perf_counter())

    t0 = time.perf_counter()
    model = hf_model(len(data.label_names), spec["freeze_layers"], spec["finetuning"] == "lora")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=hf_args(
                out,
                num_train_epochs=2,
                per_device_train_batch_size=BASE_PARAMS["batch_size"],
                learning_rate=BASE_PARAMS["learning_rate"],
                weight_decay=BASE_PARAMS["weight_decay"],
                warmup_steps=BASE_PARAMS["warmup_ratio"],  # a float < 1 is a ratio
                lr_scheduler_type=BASE_PARAMS["lr_scheduler_type"],
                eval_strategy="no",
            ),
            train_dataset=data.train,
            data_collator=DataCollatorWithPadding(data.tokenizer),
            callbacks=[trainer_callback(on)],
        )
        trainer.remove_callback(PrinterCallback)  # its end-of-training print only
        trainer.train()
    n = len(data.train)
    epoch1 = times["epoch_end"][0] - t0  # model load and set-up count against epoch 1
    epoch2 = times["epoch_end"][1] - times["epoch_begin"][1]
    return {"epoch1_s": epoch1, "epoch2_s": epoch2, "ex_per_s": n / epoch2}


def run(quick: bool, modes: list[str] | None = None) -> list[str]:
    """Measure all modes; return the goal lines."""
    from objectives.text_classification import task_for

    quiet()
    set_threads()
    settings = SETTINGS["quick" if quick else "full"]
    header("throughput: ours vs HF Trainer, epoch 2", quick)
    cfg = text_config(settings["max_examples"], evals_per_epoch=1)
    task = task_for(cfg)
    data = hf_data(settings["max_examples"])
    log(f"train {len(task.examples('train'))} examples, batch {BASE_PARAMS['batch_size']}, "
        f"max length {cfg.max_length}, fp32")
    results: dict[str, Any] = {}
    lines = []
    for mode in modes or list(MODES):
        rows = []
        for rep in range(settings["repeats"]):
            order = ("ours", "hf") if rep % 2 == 0 else ("hf", "ours")
            row: dict[str, Any] = {}
            for side in order:
                row[side] = run_ours(mode, task) if side == "ours" else run_hf(mode, data)
            row["ratio"] = row["ours"]["ex_per_s"] / row["hf"]["ex_per_s"]
            rows.append(row)
            log(f"{mode:8s} rep {rep}: ours {row['ours']['ex_per_s']:7.1f} ex/s "
                f"(epoch 1 {row['ours']['epoch1_s']:.1f} s incl. prefix "
                f"{row['ours']['prefix_s']:.1f} s), HF {row['hf']['ex_per_s']:6.1f} ex/s "
                f"(epoch 1 {row['hf']['epoch1_s']:.1f} s) -> {row['ratio']:.2f}x")
        # Each repeat measures ours and HF back to back: the median of their ratios.
        ratio = median([r["ratio"] for r in rows])
        best = max(r["ours"]["ex_per_s"] for r in rows) / max(r["hf"]["ex_per_s"] for r in rows)
        results[mode] = {"rows": rows, "ratio": ratio, "best_over_best": best}
        if len(rows) > 1:
            log(f"{mode:8s} median of the {len(rows)} ratios {ratio:.2f}x; best ours / best HF "
                f"{best:.2f}x")
        target = TARGETS[mode]
        lines.append(goal_line(f"throughput-{mode}", f"{ratio:.2f}x",
                               f">= {target:g}x", ratio >= target))
        save_json("throughput", {"quick": quick, "settings": settings, "results": results})
    for line in lines:
        log(line)
    return lines


def main() -> None:
    cli = parser(__doc__, "small data, one repeat")
    cli.add_argument("--modes", nargs="+", choices=list(MODES), help="default: all")
    args = cli.parse_args()
    run(args.quick, args.modes)


if __name__ == "__main__":
    main()
