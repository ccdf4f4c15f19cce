"""``hpo dashboard``: optuna-dashboard's own loading code reads the studies hpo writes."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from click.testing import CliRunner

from hpo.cli import cli
from hpo.config import config_from_dict
from hpo.runner import run_study

ROOT = pathlib.Path(__file__).resolve().parents[2]
STORAGE_MODES = ["sqlite", "journal"]


def _url(mode: str, tmp_path: pathlib.Path) -> str:
    if mode == "journal":
        return f"journal:///{tmp_path / 's.log'}"
    return f"sqlite:///{tmp_path / 's.db'}"


def _get(app: Any, path: str) -> tuple[str, Any]:
    """GET ``path`` from a WSGI app in-process; return the status line and the decoded JSON."""
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started["status"] = status

    body = b"".join(app(environ, start_response))
    return started["status"], json.loads(body)


def _attrs(serialized: list[dict[str, str]]) -> dict[str, str]:
    """optuna-dashboard's attribute list (``[{key, value}]``) as a dict."""
    return {a["key"]: a["value"] for a in serialized}


@pytest.fixture(scope="module", params=STORAGE_MODES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any]]:
    """The storage ``hpo dashboard`` hands to optuna-dashboard, and the dashboard's WSGI app on it.

    The storage holds a 3-trial toy study run by hpo. Built once per storage: the tests only read.
    """
    optuna_dashboard = pytest.importorskip("optuna_dashboard")  # an optional extra of hpo

    url = _url(request.param, tmp_path_factory.mktemp("dashboard"))
    cfg = config_from_dict(
        {
            "study": "toy-dash",
            "objective": "toy",
            "search_space": str(ROOT / "search_spaces" / "toy.yaml"),
            "storage": url,
            "n_trials": 3,
        }
    )
    run_study(cfg, quiet=True)
    handed: list[Any] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        # run_server blocks until interrupted: keep the storage hpo hands it and return at once.
        monkeypatch.setattr(
            optuna_dashboard, "run_server", lambda storage, **kwargs: handed.append(storage)
        )
        result = CliRunner().invoke(cli, ["dashboard", "--storage", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"optuna-dashboard on http://127.0.0.1:8080 for {url}\n"
    [storage] = handed
    yield storage, optuna_dashboard.wsgi(storage)
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()


@pytest.mark.slow
def test_dashboard_lists_our_study(served: tuple[Any, Any]) -> None:
    _, app = served
    status, body = _get(app, "/api/studies")
    assert status == "200 OK"
    [study] = body["study_summaries"]
    assert (study["study_name"], study["directions"]) == ("toy-dash", ["minimize"])
    attrs = _attrs(study["user_attrs"])
    assert {"hpo_config", "search_space", "data_fingerprint", "versions"} <= set(attrs)
    assert json.loads(attrs["hpo_config"])["objective"] == "toy"


def test_dashboard_shows_our_trials_params_and_user_attrs(served: tuple[Any, Any]) -> None:
    storage, app = served
    study = optuna.load_study(study_name="toy-dash", storage=storage)
    [summary] = _get(app, "/api/studies")[1]["study_summaries"]
    status, body = _get(app, f"/api/studies/{summary['study_id']}")
    assert status == "200 OK"
    assert body["name"] == "toy-dash"
    trials = body["trials"]
    assert [(t["number"], t["state"]) for t in trials] == [(n, "Complete") for n in range(3)]
    for shown, trial in zip(trials, study.trials, strict=True):
        assert shown["values"] == trial.values
        assert {
            p["name"]: float(p["param_external_value"]) for p in shown["params"]
        } == trial.params
        attrs = _attrs(shown["user_attrs"])
        assert {"examples_seen", "planned_examples", "train_seconds", "worker"} <= set(attrs)
        assert json.loads(attrs["worker"])["id"] == trial.user_attrs["worker"]["id"]
        assert [(v["step"], v["value"]) for v in shown["intermediate_values"]] == sorted(
            trial.intermediate_values.items()
        )
    assert [t["number"] for t in body["best_trials"]] == [study.best_trial.number]
    assert {p["name"] for p in body["intersection_search_space"]} == {"x", "y"}
    assert body["has_intermediate_values"]


def test_dashboard_without_optuna_dashboard_is_a_one_line_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec

    def missing(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "optuna_dashboard" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(cli, ["dashboard", "--storage", url])
    assert result.exit_code == 1
    assert (
        result.stderr == "Error: optuna-dashboard is not installed: pip install optuna-dashboard\n"
    )
    assert result.stdout == ""
    assert not (tmp_path / "s.db").exists()  # nothing was opened
