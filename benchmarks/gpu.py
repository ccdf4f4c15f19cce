"""GPU checks of the devices issue: one prepared run of under 10 minutes on one GPU.

    python -m benchmarks.gpu bundle                    # here: tokenizer, data, wheels -> .gpu_bundle/
    python -m benchmarks.gpu run --out DIR             # on the GPU machine
    python -m benchmarks.gpu run --device cpu --quick  # here, to check the script end to end

It measures, on the GPU it finds:

(a) epoch-2 training throughput, ours (``objectives.core.train``) vs HF ``Trainer`` on the same
    GPU, same data, batch 32, max length 128, bf16 autocast on both sides (``precision: auto``
    picks bf16 on compute capability >= 8.0; Trainer gets ``bf16=True``), for full fine-tuning
    and freeze-half, on a MiniLM-shaped encoder (6 layers, hidden 384) and a BERT-base-shaped
    one (12 layers, hidden 768: the size of all-mpnet-base-v2). Goals: >= 1.5x full, >= 3x
    freeze-half;
(b) trials per minute of one study with 1, 2 and 4 workers packed on the GPU
    (``hpo run --devices 0 --workers-per-device K``), from process start to the last trial and
    in steady state (first trial start to last trial end). Goal: 4 workers >= 2.5x one;
(c) 20 trials in one worker, with the GPU's allocated memory back at the worker's baseline
    after each (allocated bytes minus the bounded prefix cache), and each trial's peak;
and runs the GPU-only tests (``pytest -m "not slow" -k gpu``).

The GPU machine has no network and the packaged model's weights are larger than what can be
carried there, so the models are built from their configs with random weights and the real
MiniLM tokenizer: speed and memory do not depend on the weights' values. The data is the
Rotten Tomatoes snippets (written into the bundle as a CSV).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu_bundle"
# What the GPU machine lacks (its image has torch, transformers, peft, accelerate, pyarrow,
# pandas...): carried as wheels for its Python 3.12 (../.library/device/README.md).
WHEELS = ["optuna==5.0.0", "sqlalchemy==2.1.9", "alembic", "mako", "colorlog", "datasets==5.2.0",
          "dill", "multiprocess", "transformers==5.24.0", "peft==0.21.2", "greenlet"]
MINILM_BASE = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
               "num_attention_heads": 12, "intermediate_size": 1536}
BASE_SIZE = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072}
SETTINGS = {
    "full": {"rows": 3000, "max_length": 128, "trial_rows": 1000, "packed_trials": 12,
             "memory_trials": 20},
    "quick": {"rows": 200, "max_length": 32, "trial_rows": 120, "packed_trials": 4,
              "memory_trials": 10},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the bundle (made here, carried there) ------------------------------------------------


def make_bundle(wheels: bool) -> None:
    """Tokenizer and config of MiniLM, the data as CSV and (optionally) the missing wheels."""
    import csv

    from objectives.data import DatasetConfig
    from objectives.data import load_splits
    from objectives.models import resolve_model_path

    BUNDLE.mkdir(exist_ok=True)
    src = Path(resolve_model_path("minilm"))
    dst = BUNDLE / "minilm"
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".onnx")):
            shutil.copy(f, dst / f.name)
    splits = load_splits(DatasetConfig(name="rotten_tomatoes"), 0)
    with open(BUNDLE / "reviews.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for split in (splits.train, splits.validation, splits.test):
            for row in split:
                writer.writerow([row["text"], splits.label_names[row["label"]]])
    if wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp",
             *[f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                          "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                                          "manylinux1_x86_64", "any")],
             "-d", str(BUNDLE / "wheels"), *WHEELS], check=True)
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    log(f"bundle {BUNDLE}: {size / 2**20:.1f} MiB")


def build_model(directory: Path, shape: dict[str, Any], tokenizer_dir: Path) -> str:
    """A model of ``shape`` with random weights (seed 0) and the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer
    from transformers import BertConfig
    from transformers import BertForSequenceClassification

    config = json.loads((tokenizer_dir / "config.json").read_text())
    config.update({k: v for k, v in shape.items() if k != "model_type"}, num_labels=2)
    config.pop("architectures", None)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**config)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return str(directory)


# --- (a) throughput -----------------------------------------------------------------------


def throughput(model: str, data: Path, device: str, s: dict[str, Any], freeze: int) -> dict[str, Any]:
    from benchmarks._common import eval_clock
    from objectives.core import train
    from objectives.params import TrainParams
    from objectives.text_classification import TextClassificationConfig
    from objectives.text_classification import task_for

    cfg = TextClassificationConfig.from_dict({
        "model": model, "dataset": {"path": str(data), "max_examples": s["rows"]},
        "max_length": s["max_length"], "epochs": 2, "evals_per_epoch": 1, "cache_dir": None,
        "device": device, "precision": "auto", "prefix_cache_mb": 4096,
    })
    task = task_for(cfg)
    params = TrainParams.from_params({"batch_size": 32, "learning_rate": 5e-5, "freeze_layers": freeze})
    with eval_clock() as evals:
        record = train(params, task).record
    (_, e1, _), (s2, _, _) = evals[0], evals[1]
    n = len(task.examples("train"))
    ours = n / (s2 - e1)
    hf = _hf_throughput(model, task, freeze, device, record.precision)
    return {"ours_ex_s": ours, "hf_ex_s": hf, "ratio": ours / hf, "precision": record.precision,
            "prefix_s": record.prefix_seconds, "peak_mb": record.peak_memory_mb, "n_train": n}


def _hf_throughput(model: str, task: Any, freeze: int, device: str, precision: str) -> float:
    import datasets
    from transformers import AutoModelForSequenceClassification
    from transformers import DataCollatorWithPadding
    from transformers import PrinterCallback
    from transformers import Trainer
    from transformers import TrainerCallback
    from transformers import TrainingArguments

    times: dict[str, list[float]] = {"begin": [], "end": []}

    class Clock(TrainerCallback):
        def on_epoch_begin(self, *a: Any, **k: Any) -> None:
            _sync(device)
            times["begin"].append(time.perf_counter())

        def on_epoch_end(self, *a: Any, **k: Any) -> None:
            _sync(device)
            times["end"].append(time.perf_counter())

    enc = task.res.encoded["train"]
    train = datasets.Dataset.from_dict({"input_ids": [list(map(int, x)) for x in enc.ids],
                                        "labels": enc.labels.tolist()})
    hf = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2)
    if freeze:
        base = hf.base_model
        for m in [base.embeddings, *list(base.encoder.layer)[:freeze]]:
            m.requires_grad_(False)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, report_to="none", disable_tqdm=True, save_strategy="no",
            logging_strategy="no", num_train_epochs=2, per_device_train_batch_size=32,
            learning_rate=5e-5, use_cpu=device == "cpu", bf16=precision == "bf16",
            fp16=precision == "fp16", seed=0, dataloader_pin_memory=device != "cpu",
        )
        trainer = Trainer(model=hf, args=args, train_dataset=train,
                          data_collator=DataCollatorWithPadding(task.res.tokenizer),
                          callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # its end-of-training print only
        trainer.train()
    return len(train) / (times["end"][1] - times["begin"][1])


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- (b) packed workers ---------------------------------------------------------------------


def packed(model: str, data: Path, device: str, s: dict[str, Any], k: int, work: Path) -> dict[str, Any]:
    import optuna
    import yaml

    (work / "space.yaml").write_text(
        "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}\n"
        "batch_size: {type: categorical, choices: [16, 32]}\n")
    url = f"sqlite:///{work / f'packed-{k}.db'}"
    config = work / f"packed-{k}.yaml"
    config.write_text(yaml.safe_dump({
        "study": f"packed-{k}", "storage": url, "model": model,
        "dataset": {"path": str(data), "max_examples": s["trial_rows"]},
        "max_length": s["max_length"], "epochs": 1, "evals_per_epoch": 2, "cache_dir": None,
        "search_space": str(work / "space.yaml"), "n_trials": s["packed_trials"],
        "sampler": "random", "pruner": "none", "device": "auto" if device != "cpu" else "cpu",
    }))
    devices = ["--devices", "0"] if device != "cpu" else []
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpo", "-q", "run", "--config", str(config),
                           *devices, "--workers-per-device", str(k)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"hpo run with {k} workers failed: {proc.stderr[-2000:]}")
    trials = optuna.load_study(study_name=f"packed-{k}", storage=url).trials
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    steady = (end - start).total_seconds()
    return {"workers": k, "trials": len(trials), "wall_s": wall, "steady_s": steady,
            "per_min": len(trials) / wall * 60, "steady_per_min": len(trials) / steady * 60,
            "devices": sorted({str(t.user_attrs.get("device")) for t in trials})}


# --- (c) memory back at baseline ------------------------------------------------------------


def memory(model: str, data: Path, device: str, s: dict[str, Any], work: Path) -> dict[str, Any]:
    import yaml

    from hpo.config import config_from_dict
    from hpo.search_space import search_space_from_dict
    from hpo.study import create_study
    from hpo.worker import run_worker
    from objectives.devices import allocated_bytes
    from objectives.devices import resolve_device
    from objectives.text_classification import task_for

    space = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
             "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
             "freeze_layers": {"type": "int", "low": 0, "high": 6},
             "finetuning": {"type": "categorical", "choices": ["full", "lora"]}}
    (work / "memory-space.yaml").write_text(yaml.safe_dump(space))
    cfg = config_from_dict({
        "study": "memory", "storage": f"sqlite:///{work / 'memory.db'}", "model": model,
        "dataset": {"path": str(data), "max_examples": s["trial_rows"]},
        "max_length": s["max_length"], "epochs": 1, "evals_per_epoch": 2, "cache_dir": None,
        "search_space": str(work / "memory-space.yaml"), "n_trials": s["memory_trials"],
        "sampler": "random", "pruner": {"name": "median", "n_startup_trials": 2},
        "device": "auto" if device != "cpu" else "cpu",
    })
    here = resolve_device(cfg.objective_config.device)
    after: list[int] = []
    peaks: list[float | None] = []

    def measure(frozen: Any, seconds: float) -> None:
        cache = task_for(cfg.objective_config).prefix_cache
        after.append(allocated_bytes(here) - cache.nbytes)
        peaks.append(frozen.user_attrs.get("peak_memory_mb"))

    study = create_study(cfg)
    run_worker(study, cfg, search_space_from_dict(space), on_trial=measure)
    deviation = max(abs(a - after[0]) for a in after)
    return {"device": here, "trials": len(after), "baseline_mb": after[0] / 2**20,
            "max_deviation_bytes": deviation, "back_at_baseline": deviation == 0,
            "peak_mb": peaks, "states": [t.state.name for t in study.trials]}


# --- the run ----------------------------------------------------------------------------------


def run(device: str, quick: bool, out: Path) -> dict[str, Any]:
    import torch

    from objectives.models import quiet_transformers

    quiet_transformers()
    s = SETTINGS["quick" if quick else "full"]
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if device != "cpu" else "cpu"
    results: dict[str, Any] = {"device": gpu, "torch": torch.__version__, "quick": quick,
                               "settings": s}
    log(f"== GPU checks on {gpu} (torch {torch.__version__})")
    work = Path(tempfile.mkdtemp(prefix="hpo-gpu-"))
    tok = BUNDLE / "minilm"
    models = {"minilm-shaped": build_model(work / "minilm", MINILM_BASE, tok),
              "base-shaped": build_model(work / "base", BASE_SIZE, tok)}
    if quick:
        models.pop("base-shaped")
    data = BUNDLE / "reviews.csv"
    t0 = time.perf_counter()
    results["throughput"] = {}
    for name, path in models.items():
        layers = MINILM_BASE if name.startswith("minilm") else BASE_SIZE
        for mode, freeze in (("full", 0), ("freeze-half", layers["num_hidden_layers"] // 2)):
            r = throughput(path, data, device, s, freeze)
            results["throughput"][f"{name}/{mode}"] = r
            log(f"(a) {name} {mode}: ours {r['ours_ex_s']:.0f} ex/s, HF {r['hf_ex_s']:.0f} ex/s "
                f"-> {r['ratio']:.2f}x ({r['precision']}, peak {r['peak_mb']} MB)")
            _save(out, results)
    results["packed"] = []
    for k in (1, 2, 4):
        r = packed(models["minilm-shaped"], data, device, s, k, work)
        results["packed"].append(r)
        log(f"(b) {k} worker(s): {r['trials']} trials in {r['wall_s']:.1f} s -> "
            f"{r['per_min']:.1f}/min ({r['steady_per_min']:.1f}/min steady)")
        _save(out, results)
    one = results["packed"][0]
    four = results["packed"][-1]
    results["packed_ratio"] = {"wall": four["per_min"] / one["per_min"],
                               "steady": four["steady_per_min"] / one["steady_per_min"]}
    log(f"(b) 4 workers / 1: {results['packed_ratio']['wall']:.2f}x "
        f"({results['packed_ratio']['steady']:.2f}x steady)")
    results["memory"] = memory(models["minilm-shaped"], data, device, s, work)
    m = results["memory"]
    log(f"(c) {m['trials']} trials: baseline {m['baseline_mb']:.1f} MB, max deviation "
        f"{m['max_deviation_bytes']} bytes -> back at baseline: {m['back_at_baseline']}")
    results["seconds"] = time.perf_counter() - t0
    _save(out, results)
    if device != "cpu":
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "-m", "not slow", "-k", "gpu", "tests/objectives/test_devices.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        results["gpu_tests"] = tests.stdout[-2000:]
        log(f"gpu tests: {tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]}")
        _save(out, results)
    return results


def _save(out: Path, results: dict[str, Any]) -> None:
    (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="write .gpu_bundle/ here (tokenizer, data, wheels)")
    b.add_argument("--no-wheels", action="store_true")
    r = sub.add_parser("run", help="run the checks (on the GPU machine)")
    r.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    r.add_argument("--quick", action="store_true", help="small sizes (a check of the script)")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-results")))
    args = parser.parse_args()
    if args.command == "bundle":
        make_bundle(wheels=not args.no_wheels)
    else:
        run(args.device, args.quick, args.out)


if __name__ == "__main__":
    main()
