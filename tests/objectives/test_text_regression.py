"""text_regression: CSV / JSONL / built-in VADER data, non-numeric targets, metrics, checks,
freezing with the prefix cache, word augmentation, a study that prunes and exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from task_studies import invoke
from task_studies import run_study
from task_studies import states

from objectives.core import train
from objectives.data import DataError
from objectives.text_classification import TextParams
from objectives.text_regression import RegressionDataConfig
from objectives.text_regression import TextRegressionConfig
from objectives.text_regression import TextRegressionTask
from objectives.text_regression import check_targets
from objectives.text_regression import load_regression_splits
from objectives.text_regression import regression_metrics
from objectives.text_regression import task_for


def config(model: str, dataset: dict[str, Any], **kw: Any) -> TextRegressionConfig:
    return TextRegressionConfig.from_dict({
        "model": model, "dataset": dataset, "max_length": 32, "epochs": 2, "evals_per_epoch": 2,
        "cache_dir": None, "precision": "fp32", **kw})


def test_csv_jsonl_and_builtin(scores_csv: Path, tmp_path: Path) -> None:
    import csv

    rows = list(csv.DictReader(scores_csv.open()))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"text": r["text"], "y": float(r["score"])}) + "\n"
                                              for r in rows))
    a = load_regression_splits(RegressionDataConfig(path=str(scores_csv), target_column="score"), 0)
    b = load_regression_splits(RegressionDataConfig(path=str(tmp_path / "s.jsonl"), target_column="y"), 0)
    assert a.texts == b.texts and all(np.array_equal(a.targets[s], b.targets[s]) for s in a.targets)
    assert a.info["sizes"] == {"train": 56, "validation": 12, "test": 12}
    vader = load_regression_splits(RegressionDataConfig(name="vader"), 0)
    assert sum(vader.info["sizes"].values()) == 23703  # after the header lines
    assert -4 <= vader.info["targets"]["train"]["min"] < 0 < vader.info["targets"]["train"]["max"] <= 4
    tweets = load_regression_splits(RegressionDataConfig(name="vader_tweets"), 0)
    assert sum(tweets.info["sizes"].values()) == 4200


def test_a_target_that_is_not_a_number_is_one_clear_error(tmp_path: Path, tiny_wordpiece: str) -> None:
    import yaml

    bad = tmp_path / "bad.csv"
    bad.write_text("text,target\ngood film,1.5\nbad film,n/a\n")
    with pytest.raises(DataError, match=r"^dataset file '.*bad.csv' row 3: target 'n/a' in column "
                       r"'target' is not a number; fix or remove the row$"):
        load_regression_splits(RegressionDataConfig(path=str(bad)), 0)
    (tmp_path / "space.yaml").write_text("learning_rate: {type: float, low: 1e-4, high: 1e-2}\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "study": "x", "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "objective": "text_regression",
        "model": tiny_wordpiece, "dataset": {"path": str(bad)}, "search_space": str(tmp_path / "space.yaml"),
        "n_trials": 1}))
    result = invoke("run", "--config", str(tmp_path / "s.yaml"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "target 'n/a' in column 'target' is not a number" in lines[0], result.output
    missing = tmp_path / "m.csv"
    missing.write_text("text,score\na,1\n")
    with pytest.raises(DataError, match=r"has no column 'target' \(columns: 'text', 'score'\)"):
        load_regression_splits(RegressionDataConfig(path=str(missing)), 0)


def test_metrics_match_scipy() -> None:
    from scipy.stats import pearsonr
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    y = np.round(rng.normal(size=50), 1)  # ties
    pred = y + rng.normal(scale=0.5, size=50)
    m = regression_metrics(y, pred)
    assert m["spearman"] == pytest.approx(spearmanr(y, pred).statistic)
    assert m["pearson"] == pytest.approx(pearsonr(y, pred).statistic)
    assert m["mse"] == pytest.approx(np.mean((y - pred) ** 2))
    assert regression_metrics(y, np.zeros(50))["spearman"] == 0.0  # constant prediction


def test_checks_find_each_planted_problem(scores_csv: Path, tmp_path: Path) -> None:
    clean = load_regression_splits(RegressionDataConfig(path=str(scores_csv), target_column="score"), 0)
    assert [f.code for f in check_targets(clean)] in ([], ["train-duplicates"])
    path = tmp_path / "odd.csv"
    texts = [f"text {i}" for i in range(40)]
    lines = [f"{t},1.0" for t in texts] + ["same text,0.5", "same text,2.5", ",3", "far,500"]
    path.write_text("text,target\n" + "\n".join(lines) + "\n")
    found = {f.code: f for f in check_targets(load_regression_splits(
        RegressionDataConfig(path=str(path)), 0))}
    assert {"conflicting-targets", "target-imbalance", "empty-texts"} <= set(found)
    assert "training targets are 1" in found["target-imbalance"].message
    const = tmp_path / "const.csv"
    const.write_text("text,target\n" + "\n".join(f"t{i},2" for i in range(20)) + "\n")
    codes = [f.code for f in check_targets(load_regression_splits(RegressionDataConfig(path=str(const)), 0))]
    assert "constant-target" in codes
    for s, rows in (("train", texts[:20]), ("validation", texts[18:30]), ("test", texts[30:])):
        (tmp_path / f"{s}.csv").write_text("text,target\n" + "\n".join(f"{t},{i}" for i, t in enumerate(rows)) + "\n")
    pre = RegressionDataConfig(**{f"{s}_path": str(tmp_path / f"{s}.csv") for s in ("train", "validation", "test")})
    leak = [f for f in check_targets(load_regression_splits(pre, 0)) if f.code == "leakage"]
    assert leak and "2 of 12 validation texts are also in train" in leak[0].message


def test_fast_and_plain_paths_train_the_same_and_learn(tiny_wordpiece: str, scores_csv: Path) -> None:
    task = task_for(config(tiny_wordpiece, {"path": str(scores_csv), "target_column": "score"}))
    params = TextParams.from_params({"freeze_layers": 1, "batch_size": 8, "learning_rate": 1e-2})
    fast = train(params, task)
    plain = train(params, task, fast_paths=False)
    assert fast.record.prefix_cached and not plain.record.prefix_cached
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    assert set(fast.record.history[0].metrics) == {"val_loss", "val_mse", "val_mae", "val_spearman"}


def test_gradual_unfreezing_and_layer_decay_run_with_the_cache(tiny_wordpiece: str,
                                                               scores_csv: Path) -> None:
    from objectives.structure import find_structure

    task = task_for(config(tiny_wordpiece, {"path": str(scores_csv), "target_column": "score"}))
    params = TextParams.from_params({"batch_size": 8, "learning_rate": 3e-3, "unfreeze_every": 2,
                                     "layer_decay": 0.7})
    fast = train(params, task, keep_model=True)
    plain = train(params, task, fast_paths=False)
    assert fast.record.prefix_cached
    for a, b in zip(fast.record.history, plain.record.history, strict=True):
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=1e-5)
    bottom = find_structure(fast.model).layers[0]
    assert any(not torch.equal(a, b) for a, b in
               zip(bottom.parameters(), task.structure.layers[0].parameters(), strict=True))


def test_the_model_learns_the_scores(tiny_wordpiece: str, scores_csv: Path) -> None:
    task = task_for(config(tiny_wordpiece, {"path": str(scores_csv), "target_column": "score"},
                           epochs=8, evals_per_epoch=1))
    result = train(TextParams.from_params({"batch_size": 8, "learning_rate": 3e-3}), task)
    rho = [p.metrics["val_spearman"] for p in result.record.history]
    assert rho[-1] > 0.5, rho


def test_word_augmentation_repeats_with_the_seed(tiny_wordpiece: str, scores_csv: Path) -> None:
    task = task_for(config(tiny_wordpiece, {"path": str(scores_csv), "target_column": "score"}))
    seen: list[tuple[bool, torch.Tensor, torch.Tensor]] = []

    class Recording(TextRegressionTask):
        def collate(self, examples: Any, device: str, rng: Any = None) -> Any:
            batch = super().collate(examples, device, rng)
            seen.append((rng is not None, batch.inputs["input_ids"].clone(), batch.targets.clone()))
            return batch

    rec = Recording(task.config, task.res)
    params = TextParams.from_params({"batch_size": 8, "word_dropout": 0.3, "random_swap": 0.3})
    runs = []
    for _ in range(2):
        seen.clear()
        result = train(params, rec)
        runs.append(list(seen))
    assert not result.record.prefix_cached
    for (aug_a, a, ya), (aug_b, b, yb) in zip(*runs, strict=True):
        assert aug_a == aug_b and torch.equal(a, b) and torch.equal(ya, yb)
    seen.clear()
    train(TextParams.from_params({"batch_size": 8}), rec)
    assert not any(aug for aug, _, _ in seen)
    # Augmented batches hold fewer tokens (dropped words), never other targets.
    aug_tokens = sum(int((x != 0).sum()) for aug, x, _ in runs[0] if aug)
    plain_tokens = sum(int((x != 0).sum()) for aug, x, _ in seen if aug is False)
    assert aug_tokens < plain_tokens


def test_study_prunes_and_exports(tiny_wordpiece: str, scores_csv: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification
    from transformers import AutoTokenizer

    url, study = run_study(tmp_path / "study", "text_regression",
                           {"model": tiny_wordpiece, "dataset": {"path": str(scores_csv),
                                                                 "target_column": "score"},
                            "max_length": 32})
    assert states(study).get("PRUNED", 0) >= 1 and states(study).get("COMPLETE", 0) >= 1
    out = tmp_path / "model"
    result = invoke("export", "--storage", url, "--study", "s", "-o", str(out), "--seeds", "2")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test_summary"]) == {"mse", "mae", "spearman", "pearson"}
    assert metrics["validation_check"]["match"]
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    splits = load_regression_splits(RegressionDataConfig(path=str(scores_csv), target_column="score"), 0)
    with torch.inference_mode():
        pred = [float(model(**tokenizer(t, truncation=True, max_length=32, return_tensors="pt")).logits[0, 0])
                for t in splits.texts["test"]]
    assert regression_metrics(splits.targets["test"], np.asarray(pred))["mse"] == pytest.approx(
        metrics["test"]["mse"], rel=1e-4)


@pytest.mark.slow
def test_packaged_minilm_on_vader_learns() -> None:
    cfg = TextRegressionConfig.from_dict({
        "model": "minilm", "dataset": {"name": "vader", "max_examples": 400}, "epochs": 1,
        "evals_per_epoch": 2})
    result = train(TextParams.from_params({"freeze_layers": 3, "batch_size": 16,
                                           "learning_rate": 1e-3}), task_for(cfg))
    assert result.record.history[-1].metrics["val_spearman"] > 0.3


def test_training_duplicates_are_a_warning(tmp_path: Path) -> None:
    rows = {"train": [f"t{i},{i % 5}" for i in range(20)] + ["t0,0", "t0,0"],
            "validation": [f"v{i},{i % 3}" for i in range(5)], "test": [f"s{i},{i % 3}" for i in range(5)]}
    for split, lines in rows.items():
        (tmp_path / f"{split}.csv").write_text("text,target\n" + "\n".join(lines) + "\n")
    cfg = RegressionDataConfig(**{f"{s}_path": str(tmp_path / f"{s}.csv") for s in rows})
    found = {f.code: f for f in check_targets(load_regression_splits(cfg, 0))}
    assert found["train-duplicates"].severity == "warning" and found["train-duplicates"].count == 2
    assert "leakage" not in found
