"""Bad input, systematically: every kind of file and value a careless user may hand to hpo.

Each case runs one ``hpo`` command in-process (CliRunner) next to an SQLite storage that holds
a study already, and asserts the standard of issue 15:

- the exit code: 2 for bad input, 1 for a runtime failure;
- exactly one line on stderr, ``Error: ...``, that names the file, key or value (the case's
  ``says``), and no traceback;
- the storage unchanged, row for row (``sqlite3`` iterdump: a WAL checkpoint rewrites bytes);
- no password in any output.

Cases whose fault lies in a file this suite's author may not change are marked
``xfail(strict=True)`` with the reason; they pass the day the fault is fixed (and strict then
says so).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import sqlite3
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import make_rows

from hpo.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Zq9sEcret"


class World:
    """A directory with an SQLite storage that holds study ``existing``, and file makers."""

    def __init__(self, tmp_path: Path, tiny_model: str) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "studies.db"
        self.url = f"sqlite:///{self.db}"
        self.tiny_model = tiny_model
        self.good_csv = self.file("reviews.csv", _csv(make_rows(60)))

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        return path

    def config(self, name: str = "bad.yaml", **keys: Any) -> Path:
        """A toy config (fast: no model) with ``keys`` changed; a value of ``DROP`` removes it."""
        base: dict[str, Any] = {
            "study": "other", "storage": self.url, "objective": "toy", "sampler": "random",
            "pruner": "none", "n_trials": 1, "search_space": str(ROOT / "search_spaces" / "toy.yaml"),
        }
        return self._write(name, base, keys)

    def tc_config(self, name: str = "tc.yaml", **keys: Any) -> Path:
        """A text_classification config on the tiny model and a good CSV, ``keys`` changed."""
        space = self.file("tc_space.yaml", "learning_rate: {type: float, low: 1e-4, high: 1e-2}\n")
        base: dict[str, Any] = {
            "study": "other", "storage": self.url, "model": self.tiny_model,
            "dataset": {"path": str(self.good_csv)}, "max_length": 16, "epochs": 1,
            "search_space": str(space), "n_trials": 1, "cache_dir": None,
        }
        return self._write(name, base, keys)

    def data(self, name: str, content: bytes | str, **dataset: Any) -> list[str]:
        """``hpo run`` of a text_classification config whose data file is ``content``."""
        path = self.file(name, content)
        return ["run", "--config", str(self.tc_config(dataset={"path": str(path), **dataset}))]

    def space(self, text: str) -> list[str]:
        """``hpo run`` of the toy config with the search space ``text``."""
        path = self.file("space.yaml", text)
        return ["run", "--config", str(self.config(search_space=str(path)))]

    def _write(self, name: str, base: dict[str, Any], keys: dict[str, Any]) -> Path:
        for key, value in keys.items():
            if value is DROP:
                base.pop(key, None)
            else:
                base[key] = value
        return self.file(name, yaml.safe_dump(base, sort_keys=False))


DROP = object()


def _csv(rows: list[dict[str, str]], columns: tuple[str, ...] = ("text", "label")) -> str:
    lines = [",".join(columns)] + [",".join(f'"{r[c]}"' for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


ROWS = make_rows(60)
NO_LABEL = [{"text": r["text"], "sentiment": r["label"]} for r in ROWS]


@dataclass
class Case:
    """One bad input: the command (built in a World), its exit code and what its line says."""

    command: Callable[[World], list[str]]
    code: int
    says: str | Callable[[World], str]
    env: dict[str, str] = field(default_factory=dict)
    xfail: str | None = None  # the reason, when the fault is in a file this suite may not touch


def _broken_config(w: World, *args: str) -> list[str]:
    """Set study 'existing''s hpo_config to a string (as another tool might), then ``args``."""
    import optuna

    optuna.load_study(study_name="existing", storage=w.url).set_user_attr("hpo_config", "oops")
    return [*args, "--storage", w.url]


def _run(*args: str) -> Callable[[World], list[str]]:
    return lambda w: [a.replace("URL", w.url) for a in args]


CASES: dict[str, Case] = {
    # --- config files: each top-level key, a wrong type or value --------------------------
    "config: a list, not a mapping": Case(
        lambda w: ["run", "--config", str(w.file("l.yaml", "- study\n- x\n"))], 2,
        "expected a mapping of keys to values, got list"),
    "config: a scalar": Case(
        lambda w: ["run", "--config", str(w.file("s.yaml", "just words\n"))], 2,
        "expected a mapping of keys to values, got str"),
    "config: only a comment": Case(
        lambda w: ["run", "--config", str(w.file("c.yaml", "# nothing yet\n"))], 2,
        "the config is empty"),
    "config: duplicate key": Case(
        lambda w: ["run", "--config", str(w.file("d.yaml", w.config().read_text() + "n_trials: 5\n"))],
        2, "line 8: duplicate key 'n_trials'"),
    "config: tab indentation": Case(
        lambda w: ["run", "--config", str(w.file("t.yaml", "study: s\nsampler:\n\tname: tpe\n"))], 2,
        "not valid YAML at line 3"),
    "study: a number": Case(lambda w: ["run", "--config", str(w.config(study=12))], 2,
                            "study: expected a study name, got 12"),
    "study: blank": Case(lambda w: ["run", "--config", str(w.config(study="  "))], 2,
                         "study: expected a study name, got '  '"),
    "storage: a number": Case(lambda w: ["run", "--config", str(w.config(storage=5))], 2,
                              "unsupported storage URL '5'"),
    "objective: a list": Case(lambda w: ["run", "--config", str(w.config(objective=["toy"]))], 2,
                              "objective: unknown objective"),
    "metric: unknown": Case(lambda w: ["run", "--config", str(w.config(metric="accuracy"))], 2,
                            "metric: unknown metric 'accuracy' for objective 'toy' (valid: value)"),
    "direction: unknown": Case(lambda w: ["run", "--config", str(w.config(direction="down"))], 2,
                               "direction: expected minimize or maximize, got 'down'"),
    "direction: against the metric": Case(
        lambda w: ["run", "--config", str(w.config(direction="maximize"))], 2,
        "direction: value should be minimized, not maximized"),
    "sampler: a number": Case(lambda w: ["run", "--config", str(w.config(sampler=3))], 2,
                              "sampler: expected {name: ...}, got 3"),
    "sampler: option of a wrong type": Case(
        lambda w: ["run", "--config", str(w.config(sampler={"name": "tpe", "n_startup_trials": "x"}))],
        2, "sampler 'tpe': n_startup_trials: expected int like its default 10, got 'x'"),
    "pruner: a list": Case(lambda w: ["run", "--config", str(w.config(pruner=["median"]))], 2,
                           "pruner: expected {name: ...}, got ['median']"),
    "pruner: percentile out of range": Case(
        lambda w: ["run", "--config", str(w.config(pruner={"name": "percentile", "percentile": 150}))],
        2, "pruner 'percentile'"),
    "search_space: a number": Case(lambda w: ["run", "--config", str(w.config(search_space=7))], 2,
                                   "search_space: expected the path of a YAML file, got 7"),
    "search_space: missing file": Case(
        lambda w: ["run", "--config", str(w.config(search_space="nowhere.yaml"))], 2,
        "nowhere.yaml: cannot read the search space (No such file or directory)"),
    "n_trials: zero": Case(lambda w: ["run", "--config", str(w.config(n_trials=0))], 2,
                           "n_trials: expected a positive integer, got 0"),
    "n_trials: a float": Case(lambda w: ["run", "--config", str(w.config(n_trials=2.5))], 2,
                              "n_trials: expected a positive integer, got 2.5"),
    "n_trials: a bool": Case(lambda w: ["run", "--config", str(w.config(n_trials=True))], 2,
                             "n_trials: expected a positive integer, got True"),
    "n_trials: words": Case(lambda w: ["run", "--config", str(w.config(n_trials="ten"))], 2,
                            "n_trials: expected a positive integer, got 'ten'"),
    "timeout: negative": Case(lambda w: ["run", "--config", str(w.config(timeout=-5))], 2,
                              "timeout: expected seconds > 0 or null, got -5"),
    "timeout: a duration string": Case(lambda w: ["run", "--config", str(w.config(timeout="1h"))], 2,
                                       "timeout: expected seconds > 0 or null, got '1h'"),
    "seed: a float": Case(lambda w: ["run", "--config", str(w.config(seed=1.5))], 2,
                          "seed: expected an integer, got 1.5"),
    "max_length: beyond the model's positions": Case(
        lambda w: ["run", "--config", str(w.tc_config(max_length=100))], 2,
        "max_length: 100 is beyond the 64 positions of model"),
    "cv_folds: on an objective without folds": Case(
        lambda w: ["run", "--config", str(w.tc_config(objective="text_regression", cv_folds=3))], 2,
        "cv_folds: this objective has one validation split"),
    "heartbeat_interval: negative": Case(
        lambda w: ["run", "--config", str(w.config(heartbeat_interval=-1))], 2,
        "heartbeat_interval: expected an integer >= 0, got -1"),
    "grace_period: not above the heartbeat": Case(
        lambda w: ["run", "--config", str(w.config(heartbeat_interval=10, grace_period=10))], 2,
        "grace_period: must exceed heartbeat_interval (10), got 10"),
    "max_retry: words": Case(lambda w: ["run", "--config", str(w.config(max_retry="never"))], 2,
                             "max_retry: expected an integer >= 0, got 'never'"),
    "unknown key": Case(lambda w: ["run", "--config", str(w.config(n_trails=3))], 2,
                        "unknown key 'n_trails'"),
    "toy key: wrong type": Case(lambda w: ["run", "--config", str(w.config(n_steps="five"))], 2,
                                "n_steps must be an integer, got 'five'"),
    "model: a list": Case(lambda w: ["run", "--config", str(w.tc_config(model=["a", "b"]))], 2,
                          "model must be a name, directory or hub id, got ['a', 'b']"),
    "model: an empty directory": Case(
        lambda w: ["run", "--config", str(w.tc_config(model=str(w.file("m/.keep", "").parent)))],
        2, "model '"),
    "epochs: zero": Case(lambda w: ["run", "--config", str(w.tc_config(epochs=0))], 2,
                         "epochs must be an integer >= 1, got 0"),
    "max_length: words": Case(lambda w: ["run", "--config", str(w.tc_config(max_length="long"))], 2,
                              "max_length must be an integer >= 1, got 'long'"),
    "precision: unknown": Case(lambda w: ["run", "--config", str(w.tc_config(precision="fp8"))], 2,
                               "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    "max_grad_norm: words": Case(lambda w: ["run", "--config", str(w.tc_config(max_grad_norm="x"))],
                                 2, "max_grad_norm must be a number >= 0, got 'x'"),
    "dataset: a list": Case(lambda w: ["run", "--config", str(w.tc_config(dataset=["a.csv"]))], 2,
                            "dataset must be a mapping or a built-in name, got ['a.csv']"),
    "dataset: two sources": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={"name": "trec", "path": "x.csv"}))],
        2, "set exactly one dataset source"),
    "dataset: unsupported extension": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={"path": "data.xlsx"}))], 2,
        "unsupported file type for path: 'data.xlsx'"),
    "dataset: val_size 1.5": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={"path": str(w.good_csv),
                                                                "val_size": 1.5}))], 2,
        "`0 < val_size < 1` must hold, but got val_size=1.5"),
    "dataset: max_examples 5": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={"path": str(w.good_csv),
                                                                "max_examples": 5}))], 2,
        "`max_examples >= 10` must hold"),
    "dataset: text and label the same column": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={
            "path": str(w.good_csv), "text_column": "text", "label_column": "text"}))], 2,
        "text_column and label_column must differ, but both are 'text'"),
    "dataset: max_examples 'all'": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={"path": str(w.good_csv),
                                                                "max_examples": "all"}))], 2,
        "max_examples must be an int or None, but got 'all'"),
    # --- search spaces ------------------------------------------------------------------------
    "space: empty file": Case(lambda w: w.space(""), 2,
                              "expected a mapping of parameter name to entry, got NoneType"),
    "space: duplicate parameter": Case(
        lambda w: w.space("x: {type: float, low: 0, high: 1}\nx: {type: float, low: 0, high: 9}\n"),
        2, "line 2: duplicate key 'x'"),
    "space: name with a dash": Case(lambda w: w.space("learning-rate: {type: float, low: 0, high: 1}\n"),
                                    2, "'learning-rate': parameter names must be identifiers"),
    "space: type missing": Case(lambda w: w.space("x: {low: 0, high: 1}\n"), 2,
                                "x.type: expected one of float, int, categorical, got None"),
    "space: low is a list": Case(lambda w: w.space("x: {type: float, low: [0], high: 1}\n"), 2,
                                 "x.low: expected a number, got [0]"),
    "space: infinite high": Case(lambda w: w.space("x: {type: float, low: 0, high: .inf}\n"), 2,
                                 "x.high: expected a finite number, got inf"),
    "space: log is a word": Case(lambda w: w.space("x: {type: float, low: 1, high: 2, log: yes please}\n"),
                                 2, "x.log: expected true or false, got 'yes please'"),
    "space: step zero": Case(lambda w: w.space("x: {type: int, low: 0, high: 4, step: 0}\n"), 2,
                             "x.step: expected a number > 0, got 0"),
    "space: step with log": Case(lambda w: w.space("x: {type: float, low: 1, high: 2, step: 0.5, log: true}\n"),
                                 2, "x:"),
    "space: choices a mapping": Case(lambda w: w.space("c: {type: categorical, choices: {a: 1}}\n"), 2,
                                     "c.choices: expected a non-empty list"),
    "space: condition on itself": Case(
        lambda w: w.space("x: {type: int, low: 0, high: 2, condition: {x: 1}}\n"), 2,
        "x.condition: a parameter cannot depend on itself"),
    "space: 1e-5 and 0.00001 duplicate": Case(
        lambda w: w.space("c: {type: categorical, choices: [1e-5, 0.00001]}\n"), 2,
        "c.choices: duplicate choices"),
    # --- data files of every format -----------------------------------------------------------
    "csv: no label column": Case(lambda w: w.data("d.csv", _csv(NO_LABEL, ("text", "sentiment"))), 2,
                                 "label"),
    "jsonl: no text column": Case(lambda w: w.data("d.jsonl", _jsonl([{"body": r["text"], "label": r["label"]}
                                                                       for r in ROWS])), 2, "text"),
    "json: no label column": Case(lambda w: w.data("d.json", json.dumps(NO_LABEL)), 2, "label"),
    "parquet: no label column": Case(lambda w: w.data("d.parquet", _parquet(NO_LABEL)), 2, "label"),
    "csv.gz: no label column": Case(
        lambda w: w.data("d.csv.gz", gzip.compress(_csv(NO_LABEL, ("text", "sentiment")).encode())), 2,
        "label"),
    "jsonl.bz2: no label column": Case(
        lambda w: w.data("d.jsonl.bz2", bz2.compress(_jsonl(NO_LABEL).encode())), 2, "label"),
    "csv: header only": Case(lambda w: w.data("d.csv", "text,label\n"), 2, "d.csv"),
    "csv: empty": Case(lambda w: w.data("d.csv", b""), 2, "d.csv is an empty file"),
    "parquet: empty": Case(lambda w: w.data("d.parquet", b""), 2, "d.parquet is an empty file"),
    "json: empty list": Case(lambda w: w.data("d.json", "[]"), 2, "d.json"),
    "csv: Latin-1": Case(lambda w: w.data("d.csv", _csv(ROWS).replace("movie", "pel\xedcula").encode("latin-1")),
                         2, "d.csv"),
    "csv: ragged rows": Case(lambda w: w.data("d.csv", "text,label\n" + "a,b,c,d\n" * 30), 2, "d.csv"),
    "csv: unclosed quote": Case(lambda w: w.data("d.csv", _csv(ROWS) + '"oops,1\n'), 2, "d.csv"),
    "json: a mapping of columns": Case(
        lambda w: w.data("d.json", json.dumps({"text": [r["text"] for r in ROWS]})), 2, "d.json"),
    "jsonl: a bare string per line": Case(lambda w: w.data("d.jsonl", '"a"\n"b"\n'), 2,
                                          "line 1: expected one JSON object per line, got str"),
    "parquet: truncated": Case(lambda w: w.data("d.parquet", _parquet(ROWS)[:200] + b"PAR1"), 2,
                               "d.parquet"),
    "csv.bz2: truncated": Case(lambda w: w.data("d.csv.bz2", bz2.compress(_csv(ROWS).encode())[:60]), 2,
                               "d.csv.bz2"),
    "csv: two rows": Case(lambda w: w.data("d.csv", _csv(ROWS[:2])), 2, "d.csv"),
    "csv: every label blank": Case(
        lambda w: w.data("d.csv", _csv([{"text": r["text"], "label": " "} for r in ROWS])), 2, "d.csv"),
    "csv: text column holds numbers": Case(
        lambda w: w.data("d.csv", _csv([{"text": str(i), "label": "x"} for i in range(30)])), 2, "d.csv"),
    "pre-split: a missing test file": Case(
        lambda w: ["run", "--config", str(w.tc_config(dataset={
            "train_path": str(w.good_csv), "validation_path": str(w.good_csv),
            "test_path": str(w.dir / "test.csv")}))], 2, "test.csv"),
    # --- storage URLs -------------------------------------------------------------------------
    "url: unknown dialect": Case(_run("studies", "--storage", f"oracle://u:{SECRET}@h/db"), 2,
                                 "unsupported storage URL 'oracle://u:***@h/db'"),
    "url: http": Case(_run("studies", "--storage", "https://example.org/studies.db"), 2,
                      "unsupported storage URL"),
    "url: a bare file name": Case(_run("studies", "--storage", "studies.db"), 2,
                                  "unsupported storage URL 'studies.db'"),
    "url: sqlite with two slashes": Case(_run("studies", "--storage", "sqlite://studies.db"), 2,
                                         "sqlite://studies.db"),
    "url: in-memory sqlite for a run": Case(
        lambda w: ["run", "--config", str(w.config(storage="sqlite://"))], 2, "in-memory"),
    "url: sqlite :memory: for a run": Case(
        lambda w: ["run", "--config", str(w.config(storage="sqlite:///:memory:"))], 2, "in-memory"),
    "url: unreachable host with a password": Case(
        _run("studies", "--storage", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/hpo"), 2,
        "cannot open storage 'postgresql+psycopg://bob:***@127.0.0.1:1/hpo'"),
    "url: unreachable, password as a query parameter": Case(
        _run("trials", "--study", "x", "--storage",
             f"mysql+pymysql://root@127.0.0.1:1/test?password={SECRET}"), 2, "?password=***"),
    "url: port out of range": Case(
        _run("studies", "--storage", f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:99999/hpo"), 2,
        "cannot open storage"),
    "url: HPO_STORAGE unreachable": Case(
        _run("trials", "--study", "x"), 2, "cannot open storage 'postgresql+psycopg://bob:***@",
        env={"HPO_STORAGE": f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:1/hpo"}),
    "url: a directory as the SQLite file": Case(lambda w: ["studies", "--storage", f"sqlite:///{w.dir}"],
                                                2, "is a directory, not a SQLite database"),
    "url: a data file as the SQLite file": Case(
        lambda w: ["studies", "--storage", f"sqlite:///{w.good_csv}"], 2,
        "reviews.csv is not an SQLite database"),
    "url: journal on the SQLite file": Case(lambda w: ["studies", "--storage", f"journal:///{w.db}"], 2,
                                            "is not an optuna journal file"),
    "url: journal in a missing directory": Case(
        lambda w: ["run", "--config", str(w.config(storage=f"journal:///{w.dir}/nodir/x.log"))], 2,
        "/nodir' does not exist"),
    # --- a study another tool changed ---------------------------------------------------------
    "stored hpo_config a string: worker": Case(
        lambda w: _broken_config(w, "worker", "--study", "existing"), 2,
        "study 'existing': its stored hpo_config is a str, not a mapping"),
    # --- flags -------------------------------------------------------------------------------
    "--study: unknown": Case(_run("best", "--storage", "URL", "--study", "nope"), 2,
                             "no study named 'nope'"),
    "--warm-start-from: unknown": Case(
        lambda w: ["run", "--config", str(w.config()), "--warm-start-from", "nope"], 2,
        "no study named 'nope'"),
    "--n-trials 0": Case(lambda w: ["run", "--config", str(w.config()), "--n-trials", "0"], 2,
                         "--n-trials"),
    "--sampler unknown": Case(lambda w: ["run", "--config", str(w.config()), "--sampler", "bayes"], 2,
                              "unknown sampler 'bayes'"),
}


def _digest(db: Path) -> str:
    """Every row of every table: what the storage holds, not its bytes."""
    conn = sqlite3.connect(db)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    """A storage holding study 'existing', made once; each case gets a copy."""
    w = World(tmp_path_factory.mktemp("template"), tiny_model)
    created = CliRunner().invoke(cli, ["create", "--config", str(w.config("existing.yaml",
                                                                            study="existing"))])
    assert created.exit_code == 0, created.output
    return w.db


@pytest.fixture
def world(tmp_path: Path, tiny_model: str, template_db: Path,
          monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.chdir(tmp_path)
    w = World(tmp_path, tiny_model)
    # The backup API, not a file copy: the template may hold recent writes in its WAL file.
    with sqlite3.connect(template_db) as src, sqlite3.connect(w.db) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    (tmp_path / "studies.db.lock").touch()  # every process that opens the file uses it
    return w


def _params() -> list[Any]:
    out = []
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_bad_input(world: World, name: str) -> None:
    case = CASES[name]
    args = case.command(world)
    before = _digest(world.db)
    files = set(world.dir.rglob("*"))
    result = CliRunner().invoke(cli, args, env=case.env)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(result.exception))
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    assert result.exit_code == case.code, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    says = case.says(world) if callable(case.says) else case.says
    assert says in lines[0], lines[0]
    assert _digest(world.db) == before
    new = {p for p in set(world.dir.rglob("*")) - files if not p.name.startswith("studies.db")}
    assert new == set()  # no new database, lock or journal (studies.db's WAL files are its own)


def test_a_study_whose_stored_config_is_not_a_mapping_still_lists(tmp_path: Path) -> None:
    """Reading commands show such a study (made or changed by another tool) instead of failing."""
    import optuna

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="foreign", storage=url).set_user_attr("hpo_config", "oops")
    listed = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert listed.exit_code == 0 and "foreign" in listed.stdout
    best = CliRunner().invoke(cli, ["best", "--storage", url, "--study", "foreign"])
    assert best.exit_code == 0 and "no trial has completed yet" in best.stdout
