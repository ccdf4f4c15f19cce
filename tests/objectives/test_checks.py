"""Data checks: each one finds its planted problem and passes clean data; the study side stops
on errors unless allowed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import make_rows
from conftest import write_csv

from objectives.checks import Finding
from objectives.checks import check_class_balance
from objectives.checks import check_classes
from objectives.checks import check_columns
from objectives.checks import check_conflicting_labels
from objectives.checks import check_dataset
from objectives.checks import check_empty_texts
from objectives.checks import check_leakage
from objectives.checks import check_train_duplicates
from objectives.checks import check_truncation
from objectives.text_classification import TextClassificationConfig

CLEAN = {
    "train": ["a good film", "a bad film", "great cast", "dull plot"],
    "validation": ["fine acting", "weak script"],
    "test": ["lovely story", "silly scenes"],
}
CLEAN_LABELS = {"train": [1, 0, 1, 0], "validation": [1, 0], "test": [1, 0]}


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


# --- each pure check: planted problem found, clean data passes ---------------------------------


def test_columns() -> None:
    assert check_columns(["text", "label"], "text", "label", "f.csv") == []
    (f,) = check_columns(["review", "stars"], "text", "stars", "f.csv")
    assert (f.code, f.severity) == ("label-column", "error")
    assert f.message == (
        "f.csv has no column 'text' (columns: 'review', 'stars'); set text_column/label_column"
    )


def test_classes() -> None:
    assert check_classes(["a", "b", "a"], "f.csv") == []
    (f,) = check_classes(["a", "a"], "f.csv")
    assert (f.code, f.severity) == ("too-few-classes", "error")
    assert f.message == "f.csv has 1 distinct label(s) ('a'); classification needs at least 2"


def test_empty_texts_and_missing_labels() -> None:
    assert check_empty_texts(["a", "b"], ["x", "y"], "f.csv") == []
    found = check_empty_texts(["a", "", "   ", None, "b"], ["x", "y", "x", "y", None], "f.csv")
    assert codes(found) == ["empty-texts", "missing-labels"]
    assert all(f.severity == "warning" for f in found)
    assert found[0].count == 3 and found[0].examples == ("row 1", "row 2", "row 3")
    assert "3 rows of 5 with an empty or whitespace-only text (2 whitespace/empty" in found[0].message
    assert found[1].count == 1 and found[1].message.startswith("f.csv: 1 row of 5 without a label")


def test_train_duplicates() -> None:
    assert check_train_duplicates(CLEAN["train"]) == []
    (f,) = check_train_duplicates(["x", "y", "x", "x", "z", "y"])
    assert (f.code, f.severity, f.count) == ("train-duplicates", "warning", 3)
    assert f.examples == ("x", "y")
    assert f.message == (
        "3 training rows repeat another training text (2 distinct texts occur more than once), "
        "e.g. 'x', 'y'"
    )


def test_leakage_across_every_pair_of_splits() -> None:
    assert check_leakage(CLEAN) == []
    leaky = {
        "train": ["a", "b", "c"],
        "validation": ["b", "v"],
        "test": ["c", "v", "t"],
    }
    (f,) = check_leakage(leaky)
    assert (f.code, f.severity, f.count) == ("leakage", "error", 3)
    assert f.message.startswith(
        "1 of 2 validation texts are also in train; 1 of 3 test texts are also in train; "
        "1 of 3 test texts are also in validation, e.g. 'b', 'c', 'v'"
    )


def test_conflicting_labels_anywhere() -> None:
    assert check_conflicting_labels(CLEAN, CLEAN_LABELS, ["neg", "pos"]) == []
    texts = {"train": ["same", "other", "same"], "validation": ["x"], "test": ["other"]}
    labels = {"train": [0, 1, 0], "validation": [0], "test": [0]}
    (f,) = check_conflicting_labels(texts, labels, ["neg", "pos"])
    assert (f.code, f.severity, f.count, f.examples) == ("conflicting-labels", "error", 1, ("other",))
    assert f.message == "1 text (2 rows) carry different labels, e.g. 'other' (neg/pos): fix or drop them"


def test_class_imbalance_and_missing_classes() -> None:
    assert check_class_balance(CLEAN_LABELS, ["neg", "pos"]) == []
    labels = {"train": [0] * 9 + [1] * 3 + [2] * 3, "validation": [0, 1], "test": [0, 1, 2]}
    found = check_class_balance(labels, ["a", "b", "c"])
    assert codes(found) == ["class-imbalance", "missing-class"]
    assert found[0].message.startswith("training classes are imbalanced (3.0:1): a 9, b 3, c 3;")
    assert found[1].message == "the validation split has no example of 'c' (2 rows)"
    assert check_class_balance(labels, ["a", "b", "c"], max_ratio=3.5)[0].code == "missing-class"


def test_truncation() -> None:
    assert check_truncation([5, 10, 32], ["a", "b", "c"], 32) == []
    (f,) = check_truncation([5, 40, 33, 8], ["a", "long", "longer", "b"], 32)
    assert (f.code, f.severity, f.count, f.examples) == ("truncated", "warning", 2, ("long", "longer"))
    assert f.message.startswith("2 of 4 texts (50.0%) are longer than max_length 32 tokens")
    assert check_truncation([5, 40, 33, 8], ["a", "b", "c", "d"], 32, min_share=0.5) == []


def test_messages_are_one_line_with_short_quotes() -> None:
    long = "word " * 50 + "\nsecond line"
    (f,) = check_train_duplicates([long, long])
    assert "\n" not in f.message and "..." in f.message and len(f.message) < 200
    assert json.loads(json.dumps(f.to_dict()))["examples"] == [long]


# --- a config's data, end to end ---------------------------------------------------------------


def tc_config(model: str, **dataset: object) -> TextClassificationConfig:
    return TextClassificationConfig.from_dict(
        {"model": model, "dataset": dataset, "max_length": 32, "cache_dir": None}
    )


def test_clean_data_passes(tiny_model: str, data_csv: Path) -> None:
    assert check_dataset(tc_config(tiny_model, path=str(data_csv))) == []


def test_each_planted_problem_is_found(tiny_model: str, tmp_path: Path) -> None:
    rows = make_rows(60)
    rows[1]["text"] = "   "  # whitespace text
    rows[3]["text"] = rows[5]["text"] = rows[7]["text"] = "the same text"  # duplicates/leakage
    rows[9]["text"], rows[10]["text"] = "said twice", "said twice"  # labels neg, pos: conflict
    rows[11]["text"] = " ".join(["good"] * 40)  # longer than max_length 32
    path = write_csv(tmp_path / "planted.csv", rows)
    found = {f.code: f for f in check_dataset(tc_config(tiny_model, path=str(path)))}
    assert set(found) >= {"empty-texts", "conflicting-labels", "truncated"}
    # Where the seeded split puts the duplicates decides between leakage and train duplicates.
    assert "leakage" in found or "train-duplicates" in found
    assert found["conflicting-labels"].severity == "error"
    assert found["truncated"].count == 1


def test_leakage_between_pre_split_files(tiny_model: str, tmp_path: Path) -> None:
    rows = make_rows(90)
    train = write_csv(tmp_path / "train.csv", rows[:60])
    val = write_csv(tmp_path / "val.csv", rows[60:75])
    test = write_csv(tmp_path / "test.csv", rows[75:] + rows[:2])  # two training rows leak
    found = check_dataset(
        tc_config(tiny_model, train_path=str(train), validation_path=str(val), test_path=str(test))
    )
    assert codes(found) == ["leakage"]
    assert found[0].count == 2 and "2 of 17 test texts are also in train" in found[0].message


def test_missing_label_column_and_single_class_stop_early(tiny_model: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cols.csv", make_rows(20), columns=("text", "stars"))
    (f,) = check_dataset(tc_config(tiny_model, path=str(path)))
    assert (f.code, f.severity) == ("label-column", "error")
    one = write_csv(tmp_path / "one.csv", [{"text": f"t {i}", "label": "a"} for i in range(20)])
    (f,) = check_dataset(tc_config(tiny_model, path=str(one)))
    assert (f.code, f.severity) == ("too-few-classes", "error")


def test_imbalance_in_a_file(tiny_model: str, tmp_path: Path) -> None:
    rows = make_rows(80)
    rows = [r for i, r in enumerate(rows) if r["label"] == "pos" or i % 8 == 1]  # 40 pos, 5 neg
    found = check_dataset(tc_config(tiny_model, path=str(write_csv(tmp_path / "imb.csv", rows))))
    assert "class-imbalance" in codes(found)


# --- the study side: hpo check-data, and hpo run/create stop on errors --------------------------


@pytest.fixture
def leaky_config(tmp_path: Path, tiny_model: str) -> Path:
    rows = make_rows(90)
    train = write_csv(tmp_path / "train.csv", rows[:60])
    val = write_csv(tmp_path / "val.csv", rows[60:75] + rows[:1])
    test = write_csv(tmp_path / "test.csv", rows[75:])
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 1e-3, high: 1e-2, log: true}\n")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "leaky", "storage": f"sqlite:///{tmp_path / 'studies.db'}", "model": tiny_model,
        "dataset": {"train_path": str(train), "validation_path": str(val), "test_path": str(test)},
        "max_length": 32, "epochs": 1, "evals_per_epoch": 1, "sampler": "random",
        "pruner": "none", "search_space": str(space), "n_trials": 1, "cache_dir": None,
    }))
    return path


def test_check_data_command(leaky_config: Path, tmp_path: Path, data_csv: Path) -> None:
    from hpo.cli import cli

    result = CliRunner().invoke(cli, ["check-data", "--config", str(leaky_config)])
    assert result.exit_code == 2
    assert "leakage" in result.stdout and "1 of 16 validation texts are also in train" in result.stdout
    assert "fix the data or pass --allow" in result.stderr
    rows = json.loads(CliRunner().invoke(
        cli, ["check-data", "--config", str(leaky_config), "--format", "json"]).stdout)
    assert [r["code"] for r in rows] == ["leakage"] and rows[0]["severity"] == "error"

    raw = yaml.safe_load(leaky_config.read_text())
    raw["dataset"] = {"path": str(data_csv)}
    clean = tmp_path / "clean.yaml"
    clean.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["check-data", "--config", str(clean)])
    assert result.exit_code == 0 and result.stdout.strip() == "data checks: clean"


@pytest.mark.parametrize("command", ["run", "create"])
def test_errors_stop_a_study_unless_allowed(
    leaky_config: Path, tmp_path: Path, command: str, caplog: pytest.LogCaptureFixture
) -> None:
    import optuna

    from hpo.cli import cli

    result = CliRunner().invoke(cli, [command, "--config", str(leaky_config)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: data check failed: leakage: 1 of 16 ")
    assert lines[0].endswith("fix the data or pass --allow to run anyway "
                             "(all findings: hpo check-data --config FILE)")
    assert not (tmp_path / "studies.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{tmp_path / 'studies.db'}")

    with caplog.at_level(logging.WARNING, logger="hpo"):
        result = CliRunner().invoke(cli, [command, "--config", str(leaky_config), "--allow"])
    assert result.exit_code == 0, result.output
    assert "data check (allowed with --allow): leakage" in caplog.text


def test_warnings_are_logged_and_do_not_stop(
    tiny_model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hpo.checks import run_data_checks
    from hpo.config import config_from_dict

    rows = make_rows(60)
    rows[0]["text"] = " ".join(["good"] * 40)
    path = write_csv(tmp_path / "long.csv", rows)
    cfg = config_from_dict({
        "study": "s", "search_space": "search_spaces/default.yaml", "model": tiny_model,
        "dataset": {"path": str(path)}, "max_length": 32, "cache_dir": None,
    })
    with caplog.at_level(logging.WARNING, logger="hpo"):
        found = run_data_checks(cfg, allow=False)
    assert codes(found) == ["truncated"]
    assert "data check: truncated: 1 of 60 texts" in caplog.text


def test_other_objectives_have_no_data_checks(tmp_path: Path) -> None:
    from hpo.checks import run_data_checks
    from hpo.config import config_from_dict

    cfg = config_from_dict({"study": "t", "objective": "toy", "search_space": "search_spaces/toy.yaml"})
    assert run_data_checks(cfg) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ({"name": "rotten_tomatoes", "max_examples": 1200}, []),
        ({"name": "trec"}, ["class-imbalance"]),
        ({"name": "sms_spam"}, ["leakage", "train-duplicates", "class-imbalance", "truncated"]),
    ],
)
def test_builtin_datasets(dataset: dict[str, object], expected: list[str]) -> None:
    """The demo data is clean; SMS spam's duplicates leak across splits (an error)."""
    cfg = TextClassificationConfig.from_dict({"model": "minilm", "dataset": dataset})
    assert codes(check_dataset(cfg)) == expected
