"""hpo export: retrain the best trial, test it once, save it; the saved model gives the same
test metrics back after from_pretrained."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import make_rows
from conftest import write_csv

from hpo.cli import cli
from objectives.data import DatasetConfig
from objectives.data import load_splits
from objectives.devices import resolve_precision

FULL_SPACE = (
    "learning_rate: {type: float, low: 3e-3, high: 3e-2, log: true}\n"
    "batch_size: {type: categorical, choices: [8, 16]}\n"
    "freeze_layers: {type: int, low: 0, high: 1}\n"
)
LORA_SPACE = (
    "learning_rate: {type: float, low: 3e-3, high: 3e-2, log: true}\n"
    "r: {type: categorical, choices: [4, 8]}\n"
    "lora_alpha: {type: categorical, choices: [8, 16]}\n"
)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def make_study(
    root: Path, model: str, name: str, space: str, n_trials: int = 3, command: str = "run"
) -> tuple[str, Path]:
    """Run (or only create) a small study on the tiny BERT; return its storage URL and config."""
    root.mkdir(parents=True, exist_ok=True)
    data = write_csv(root / "reviews.csv", make_rows(80))
    (root / "space.yaml").write_text(space)
    url = f"sqlite:///{root / 'studies.db'}"
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": name, "storage": url, "model": model, "dataset": {"path": str(data)},
        "max_length": 32, "epochs": 2, "evals_per_epoch": 2, "sampler": "random",
        "pruner": "none", "search_space": str(root / "space.yaml"), "n_trials": n_trials,
        "seed": 0, "cache_dir": None,
    }))
    result = invoke("-q", command, "--config", str(config))
    assert result.exit_code == 0, result.output
    return url, config


@pytest.fixture(scope="module")
def full_study(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[str, Path]:
    return make_study(tmp_path_factory.mktemp("full"), tiny_model, "full", FULL_SPACE)


@pytest.fixture(scope="module")
def lora_study(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[str, Path]:
    return make_study(tmp_path_factory.mktemp("lora"), tiny_model, "lora", LORA_SPACE)


def score_on_test(model: Any, directory: Path, study: optuna.Study) -> dict[str, Any]:
    """Evaluate a loaded model on the study's test split, with the loaded tokenizer, in plain
    torch (one example at a time: no padding, no code of hpo's training side)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from objectives.devices import Precision
    from objectives.metrics import classification_metrics

    config = study.user_attrs["hpo_config"]
    splits = load_splits(DatasetConfig.from_dict(config["dataset"]), config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(directory)
    labels = np.asarray(splits.test["label"], dtype=np.int64)
    # The precision the export evaluated with (the study's, `auto` resolved on this machine).
    autocast = Precision(resolve_precision(config["precision"], "cpu"), "cpu").autocast
    model.eval()
    losses, preds = [], []
    with torch.inference_mode():
        for text, label in zip(splits.test["text"], labels, strict=True):
            ids = tokenizer(text, truncation=True, max_length=config["max_length"],
                            return_tensors="pt")["input_ids"]
            with autocast():
                logits = model(input_ids=ids).logits.float()
            losses.append(float(F.cross_entropy(logits, torch.tensor([int(label)]))))
            preds.append(int(logits.argmax(-1)))
    return {"loss": float(np.mean(losses)),
            **classification_metrics(labels, np.asarray(preds), splits.label_names)}


def assert_same_metrics(got: dict[str, Any], recorded: dict[str, Any], loss_tol: float = 1e-5) -> None:
    assert got["accuracy"] == recorded["accuracy"]
    assert got["macro_f1"] == recorded["macro_f1"]
    assert got["confusion_matrix"] == recorded["confusion_matrix"]
    assert got["per_class"] == recorded["per_class"]
    assert got["loss"] == pytest.approx(recorded["loss"], abs=loss_tol)


def load_peft(directory: Path, num_labels: int) -> Any:
    from peft import AutoPeftModelForSequenceClassification

    with warnings.catch_warnings():
        # peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        return AutoPeftModelForSequenceClassification.from_pretrained(directory, num_labels=num_labels)


def test_full_fine_tune_round_trips_through_from_pretrained(
    full_study: tuple[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    url, _ = full_study
    out = tmp_path / "model"
    result = invoke("export", "--storage", url, "--study", "full", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("test accuracy ") and str(out) in result.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json",
            "hpo_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    study = optuna.load_study(study_name="full", storage=url)
    best = study.best_trial
    assert metrics["trial"] == best.number and metrics["seeds"] == [0]
    assert metrics["n_train_examples"] == best.user_attrs["best_step"]
    assert metrics["per_seed"][0]["examples_seen"] == best.user_attrs["best_step"]
    assert metrics["trained_on"] == "train" and not metrics["validation_used_for_training"]
    # The retrain is the trial's run up to its best step: the same validation value.
    assert metrics["validation_check"]["match"] is True
    assert metrics["validation_check"]["search"] == pytest.approx(best.value)
    assert set(metrics["test"]["per_class"]) == {"neg", "pos"}
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == metrics["n_test_examples"] == 12
    assert metrics["precision"] == resolve_precision(study.user_attrs["hpo_config"]["precision"])
    assert metrics["device"] == "cpu"

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert_same_metrics(score_on_test(model, out, study), metrics["test"])

    run = json.loads((out / "hpo_config.json").read_text())
    assert run["config"] == study.user_attrs["hpo_config"]
    assert run["trial"]["params"] == best.params
    assert run["hyperparameters"]["learning_rate"] == best.params["learning_rate"]
    assert run["data"]["fingerprint"] == study.user_attrs["data_fingerprint"]
    assert {"torch", "transformers", "optuna"} <= set(run["versions"]["export"])
    card = (out / "README.md").read_text()
    for expected in ("# full: trial", "## Test results", study.user_attrs["data_fingerprint"],
                     "train 56, validation 12, test 12", "| learning_rate |", "| transformers |",
                     "seeds: 0", "data checks: clean", "AutoModelForSequenceClassification"):
        assert expected in card, expected


def test_several_seeds_give_mean_and_std(full_study: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = full_study
    out = tmp_path / "seeds"
    result = invoke("export", "--storage", url, "--study", "full", "-o", str(out), "--seeds", "3")
    assert result.exit_code == 0, result.output
    assert "over 3 seeds" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1, 2] and metrics["saved_seed"] == 0
    for key in ("accuracy", "macro_f1", "loss"):
        summary = metrics["test_summary"][key]
        values = [s[key] for s in metrics["per_seed"]]
        assert summary["values"] == values
        assert summary["mean"] == pytest.approx(np.mean(values))
        assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    assert metrics["per_seed"][0]["loss"] == metrics["test"]["loss"]
    # Other seeds train differently (order, dropout), on the same data splits.
    assert len({s["loss"] for s in metrics["per_seed"]}) == 3
    assert "| loss | " in (out / "README.md").read_text() and "mean ± std" in (
        out / "README.md").read_text()


def test_include_validation_trains_on_both_and_says_so(
    full_study: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = full_study
    out = tmp_path / "with-val"
    result = invoke("export", "--storage", url, "--study", "full", "-o", str(out),
                    "--include-validation")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    best = optuna.load_study(study_name="full", storage=url).best_trial
    assert metrics["trained_on"] == "train+validation" and metrics["validation_used_for_training"]
    assert metrics["validation_check"] is None and metrics["per_seed"][0]["validation"] is None
    assert metrics["per_seed"][0]["examples_seen"] == best.user_attrs["best_step"]
    assert "The validation split was used for training" in (out / "README.md").read_text()


def test_lora_adapter_and_merged_model_round_trip(
    lora_study: tuple[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    url, _ = lora_study
    study = optuna.load_study(study_name="lora", storage=url)
    adapter = tmp_path / "adapter"
    result = invoke("export", "--storage", url, "--study", "lora", "-o", str(adapter))
    assert result.exit_code == 0, result.output
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert not (adapter / "config.json").exists()
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["validation_check"]["match"] is True
    assert_same_metrics(score_on_test(load_peft(adapter, 2), adapter, study), metrics["test"])
    assert "library_name: peft" in (adapter / "README.md").read_text()

    merged = tmp_path / "merged"
    result = invoke("export", "--storage", url, "--study", "lora", "-o", str(merged), "--merge")
    assert result.exit_code == 0, result.output
    assert json.loads((merged / "hpo_config.json").read_text())["saved"] == "merged-lora"
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    got = score_on_test(model, merged, study)
    recorded = json.loads((merged / "metrics.json").read_text())["test"]
    assert recorded == metrics["test"]  # the same retrain
    assert_same_metrics(got, recorded, loss_tol=1e-4)  # merged weights round differently


def test_refuses_without_a_complete_trial(tmp_path: Path, tiny_model: str) -> None:
    url, _ = make_study(tmp_path, tiny_model, "empty", FULL_SPACE, command="create")
    result = invoke("export", "--storage", url, "--study", "empty", "-o", str(tmp_path / "m"))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: study 'empty' has no complete trial to export; run trials first "
        "(hpo run / hpo worker)"
    )
    assert not (tmp_path / "m").exists()


def test_refuses_changed_data_and_a_used_output(full_study: tuple[str, Path], tmp_path: Path) -> None:
    url, config = full_study
    data = Path(yaml.safe_load(config.read_text())["dataset"]["path"])
    original = data.read_bytes()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    result = invoke("export", "--storage", url, "--study", "full", "-o", str(busy))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {busy} exists and is not an empty directory; choose another -o"
    try:
        data.write_bytes(original + b"one more row,pos\n")
        result = invoke("export", "--storage", url, "--study", "full", "-o", str(tmp_path / "m"))
    finally:
        data.write_bytes(original)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the data here has fingerprint ")
    assert "export needs the same data files" in lines[0]
    assert not (tmp_path / "m").exists()
    result = invoke("export", "--storage", url, "--study", "nope", "-o", str(tmp_path / "m"))
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr


@pytest.mark.parametrize("fault", ["not a directory", "disk full"])
def test_an_export_that_cannot_be_written_is_one_line_exit_1(
    full_study: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A place that cannot be written fails before any training; a disk that fills up while the
    files are written fails with one line too, and leaves no half-written directory."""
    import errno
    import os

    url, _ = full_study
    out = tmp_path / "model"
    if fault == "not a directory":
        (tmp_path / "plain").write_text("a file, not a directory")
        out = tmp_path / "plain" / "model"
        reason = f"{tmp_path / 'plain'} is not a directory"
    else:
        def full(self: Path, *args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(Path, "write_text", full)
        reason = "No space left on device"
    result = invoke("export", "--storage", url, "--study", "full", "-o", str(out))
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"Error: cannot write the export to {out}: {reason}"]
    assert not out.exists() and not list(out.parent.glob(".model.tmp-*"))
