"""Image classification: per-epoch training throughput, ours vs the same run under HF Trainer.

Both sides fine-tune the packaged EfficientNet-Lite0 (a new 10-class head) on the same
built-in digits split (images resized to 64 px, batch 32, learning rate 1e-3, linear schedule,
no augmentation, fp32, all cores) for two epochs, and we time the second:

- ours: ``objectives.core.train`` with one evaluation per epoch; the epoch-2 time runs from the
  end of the first evaluation to the start of the second (training only).
- HF: ``Trainer.train`` on the same wrapped model (it returns the loss when given labels) with a
  dataset that yields each image's normalized ``pixel_values`` (what an image processor gives)
  and ``default_data_collator``, ``eval_strategy="no"``; the epoch-2 time runs from
  ``on_epoch_begin`` to ``on_epoch_end``. Frozen blocks get ``requires_grad=False`` and stay in
  train mode, as a Trainer user leaves them.

Modes: full fine-tuning (freeze 0) and freeze half (the stem and the bottom 3 of the 7 stages).
Each repeat measures ours and HF back to back (their order alternates); the figure is the
median over the repeats of ours / HF. Where CUDA is available the same pair runs on the GPU too
(``--device cuda``).

Run: ``python -m benchmarks.images [--quick] [--device cuda]``.
"""

from __future__ import annotations

import tempfile
from typing import Any

from benchmarks._common import eval_clock
from benchmarks._common import goal_line
from benchmarks._common import header
from benchmarks._common import hf_args
from benchmarks._common import log
from benchmarks._common import median
from benchmarks._common import parser
from benchmarks._common import quiet
from benchmarks._common import save_json
from benchmarks._common import set_threads
from benchmarks._common import trainer_callback

PARAMS: dict[str, Any] = {"batch_size": 32, "learning_rate": 1e-3, "weight_decay": 0.0,
                          "warmup_ratio": 0.0, "lr_scheduler_type": "linear"}
MODES = {"freeze0": 0, "freeze_half": 3}  # of EfficientNet-Lite0's 7 stages
TARGETS = {"freeze0": 1.5, "freeze_half": 3.0}
SETTINGS = {"quick": {"max_examples": 300, "repeats": 1, "image_size": 32},
            "full": {"max_examples": 600, "repeats": 3, "image_size": 64}}


def image_config(max_examples: int, image_size: int, device: str) -> Any:
    from objectives.image_classification import ImageClassificationConfig

    return ImageClassificationConfig.from_dict({
        "model": "efficientnet-lite0", "dataset": {"name": "digits", "max_examples": max_examples},
        "image_size": image_size, "epochs": 2, "evals_per_epoch": 1, "precision": "fp32",
        "device": device, "cache_dir": None})


def run_ours(freeze: int, task: Any) -> dict[str, float]:
    from objectives.core import train
    from objectives.image_classification import ImageParams
    from objectives.models import PrefixCache

    task.prefix_cache = task.res.prefix_cache = PrefixCache(
        task.config.prefix_cache_mb * 2**20)  # each run pays its prefix
    params = ImageParams.from_params({**PARAMS, "freeze_layers": freeze})
    with eval_clock() as evals:
        record = train(params, task).record
    n = len(task.examples("train"))
    (s1, e1, _), (s2, _, _) = evals[0], evals[1]
    epoch1 = record.prefix_seconds + (record.history[0].seconds - (e1 - s1))
    epoch2 = s2 - e1
    return {"epoch1_s": epoch1, "epoch2_s": epoch2, "ex_per_s": n / epoch2,
            "prefix_s": record.prefix_seconds, "cached": record.prefix_cached}


def run_hf(freeze: int, task: Any, device: str) -> dict[str, float]:
    import time

    import torch
    from transformers import PrinterCallback
    from transformers import Trainer
    from transformers import default_data_collator

    from objectives.image_models import load_image_model

    res = task.res
    mean = torch.tensor(res.image.mean).view(3, 1, 1)
    std = torch.tensor(res.image.std).view(3, 1, 1)

    class Images(torch.utils.data.Dataset):  # what an image processor's output looks like
        def __len__(self) -> int:
            return len(res.splits.labels["train"])

        def __getitem__(self, i: int) -> dict[str, Any]:
            x = res.pixels["train"][i].float() / 255.0
            return {"pixel_values": (x - mean) / std, "labels": int(res.splits.labels["train"][i])}

    times: dict[str, list[float]] = {"epoch_begin": [], "epoch_end": []}

    def on(event: str, state: Any, metrics: Any) -> None:
        if event in times:
            times[event].append(time.perf_counter())

    t0 = time.perf_counter()
    model = load_image_model("efficientnet-lite0", res.splits.label_names,
                             res.image.image_size).model
    if freeze:
        from objectives.structure import find_structure

        for m in find_structure(model).frozen(freeze):
            m.requires_grad_(False)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=hf_args(out, num_train_epochs=2, per_device_train_batch_size=PARAMS["batch_size"],
                         learning_rate=PARAMS["learning_rate"], weight_decay=0.0,
                         lr_scheduler_type="linear", eval_strategy="no",
                         use_cpu=not device.startswith("cuda")),
            train_dataset=Images(),
            data_collator=default_data_collator,
            callbacks=[trainer_callback(on)],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    n = len(res.splits.labels["train"])
    epoch1 = times["epoch_end"][0] - t0
    epoch2 = times["epoch_end"][1] - times["epoch_begin"][1]
    return {"epoch1_s": epoch1, "epoch2_s": epoch2, "ex_per_s": n / epoch2}


def run(quick: bool, device: str = "cpu") -> list[str]:
    """Measure both modes; return the goal lines."""
    from objectives.image_classification import task_for

    quiet()
    set_threads()
    settings = SETTINGS["quick" if quick else "full"]
    header(f"images: ours vs HF Trainer, epoch 2, EfficientNet-Lite0 on digits ({device})", quick)
    task = task_for(image_config(settings["max_examples"], settings["image_size"], device))
    log(f"train {len(task.examples('train'))} images at {settings['image_size']} px, batch "
        f"{PARAMS['batch_size']}, fp32, {task.structure.n_layers} stages")
    results: dict[str, Any] = {}
    lines = []
    for mode, freeze in MODES.items():
        rows = []
        for rep in range(settings["repeats"]):
            order = ("ours", "hf") if rep % 2 == 0 else ("hf", "ours")
            row: dict[str, Any] = {}
            for side in order:
                row[side] = run_ours(freeze, task) if side == "ours" else run_hf(freeze, task, device)
            row["ratio"] = row["ours"]["ex_per_s"] / row["hf"]["ex_per_s"]
            rows.append(row)
            log(f"{mode:11s} rep {rep}: ours {row['ours']['ex_per_s']:7.1f} ex/s (epoch 1 "
                f"{row['ours']['epoch1_s']:.1f} s incl. prefix {row['ours']['prefix_s']:.1f} s), "
                f"HF {row['hf']['ex_per_s']:6.1f} ex/s (epoch 1 {row['hf']['epoch1_s']:.1f} s) "
                f"-> {row['ratio']:.2f}x")
        ratio = median([r["ratio"] for r in rows])
        results[mode] = {"rows": rows, "ratio": ratio}
        lines.append(goal_line(f"images-{mode}-{device.split(':')[0]}", f"{ratio:.2f}x",
                               f">= {TARGETS[mode]:g}x", ratio >= TARGETS[mode]))
        save_json(f"images-{device.split(':')[0]}", {"quick": quick, "settings": settings,
                                                     "results": results})
    for line in lines:
        log(line)
    return lines


def main() -> None:
    cli = parser(__doc__, "small data at 32 px, one repeat")
    cli.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = cli.parse_args()
    run(args.quick, args.device)


if __name__ == "__main__":
    main()
