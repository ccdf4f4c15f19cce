from __future__ import annotations

import bz2
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import objectives.data as data_module
from objectives.data import BUILTIN_DATASETS
from objectives.data import DataError
from objectives.data import DatasetConfig
from objectives.data import Splits
from objectives.data import data_fingerprint
from objectives.data import load_splits

# 16 pos, 14 neg, 10 neutral: string labels with uneven classes.
LABELS = ["pos"] * 16 + ["neg"] * 14 + ["neutral"] * 10
ROWS = [{"text": f"example number {i} is {lab}", "label": lab} for i, lab in enumerate(LABELS)]


@pytest.fixture(scope="session", autouse=True)
def _hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Keep the Arrow files that load_dataset writes out of the user's ~/.cache.
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
        yield


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    data_module._memo.clear()


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` in the format that ``path``'s extension names."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if ".csv" in name:
        lines = [",".join(rows[0])]
        lines += [",".join(_csv_cell(v) for v in row.values()) for row in rows]
        text = "\n".join(lines) + "\n"
    elif ".jsonl" in name:
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        text = json.dumps(rows)
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    elif name.endswith(".bz2"):
        path.write_bytes(bz2.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _csv_cell(value: Any) -> str:
    return "" if value is None else '"' + str(value).replace('"', '""') + '"'


def as_rows(splits: Splits) -> dict[str, list[tuple[str, int]]]:
    return {
        split: list(zip(ds["text"], ds["label"], strict=True))
        for split, ds in (
            ("train", splits.train),
            ("validation", splits.validation),
            ("test", splits.test),
        )
    }


@pytest.mark.parametrize(
    ("name", "n_labels", "n_rows"),
    [("rotten_tomatoes", 2, 4866), ("trec", 6, 5381), ("sms_spam", 2, 4837)],
)
def test_builtin_loads_with_stratified_splits(name: str, n_labels: int, n_rows: int) -> None:
    splits = load_splits(DatasetConfig(name=name), seed=0)

    assert len(splits.label_names) == n_labels
    sizes = splits.info["sizes"]
    assert sum(sizes.values()) == n_rows
    assert sizes["test"] == round(0.15 * n_rows)
    assert sizes["validation"] == round(0.15 * n_rows)
    for ds in (splits.train, splits.validation, splits.test):
        assert ds.column_names == ["text", "label"]
        assert ds.features["label"].names == splits.label_names
    counts = splits.info["class_counts"]
    for label in splits.label_names:
        share = counts["train"][label] / sizes["train"]
        assert counts["test"][label] / sizes["test"] == pytest.approx(share, abs=0.01)
        assert counts["validation"][label] / sizes["validation"] == pytest.approx(share, abs=0.01)
    json.dumps(splits.info)


def test_builtin_names_are_described() -> None:
    assert sorted(BUILTIN_DATASETS) == ["rotten_tomatoes", "sms_spam", "trec", "vader_sources"]
    assert all(isinstance(v, str) and v for v in BUILTIN_DATASETS.values())


def test_vader_sources_labels_each_snippet_by_its_file() -> None:
    """The 4-way source of the VADER ground-truth snippets, built from the package's files."""
    splits = load_splits(DatasetConfig(name="vader_sources", max_examples=400), seed=0)
    assert splits.label_names == ["amazon", "movie", "nyt", "tweet"]
    assert sum(splits.info["sizes"].values()) == 400
    assert set(splits.info["class_counts"]["train"]) == {"amazon", "movie", "nyt", "tweet"}


def test_builtin_subsample_is_stratified() -> None:
    splits = load_splits(DatasetConfig(name="sms_spam", max_examples=400), seed=0)

    assert splits.info["sizes"] == {"train": 280, "validation": 60, "test": 60}
    spam = sum(c["1"] for c in splits.info["class_counts"].values())
    assert spam == round(400 * 638 / 4837)


@pytest.mark.parametrize(
    "filename",
    ["data.csv", "data.csv.gz", "data.csv.bz2", "data.json", "data.jsonl", "data.parquet"],
)
def test_single_file_loads(tmp_path: Path, filename: str) -> None:
    path = write_rows(tmp_path / filename, ROWS)

    splits = load_splits(DatasetConfig(path=str(path)), seed=0)

    assert splits.label_names == ["neg", "neutral", "pos"]
    assert splits.info["sizes"] == {"train": 28, "validation": 6, "test": 6}
    assert splits.info["source"] == {"path": str(path)}
    rows = as_rows(splits)
    loaded = sorted((t, splits.label_names[y]) for part in rows.values() for t, y in part)
    assert loaded == sorted((r["text"], r["label"]) for r in ROWS)
    assert splits.fingerprint == data_fingerprint(DatasetConfig(path=str(path)), 0)


def test_custom_columns_and_int_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [{"id": i, "sentence": f"row {i}", "y": i % 11} for i in range(44)]
    path = write_rows(tmp_path / "data.csv", rows)

    cfg = DatasetConfig(path=str(path), text_column="sentence", label_column="y")
    splits = load_splits(cfg, seed=0)

    assert splits.label_names == [str(i) for i in range(11)]
    assert splits.train.column_names == ["text", "label"]
    for text, label in zip(splits.train["text"], splits.train["label"], strict=True):
        assert int(text.split()[1]) % 11 == int(splits.label_names[label])


def test_rows_without_text_or_label_are_dropped(tmp_path: Path) -> None:
    rows = ROWS + [
        {"text": "", "label": "pos"},
        {"text": "   ", "label": "neg"},
        {"text": None, "label": "pos"},
        {"text": "no label", "label": None},
    ]
    path = write_rows(tmp_path / "data.jsonl", rows)

    splits = load_splits(DatasetConfig(path=str(path)), seed=0)

    assert sum(splits.info["sizes"].values()) == len(ROWS)
    assert splits.info["n_dropped_rows"] == 4


def test_pre_split_files(tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", ROWS[:30])
    validation = write_rows(tmp_path / "validation.jsonl", ROWS[30:35])
    # "mixed" is unseen in train: it still gets an index.
    test = write_rows(
        tmp_path / "test.parquet", [*ROWS[35:], {"text": "odd one", "label": "mixed"}]
    )
    cfg = DatasetConfig(train_path=str(train), validation_path=str(validation), test_path=str(test))

    splits = load_splits(cfg, seed=0)

    assert splits.label_names == ["mixed", "neg", "neutral", "pos"]
    assert splits.info["sizes"] == {"train": 30, "validation": 5, "test": 6}
    assert splits.info["split_method"] == "pre-split"
    assert splits.train["text"] == [r["text"] for r in ROWS[:30]]
    assert splits.test["label"][-1] == 0
    assert "mixed" not in splits.info["class_counts"]["train"]


def test_same_seed_gives_identical_splits(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "data.csv", ROWS)
    cfg = DatasetConfig(path=str(path))

    first = load_splits(cfg, seed=3)
    data_module._memo.clear()
    second = load_splits(DatasetConfig(path=str(path)), seed=3)

    assert first is not second
    assert as_rows(first) == as_rows(second)
    assert first.info == second.info


def test_memo_returns_independent_info(tmp_path: Path) -> None:
    cfg = DatasetConfig(path=str(write_rows(tmp_path / "data.csv", ROWS)))

    load_splits(cfg, seed=0).info["sizes"]["train"] = -1

    assert load_splits(cfg, seed=0).info["sizes"]["train"] == 28


def test_different_seeds_give_different_splits(tmp_path: Path) -> None:
    cfg = DatasetConfig(path=str(write_rows(tmp_path / "data.csv", ROWS)))

    first = as_rows(load_splits(cfg, seed=0))
    second = as_rows(load_splits(cfg, seed=1))

    assert set(first["test"]) != set(second["test"])


def test_stratification_keeps_class_proportions(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "a" if i % 5 else "b"} for i in range(300)]
    path = write_rows(tmp_path / "data.csv", rows)

    for cfg in (DatasetConfig(path=str(path)), DatasetConfig(path=str(path), max_examples=100)):
        info = load_splits(cfg, seed=7).info
        for split, counts in info["class_counts"].items():
            assert counts["b"] / info["sizes"][split] == pytest.approx(0.2, abs=0.02)


def test_class_too_small_to_stratify_does_not_crash(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "data.csv", [*ROWS, {"text": "only one", "label": "rare"}])

    splits = load_splits(DatasetConfig(path=str(path), max_examples=20), seed=0)

    assert "rare" in splits.label_names
    assert sum(splits.info["sizes"].values()) == 20


def test_fingerprint_ignores_file_location_and_name(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "data.csv", ROWS)
    other = tmp_path / "elsewhere" / "renamed.csv"
    other.parent.mkdir()
    shutil.copyfile(path, other)

    original = load_splits(DatasetConfig(path=str(path)), seed=0)
    copied = load_splits(DatasetConfig(path=str(other)), seed=0)

    assert copied.fingerprint == original.fingerprint
    assert as_rows(copied) == as_rows(original)


def test_fingerprint_changes_with_content_and_settings(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "data.csv", ROWS)
    base = data_fingerprint(DatasetConfig(path=str(path)), seed=0)

    assert data_fingerprint(DatasetConfig(path=str(path)), seed=0) == base
    assert data_fingerprint(DatasetConfig(path=str(path)), seed=1) != base
    assert data_fingerprint(DatasetConfig(path=str(path), max_examples=20), seed=0) != base
    assert data_fingerprint(DatasetConfig(path=str(path), val_size=0.2), seed=0) != base
    assert data_fingerprint(DatasetConfig(path=str(path), text_column="t"), seed=0) != base
    write_rows(path, [*ROWS, {"text": "one more", "label": "pos"}])
    assert data_fingerprint(DatasetConfig(path=str(path)), seed=0) != base


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = DatasetConfig(path=tmp_path / "data.csv", max_examples=100, val_size=0.1)  # type: ignore[arg-type]

    as_dict = json.loads(json.dumps(cfg.to_dict()))

    assert as_dict["path"] == str(tmp_path / "data.csv")
    assert DatasetConfig.from_dict(as_dict) == cfg


def test_import_does_not_load_datasets() -> None:
    # Load the file alone: the package __init__ imports other objectives, which is not under test.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('data', {data_module.__file__!r})\n"
        "module = sys.modules['data'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted({'datasets', 'numpy', 'torch', 'hpo', 'click'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "imdb"},
            r"^unknown builtin dataset 'imdb' \(valid: rotten_tomatoes, sms_spam, trec, vader_sources\)$",
        ),
        ({}, r"^set exactly one dataset source .* but got: none$"),
        (
            {"name": "trec", "path": "a.csv"},
            r"^set exactly one dataset source .* but got: name, path$",
        ),
        (
            {"train_path": "a.csv", "validation_path": "b.csv"},
            r"^pre-split data needs train_path, validation_path and test_path; missing: test_path$",
        ),
        (
            {"name": "trec", "val_size": 0.0},
            r"^`0 < val_size < 1` must hold, but got val_size=0.0$",
        ),
        ({"name": "trec", "test_size": 1}, r"^`0 < test_size < 1` must hold, but got test_size=1$"),
        (
            {"name": "trec", "val_size": "0.1"},
            r"^`0 < val_size < 1` must hold, but got val_size='0.1'$",
        ),
        (
            {"name": "trec", "val_size": 0.5, "test_size": 0.5},
            r"^`val_size \+ test_size < 1` must hold, but got val_size=0.5, test_size=0.5$",
        ),
        (
            {"name": "trec", "max_examples": 5},
            r"^`max_examples >= 10` must hold, but got max_examples=5$",
        ),
        (
            {
                "train_path": "a.csv",
                "validation_path": "b.csv",
                "test_path": "c.csv",
                "max_examples": 50,
            },
            r"^max_examples applies to name/path sources only",
        ),
        ({"path": "data.txt"}, r"^unsupported file type for path: 'data.txt' \(valid: \.csv, "),
        (
            {"path": "data.csv", "label_column": "text"},
            r"^text_column and label_column must differ",
        ),
    ],
)
def test_invalid_config_raises(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        DatasetConfig(**kwargs)


def test_unknown_key_raises() -> None:
    with pytest.raises(
        DataError, match=r"^unknown dataset key 'x' \(valid: name, path, train_path, "
    ):
        DatasetConfig.from_dict({"name": "trec", "x": 1})


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "data.csv", [{"text": r["text"], "sentiment": r["label"]} for r in ROWS]
    )

    with pytest.raises(
        DataError,
        match=rf"^dataset file '{re.escape(str(path))}' has no column 'label' \(available: 'text', 'sentiment'\)",
    ):
        load_splits(DatasetConfig(path=str(path)), seed=0)


def test_single_label_raises(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "data.csv", [{"text": f"t{i}", "label": "pos"} for i in range(20)])

    with pytest.raises(DataError, match=r"has 1 distinct label\(s\) in column 'label' \('pos'\)"):
        load_splits(DatasetConfig(path=str(path)), seed=0)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"^dataset file '.*nope\.csv' \(path\) does not exist or is not a file$"
    ):
        load_splits(DatasetConfig(path=str(tmp_path / "nope.csv")), seed=0)


def test_unreadable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\n\"unclosed,1\nr\xe9sum\xe9,2\n")

    # The reader's own cause, not datasets' "An error occurred while generating the dataset".
    with pytest.raises(
        DataError, match=rf"^cannot read dataset file '{re.escape(str(path))}' as csv: Error "
        "tokenizing data. C error: EOF inside string starting at row 1$"
    ):
        load_splits(DatasetConfig(path=str(path)), seed=0)


def _fifo(path: Path) -> None:
    import os

    os.mkfifo(path)


GOOD_RECORD = b'{"text": "a", "label": 1}\n'
BAD_FILES: dict[str, tuple[str, Any, str]] = {
    # case: (file name, its bytes or a function that makes it, the message after "PATH")
    "directory": ("data.csv", Path.mkdir, " is a directory; give a file (.csv, .json, .jsonl, "),
    "fifo": ("data.csv", _fifo, " is a FIFO (named pipe), not a regular file; give a file"),
    "empty csv": ("data.csv", b"", " is an empty file"),
    "empty jsonl": ("data.jsonl", b"", " is an empty file"),
    "empty csv.gz": ("data.csv.gz", b"", " is an empty file"),
    "blank jsonl": ("data.jsonl", b"\n \n", " has no records (only blank lines)"),
    "bad jsonl line": ("data.jsonl", GOOD_RECORD + b'{"text": "b", label: 2}\n',
                       ": line 2: not valid JSON (Expecting property name enclosed in double "
                       "quotes at column 15)"),
    "jsonl list": ("data.jsonl", GOOD_RECORD + b'["b", 2]\n',
                   ": line 2: expected one JSON object per line, got list"),
    "bad json": ("data.json", b'[{"text": "a", "label": 1},\n {"text": "b" "label": 2}]\n',
                 ": not valid JSON (Expecting ',' delimiter at line 2 column 15)"),
    "json lines in .json": ("data.json", GOOD_RECORD + b"{oops}\n",
                            ": line 2: not valid JSON (Expecting property name enclosed in "
                            "double quotes at column 2)"),
    "jsonl not utf-8": ("data.jsonl", GOOD_RECORD + b'{"text": "r\xe9sum\xe9", "label": 2}\n',
                        ": line 2: not UTF-8 text (byte 0xe9)"),
    "bad jsonl.gz": ("data.jsonl.gz", gzip.compress(b"nope\n"),
                     ": line 1: not valid JSON (Expecting value at column 1)"),
    "truncated gz": ("data.jsonl.gz", gzip.compress(GOOD_RECORD * 50)[:30],
                     " cannot be decompressed (Compressed file ended before the end-of-stream "),
    "not gzip": ("data.csv.gz", b"text,label\na,1\n", " is not a gzip file (wrong signature)"),
    "not bz2": ("data.csv.bz2", gzip.compress(b"text,label\n"), " is not a bzip2 file (wrong "),
    "not parquet": ("data.parquet", b"text,label\na,1\n", " is not a Parquet file (wrong "),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_data_file_is_named_with_what_is_wrong(tmp_path: Path, case: str) -> None:
    """Checked when the config is built (before any reader): a directory or FIFO used to be
    'Unable to find', an empty or malformed JSON Lines file gave no line and no cause. A FIFO
    is never opened (that would wait for a writer)."""
    name, content, message = BAD_FILES[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
    for key in ("path", "train_path"):
        kwargs: dict[str, Any] = {key: str(path)}
        if key == "train_path":
            kwargs |= {"validation_path": str(path), "test_path": str(path)}
        with pytest.raises(DataError) as info:
            DatasetConfig(**kwargs)
        assert str(info.value).startswith(f"dataset.{key}: {path}{message}"), str(info.value)


def test_too_few_rows_raises(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "data.csv", ROWS[:1] + ROWS[-1:])

    with pytest.raises(
        DataError, match=r"has 2 usable rows: too few for train, validation and test$"
    ):
        load_splits(DatasetConfig(path=str(path)), seed=0)


def test_negative_seed_raises() -> None:
    with pytest.raises(DataError, match=r"^seed must be a non-negative int, but got -1$"):
        data_fingerprint(DatasetConfig(name="trec"), seed=-1)


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_every_config_field_has_help() -> None:
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(DatasetConfig))


def test_splits_counts_match_datasets(tmp_path: Path) -> None:
    splits = load_splits(DatasetConfig(path=str(write_rows(tmp_path / "d.csv", ROWS))), seed=0)

    for split in ("train", "validation", "test"):
        ds = getattr(splits, split)
        counted = Counter(splits.label_names[y] for y in ds["label"])
        assert dict(counted) == splits.info["class_counts"][split]


@pytest.mark.parametrize("filename", ["data.csv", "data.jsonl"])
def test_fractional_labels_are_refused_with_a_hint(tmp_path: Path, filename: str) -> None:
    """A regression target (0.37, 1.52, ...) used to become one class per value: 120 classes
    trained to accuracy 0."""
    rows = [{"text": f"row {i}", "label": round(0.37 + i * 0.13, 2)} for i in range(40)]
    path = write_rows(tmp_path / filename, rows)
    message = (f"^dataset file '{re.escape(str(path))}': column 'label' holds numbers that are "
               r"not whole \(e.g. 0.37\), not class labels; classification needs strings or "
               r"integers \(for a numeric target, use a regression objective\)$")
    with pytest.raises(DataError, match=message):
        load_splits(DatasetConfig(path=str(path)), seed=0)
    split = {k: str(write_rows(tmp_path / f"{k}.csv", rows)) for k in
             ("train_path", "validation_path", "test_path")}
    with pytest.raises(DataError, match=r"\(train_path\): column 'label' holds numbers"):
        load_splits(DatasetConfig(**split), seed=0)


def test_whole_float_labels_are_classes(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", "label": float(i % 3) + 1.0} for i in range(30)]
    splits = load_splits(DatasetConfig(path=str(write_rows(tmp_path / "d.jsonl", rows))), seed=0)
    assert splits.label_names == ["1", "2", "3"]
