"""End-to-end: the report opens from file:// in headless Chromium, offline, and draws every figure.

Needs Debian's ``chromium`` and the ``playwright`` package (its driver ships in the wheel; no
browser is downloaded). Without them these tests skip, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import _studies as studies
import optuna
import pytest

from hpo import report

pytestmark = pytest.mark.browser

HERE = pathlib.Path(__file__).resolve().parent


def _load(path: pathlib.Path, name: str) -> ModuleType:
    """Import a file by path: scripts/ is not a package."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


screenshot_script = _load(HERE.parents[1] / "scripts" / "screenshot_report.py", "_screenshot")

# A drawn figure has its SVG and at least one drawn mark: a path (line, point, bar) in a trace.
FIGURES_DRAWN = """() => [...document.querySelectorAll('div.plotly-graph-div')].map(d => ({
  id: d.id,
  svg: !!d.querySelector('svg.main-svg'),
  marks: d.querySelectorAll('g.trace path').length,
}))"""


def _missing_browser() -> str | None:
    if screenshot_script.find_chromium() is None:
        return "Chromium is not installed (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright)"
    return None


def _require_browser() -> None:
    missing = _missing_browser()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run on CI: {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=screenshot_script.find_chromium(),
            args=screenshot_script.CHROMIUM_ARGS,
        )
        yield chromium
        chromium.close()


class Opened:
    """A report opened in a page, with what the page did."""

    def __init__(self, browser: Any, html_path: pathlib.Path) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.route("**/*", self._route)
        self.page.goto(html_path.as_uri(), wait_until="load")
        self.page.wait_for_function(screenshot_script.ALL_FIGURES_DRAWN, timeout=60_000)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _route(self, route: Any) -> None:
        # The report must need nothing but its own file: refuse anything else and remember it.
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def meta(self) -> dict[str, Any]:
        return self.page.evaluate(
            "JSON.parse(document.getElementById('hpo-report-meta').textContent)"
        )


def _write(study: optuna.Study, tmp_path: pathlib.Path) -> pathlib.Path:
    return report.write_report(study, tmp_path / "report.html", storage_label="sqlite:///x.db")


def _multi_objective_study() -> optuna.Study:
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(directions=["minimize", "maximize"])
    for i in range(8):
        study.add_trial(
            optuna.create_trial(
                values=[i / 8, (i / 8) ** 0.5],
                params={"x": i / 8},
                distributions={"x": FloatDistribution(0, 1)},
            )
        )
    return study


SHAPES = {
    "finished": lambda: studies.demo_study(),
    "empty": lambda: studies.hpo_study(),
    "multi_objective": _multi_objective_study,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_report_draws_every_figure_offline(
    browser: Any, tmp_path: pathlib.Path, shape: str
) -> None:
    path = _write(SHAPES[shape](), tmp_path)
    opened = Opened(browser, path)
    drawn = opened.page.evaluate(FIGURES_DRAWN)
    meta = opened.meta()
    png = tmp_path / "report.png"
    opened.page.screenshot(path=str(png), full_page=True)
    opened.page.close()

    assert opened.errors == []
    assert opened.requests == []
    expected = [f"hpo-fig-{key}" for key in meta["figures"]]
    assert [d["id"] for d in drawn] == expected
    assert [d["id"] for d in drawn if d["svg"] and d["marks"] > 0] == expected
    if shape == "finished":
        assert len(expected) == 8
    assert png.stat().st_size > 10_000


def test_xss_study_runs_no_script(browser: Any, tmp_path: pathlib.Path) -> None:
    opened = Opened(browser, _write(studies.xss_study(), tmp_path))
    heading = opened.page.inner_text("h1")
    page_text = opened.page.inner_text("body")
    opened.page.screenshot(path=str(tmp_path / "xss.png"), full_page=True)
    opened.page.close()

    assert opened.dialogs == []
    assert opened.errors == []
    assert heading == f"Study {studies.XSS}"
    assert f"failed: {studies.XSS}" in page_text


def test_screenshot_script(tmp_path: pathlib.Path) -> None:
    # A subprocess, as a user runs it (and Playwright's sync API can't nest in one thread).
    _require_browser()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'studies.db'}")
    studies.demo_study(storage, name="demo")
    storage.engine.dispose()
    png = tmp_path / "docs" / "report.png"
    root = HERE.parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        str(root / "scripts" / "screenshot_report.py"),
        "--storage",
        storage.url,
        "--study",
        "demo",
        "-o",
        str(png),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_browser_reason_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert _missing_browser() == "Chromium is not installed (apt-get install -y chromium)"
