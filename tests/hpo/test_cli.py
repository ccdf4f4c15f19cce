"""The hpo command line, in-process with CliRunner (and a few real subprocesses)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from hpo.cli import cli

ROOT = Path(__file__).parents[2]
HPO = str(Path(sys.executable).with_name("hpo"))


def write_config(path: Path, **values: object) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
        "batch_size: {type: categorical, choices: [8, 16]}\n"
        "freeze_layers: {type: int, low: 0, high: 2}\n"
    )
    return path


@pytest.fixture
def config(tmp_path: Path, tiny_model: str, data_csv: Path, space: Path) -> Path:
    return write_config(
        tmp_path / "study.yaml",
        study="tiny",
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        objective="text_classification",
        model=tiny_model,
        dataset={"path": str(data_csv), "text_column": "text", "label_column": "label"},
        max_length=32,
        epochs=1,
        evals_per_epoch=2,
        metric="val_loss",
        direction="minimize",
        sampler={"name": "tpe"},
        pruner={"name": "median", "n_startup_trials": 1},
        search_space=str(space),
        n_trials=3,
        timeout=None,
        seed=0,
        cache_dir=None,
    )


def toy_config(tmp_path: Path, **values: object) -> Path:
    defaults: dict[str, object] = {
        "study": "toy",
        "objective": "toy",
        "storage": f"sqlite:///{tmp_path / 'toy.db'}",
        "search_space": str(ROOT / "search_spaces" / "toy.yaml"),
        "sampler": "random",
        "pruner": "none",
        "n_trials": 4,
    }
    return write_config(tmp_path / "toy.yaml", **{**defaults, **values})


def invoke(*args: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_run_fine_tunes_and_prints_the_best_trial(config: Path, tmp_path: Path) -> None:
    result = invoke("run", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "best trial #" in result.stdout
    assert "learning_rate:" in result.stdout
    assert "trial   0 " in result.stderr  # one line per finished trial on stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert len(study.trials) == 3
    attrs = study.user_attrs
    assert attrs["hpo_config"]["model"].endswith("tiny-bert0")
    assert attrs["data"]["sizes"]["train"] == 56 and len(attrs["data_fingerprint"]) >= 16
    assert "storage" not in attrs["hpo_config"]
    t = study.trials[0]
    assert {"worker", "wall_seconds", "examples_seen"} <= set(t.user_attrs)
    assert {"host", "pid", "id", "started_at"} <= set(t.user_attrs["worker"])

    # Running again resumes the same study, up to the new budget.
    result = invoke("run", "--config", str(config), "--n-trials", "4")
    assert result.exit_code == 0, result.output
    assert len(optuna.load_study(study_name="tiny", storage=study._storage).trials) == 4


def test_studies_trials_best_in_table_and_json(config: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    assert invoke("run", "--config", str(config), "--n-trials", "2").exit_code == 0
    table = invoke("studies", "--storage", storage)
    assert table.exit_code == 0 and "tiny" in table.stdout and "val_loss" in table.stdout
    rows = json.loads(invoke("studies", "--storage", storage, "--format", "json").stdout)
    assert rows[0]["study"] == "tiny" and rows[0]["n_trials"] == 2
    trials = json.loads(invoke("trials", "--storage", storage, "--study", "tiny", "--format", "json").stdout)
    assert [t["number"] for t in trials] == [0, 1]
    assert set(trials[0]["params"]) == {"learning_rate", "batch_size", "freeze_layers"}
    best = json.loads(invoke("best", "--storage", storage, "--study", "tiny", "--format", "json").stdout)
    assert best["value"] == min(t["value"] for t in trials if t["state"] == "complete")
    text = invoke("best-trial", "--storage", storage, "--study", "tiny").stdout
    assert text.startswith(f"best trial #{best['number']} of study tiny: val_loss=")


def test_json_output_is_strict_json_without_nan_or_infinity(tmp_path: Path) -> None:
    """`NaN` and `Infinity` are not JSON: jq, JSON.parse and Go's decoder refuse them."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for value, attrs in ((float("inf"), {"val_accuracy": float("nan"), "val_f1": float("-inf")}),
                         (0.5, {"history": [{"step": 1, "value": float("nan")}]})):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, value)

    def strict(text: str) -> object:
        def refuse(constant: str) -> None:
            raise ValueError(f"not JSON: {constant}")

        return json.loads(text, parse_constant=refuse)

    trials = strict(invoke("trials", "--storage", url, "--study", "s", "--format", "json").stdout)
    assert [(t["value"], t["val_accuracy"], t["val_f1"]) for t in trials] == [
        (None, None, None), (0.5, None, None)]
    best = strict(invoke("best", "--storage", url, "--study", "s", "--format", "json").stdout)
    assert best["number"] == 0 and best["value"] is None
    assert best["user_attrs"]["val_accuracy"] is None


@pytest.mark.slow
def test_storage_falls_back_to_the_environment(tmp_path: Path) -> None:
    config = toy_config(tmp_path, storage=None)
    url = f"sqlite:///{tmp_path / 'env.db'}"
    result = invoke("run", "--config", str(config), env={"HPO_STORAGE": url})
    assert result.exit_code == 0, result.output
    assert "toy" in invoke("studies", env={"HPO_STORAGE": url}).stdout
    # The flag wins over the environment.
    other = f"sqlite:///{tmp_path / 'flag.db'}"
    assert invoke("run", "--config", str(config), "--storage", other,
                  env={"HPO_STORAGE": url}).exit_code == 0
    assert (tmp_path / "flag.db").exists()


def test_default_storage_is_studies_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = toy_config(tmp_path, storage=None)
    assert invoke("run", "--config", str(config)).exit_code == 0
    assert (tmp_path / "studies.db").exists()


def test_worker_id_names_the_worker_in_its_trials(tmp_path: Path) -> None:
    config = toy_config(tmp_path, n_trials=2)
    url = f"sqlite:///{tmp_path / 'toy.db'}"
    assert invoke("create", "--config", str(config)).exit_code == 0
    result = invoke("worker", "--storage", url, "--study", "toy", "--worker-id", "slurm-7_3")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="toy", storage=url)
    assert [t.user_attrs["worker"]["id"] for t in study.trials] == ["slurm-7_3", "slurm-7_3"]
    # From the environment (a Kubernetes pod name), as the job files in deploy/ do.
    other = toy_config(tmp_path, study="toy-env", n_trials=1)
    assert invoke("create", "--config", str(other)).exit_code == 0
    result = invoke("worker", "--storage", url, "--study", "toy-env", env={"HPO_WORKER_ID": "pod-a"})
    assert result.exit_code == 0, result.output
    trial = optuna.load_study(study_name="toy-env", storage=url).trials[0]
    assert trial.user_attrs["worker"]["id"] == "pod-a"
    empty = invoke("worker", "--storage", url, "--study", "toy", "--worker-id", " ")
    assert empty.exit_code == 2
    assert empty.stderr.strip().splitlines() == [
        "Error: --worker-id: must not be empty (a name, e.g. the SLURM task or pod)"]


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    space = tmp_path / "fail.yaml"
    space.write_text("x: {type: float, low: 0, high: 1}\nfail: {type: categorical, choices: [true, false]}\n")
    config = toy_config(tmp_path, search_space=str(space), n_trials=8, seed=3)
    result = invoke("run", "--config", str(config))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 8
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.params["fail"] for t in failed)
    assert failed[0].user_attrs["fail_reason"].startswith("RuntimeError: this configuration fails")
    assert "fail" in result.stderr


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "qmc", "grid"])
def test_every_sampler_runs(tmp_path: Path, sampler: str) -> None:
    options: dict[str, object] = {"name": sampler}
    if sampler == "grid":
        options["search_space"] = {"x": [0.0, 0.5], "y": [0.25, 1.0]}
    result = invoke("run", "--config", str(toy_config(tmp_path, sampler=options)))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    assert len(study.trials) == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 100},
        {"name": "percentile", "percentile": 25.0},
        {"name": "successive-halving", "min_resource": 100},
        {"name": "hyperband", "min_resource": 100, "max_resource": 500},
        {"name": "patient", "patience": 1, "wrapped": {"name": "median"}},
        {"name": "none"},
    ],
)
def test_every_pruner_runs(tmp_path: Path, pruner: dict[str, object]) -> None:
    config = toy_config(tmp_path, pruner=pruner, n_trials=6)
    result = invoke("run", "--config", str(config))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    assert len(study.trials) == 6
    if pruner["name"] not in ("none", "patient"):  # toy curves always improve: patience holds
        assert any(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)


def _digest(path: Path) -> str:
    """What the SQLite file stores (every row of every table), not its bytes: a WAL checkpoint
    by a connection the earlier run left open rewrites the file without changing its data."""
    if not path.exists():
        return "absent"
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


BAD_CASES = {
    "missing config": (["--config", "nope.yaml"], "nope.yaml: cannot read the config"),
    "malformed config": ("study: [x\n", "not valid YAML"),
    "unknown key": ("LEARNING: 1\n", "unknown key 'LEARNING'"),
    "low > high": ("space:lr: {type: float, low: 1.0, high: 0.1}\n",
                   "lr: `low <= high` must hold, but got low=1.0, high=0.1"),
    "unknown sampler": ("sampler: {name: bayes}\n", "unknown sampler 'bayes'"),
    "unknown pruner": ("pruner: asha\n", "unknown pruner 'asha'"),
    "bad pruner option": ("pruner: {name: median, warmup: 2}\n",
                          "pruner 'median': warmup must be a share"),
    "bad sampler option": ("sampler: {name: tpe, n_startup: 3}\n", "sampler 'tpe'"),
    "unknown objective": ("objective: nope\n", "unknown objective 'nope'"),
    "unknown model": ("model: /nowhere/model\n", "model '/nowhere/model': not a local model directory"),
    "unknown dataset": ("dataset: {name: imdb}\n", "unknown builtin dataset 'imdb'"),
    "missing column": ("dataset: {path: DATA, text_column: review}\n", "review"),
    "one label": ("dataset: {path: ONE_LABEL}\n", "2"),
    "freeze beyond depth": ("space:freeze_layers: {type: int, low: 0, high: 3}\n",
                            "freeze_layers: 3 is beyond the 2 layers of model"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    case: str, config: Path, tmp_path: Path, data_csv: Path
) -> None:
    from conftest import write_csv

    db = tmp_path / "studies.db"
    assert invoke("run", "--config", str(config), "--n-trials", "1").exit_code == 0
    before = _digest(db)
    change, message = BAD_CASES[case]
    if isinstance(change, list):
        args = ["run", *change]
    else:
        raw = yaml.safe_load(config.read_text())
        if change.startswith("space:"):
            space = tmp_path / "bad_space.yaml"
            entries = yaml.safe_load(Path(raw["search_space"]).read_text())
            entries.update(yaml.safe_load(change[len("space:"):]))  # replaces an entry
            space.write_text(yaml.safe_dump(entries))
            raw["search_space"] = str(space)
        else:
            one = write_csv(tmp_path / "one.csv", [{"text": f"t {i}", "label": "a"} for i in range(30)])
            text = change.replace("ONE_LABEL", str(one)).replace("DATA", str(data_csv))
            try:
                raw.update(yaml.safe_load(text))
            except yaml.YAMLError:
                raw = None
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(raw) if raw is not None else change)
        args = ["run", "--config", str(bad), "--study", "other"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]
    assert _digest(db) == before
    study_names = optuna.get_all_study_names(f"sqlite:///{db}")
    assert study_names == ["tiny"]


def test_unreachable_storage_is_one_line_with_the_password_redacted(tmp_path: Path) -> None:
    config = toy_config(tmp_path)
    url = "postgresql+psycopg://bob:s3cr3t@127.0.0.1:1/hpo"
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--storage", url])
    assert result.exit_code == 2
    assert "s3cr3t" not in result.output
    assert result.stderr.startswith("Error: cannot open storage 'postgresql+psycopg://bob:***@127.0.0.1:1/hpo'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_sqlite_file_deleted_during_a_run_is_an_error_not_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results lost silently was the worst outcome: the run must fail, with one line."""
    import dataclasses

    from objectives import OBJECTIVES

    db = tmp_path / "toy.db"
    toy = OBJECTIVES["toy"]

    def deleting(trial: optuna.Trial, params: dict, cfg: object, **kw: object) -> float:
        if trial.number == 1:
            db.unlink()
        return toy.fn(trial, params, cfg, **kw)

    monkeypatch.setitem(OBJECTIVES, "toy", dataclasses.replace(toy, fn=deleting))
    result = CliRunner().invoke(cli, ["run", "--config", str(toy_config(tmp_path))])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("trial   0 complete")  # told before the file went away
    assert lines[1:] == [
        f"Error: the SQLite file {db} was deleted or replaced during the run; results of this "
        "run could not be stored"]
    assert "best trial" not in result.stdout


@pytest.mark.parametrize("cleanup", ["works", "fails"])
def test_ctrl_c_while_creating_the_study_does_not_block_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup: str
) -> None:
    """Ctrl-C after optuna created the study but before its hpo config was stored: the study
    is removed again, or (when that is impossible) the next run takes the empty study over;
    it used to be refused by every later run as 'not created by hpo'."""
    url = f"sqlite:///{tmp_path / 'toy.db'}"
    config = toy_config(tmp_path)

    def interrupted() -> dict[str, str]:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("hpo.study.versions", interrupted)
        if cleanup == "fails":
            m.setattr("optuna.delete_study", lambda **kwargs: 1 / 0)
        result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code != 0 and isinstance(result.exception, (KeyboardInterrupt, SystemExit))
    names = optuna.get_all_study_names(url)
    assert names == ([] if cleanup == "works" else ["toy"])
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="toy", storage=url)
    assert study.user_attrs["hpo_config"]["n_trials"] == 4 and len(study.trials) == 4


@pytest.mark.parametrize("command", ["run", "create"])
@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_half_made_study_is_completed_or_made_again(
    tmp_path: Path, command: str, direction: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A study left without its hpo config and without trials (a creation killed half-way) is
    taken over by the next `hpo run`/`hpo create` of that name, whatever its direction."""
    url = f"sqlite:///{tmp_path / 'toy.db'}"
    half = optuna.create_study(study_name="toy", storage=url, direction=direction)
    half.set_user_attr("search_space", {"x": "left over"})
    result = CliRunner().invoke(cli, [command, "--config", str(toy_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "has no stored config and no trials" in caplog.text
    study = optuna.load_study(study_name="toy", storage=url)
    assert study.direction.name == "MINIMIZE"  # the toy objective's
    assert study.user_attrs["hpo_config"]["objective"] == "toy"
    assert study.user_attrs["search_space"] != {"x": "left over"}
    assert len(study.trials) == (4 if command == "run" else 0)
    # A study that is not hpo's and has trials is still refused.
    other = optuna.create_study(study_name="foreign", storage=url)
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    result = CliRunner().invoke(cli, ["run", "--config", str(toy_config(tmp_path, study="foreign"))])
    assert result.exit_code == 2 and "was not created by hpo" in result.stderr


@pytest.mark.parametrize("fault", ["not a directory", "disk full"])
def test_a_report_that_cannot_be_written_is_one_line_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    import errno
    import types

    assert invoke("run", "--config", str(toy_config(tmp_path, n_trials=1))).exit_code == 0
    out = tmp_path / "r.html"
    if fault == "not a directory":
        (tmp_path / "plain").write_text("a file, not a directory")
        out = tmp_path / "plain" / "r.html"
        reason = f"{tmp_path / 'plain'} is not a directory"
    else:
        def full(**kwargs: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("hpo.report._page.tempfile", types.SimpleNamespace(mkstemp=full))
        reason = "No space left on device"
    result = CliRunner().invoke(cli, ["report", "--storage", f"sqlite:///{tmp_path / 'toy.db'}",
                                      "--study", "toy", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"Error: cannot write the report {out}: {reason}"]
    assert not out.exists()


@pytest.mark.parametrize("command", [["worker"], ["export", "-o", "model"]], ids=lambda c: c[0])
@pytest.mark.parametrize(("key", "value"), [("hpo_config", "a string"), ("hpo_config", [1, 2]),
                                            ("hpo_config", 3), ("search_space", ["x"])])
def test_a_stored_config_that_is_not_a_mapping_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], key: str, value: object
) -> None:
    """A study whose hpo_config (or search_space) user attr was set by another tool to a
    string or list: hpo worker / hpo export used to end in 'TypeError: not a mapping'."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'toy.db'}"
    assert invoke("create", "--config", str(toy_config(tmp_path))).exit_code == 0
    optuna.load_study(study_name="toy", storage=url).set_user_attr(key, value)
    result = CliRunner().invoke(cli, [*command, "--storage", url, "--study", "toy"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: study 'toy': its stored {key} is a {type(value).__name__}, not a mapping (was "
        "the study made or edited by another tool?); create the study anew with `hpo run "
        "--config FILE` under another name"]
    assert not (tmp_path / "model").exists()


def test_unknown_study_lists_the_existing_ones(tmp_path: Path) -> None:
    assert invoke("run", "--config", str(toy_config(tmp_path))).exit_code == 0
    result = CliRunner().invoke(cli, ["trials", "--storage", f"sqlite:///{tmp_path / 'toy.db'}",
                                      "--study", "nope"])
    assert result.exit_code == 2
    assert "no study named 'nope'" in result.stderr and "(studies: toy)" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["studies"], ["trials", "--study", "s"], ["best", "--study", "s"],
     ["report", "--study", "s", "-o", "r.html"], ["worker", "--study", "s"],
     ["export", "--study", "s", "-o", "model"], ["delete-study", "--study", "s", "--yes"]],
    ids=lambda c: c[0],
)
def test_read_commands_on_a_mistyped_sqlite_path_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [*command, "--storage", "sqlite:///typo.db"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: no SQLite database at typo.db: check --storage (`hpo run` and `hpo create` make "
        "a new one)"]
    assert list(tmp_path.iterdir()) == []


def test_delete_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'toy.db'}"
    assert invoke("run", "--config", str(toy_config(tmp_path))).exit_code == 0
    assert invoke("delete-study", "--storage", url, "--study", "toy", "--yes").exit_code == 0
    assert optuna.get_all_study_names(url) == []


def test_import_of_the_cli_stays_light() -> None:
    code = (
        "import sys, hpo.cli; heavy = {'torch', 'transformers', 'peft', 'datasets', 'plotly', "
        "'optuna', 'sqlalchemy'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_installed_console_script_smoke(tmp_path: Path) -> None:
    """One real subprocess of the installed `hpo`: help, a run and its output streams."""
    assert "run" in subprocess.run([HPO, "--help"], capture_output=True, text=True, check=True).stdout
    out = subprocess.run([HPO, "run", "--config", str(toy_config(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "best trial #" in out.stdout and "trial   0 " in out.stderr


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path: Path) -> None:
    config = toy_config(tmp_path, sleep=0.4, n_steps=5, n_trials=20)
    proc = subprocess.Popen([HPO, "run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the first finished trial, then interrupt
        line = proc.stderr.readline()
        if line.startswith("trial   0 "):
            break
    time.sleep(0.6)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted by SIGINT" in stdout and "best trial #0" in stdout
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    states = [t.state for t in study.trials]
    interrupted = [t for t in study.trials if "interrupted" in t.user_attrs.get("fail_reason", "")]
    assert len(interrupted) == 1 and interrupted[0].state == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.WAITING) == 1  # handed back for a resume
    assert optuna.trial.TrialState.RUNNING not in states
    waiting = study.trials[-1]
    assert waiting.params == interrupted[0].params


def test_resuming_with_a_different_config_is_refused(tmp_path: Path) -> None:
    assert invoke("run", "--config", str(toy_config(tmp_path))).exit_code == 0
    changed = toy_config(tmp_path, n_steps=9)
    result = CliRunner().invoke(cli, ["run", "--config", str(changed)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: study 'toy' exists with a different n_steps; use a new study name, "
        "or the same config to resume it"
    )
    # Budget, sampler and pruner may change on resume.
    more = toy_config(tmp_path, n_trials=6, sampler="tpe")
    assert invoke("run", "--config", str(more)).exit_code == 0
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    assert len(study.trials) == 6 and study.user_attrs["hpo_config"]["n_trials"] == 6
