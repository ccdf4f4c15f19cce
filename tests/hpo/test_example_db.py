"""studies.db.example is a real study that hpo's commands open right after install."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from click.testing import CliRunner

from hpo.cli import cli

EXAMPLE = Path(__file__).parents[2] / "studies.db.example"


def test_example_study_reports_and_lists(tmp_path: Path) -> None:
    db = tmp_path / "example.db"
    shutil.copyfile(EXAMPLE, db)  # never open the shipped file itself
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name="example-rotten-tomatoes", storage=url)
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.COMPLETE in states and optuna.trial.TrialState.PRUNED in states
    assert study.user_attrs["hpo_config"]["model"] == "minilm"
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--storage", url, "--study",
                                      "example-rotten-tomatoes", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "example-rotten-tomatoes" in out.read_text()
