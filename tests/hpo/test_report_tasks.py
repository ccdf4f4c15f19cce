"""The report shows each task's own metrics beside the objective: accuracy and F1 for the
classification tasks, MSE / MAE / Spearman for regression."""

from __future__ import annotations

import optuna
from _studies import make_trial
from optuna.distributions import FloatDistribution

from hpo.report import _summary
from hpo.report import _tables


def regression_study() -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("hpo_config", {"metric": "val_mse", "objective": "text_regression"})
    for i, mse in enumerate((0.9, 0.5, 0.7)):
        history = [{"step": 100 * (k + 1), "val_loss": mse + 0.1 / (k + 1), "val_mse": mse + 0.1 / (k + 1),
                    "val_mae": 0.6, "val_spearman": 0.4 + 0.1 * i, "seconds": 1.0 + k} for k in range(2)]
        study.add_trial(optuna.create_trial(
            value=history[-1]["val_mse"], params={"learning_rate": 1e-4 * (i + 1)},
            distributions={"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)},
            user_attrs={"history": history, "best_step": 200, "examples_seen": 200,
                        "planned_examples": 200, **{k: v for k, v in history[-1].items()
                                                    if k.startswith("val_")}}))
    return study


def test_regression_metrics_replace_accuracy_and_f1() -> None:
    study = regression_study()
    info = _tables._get_trials_table_info(study)
    assert info.extra_metrics == ["val_mae", "val_spearman"]
    assert info.top[0].metrics["val_spearman"] == 0.5
    summary = _summary._get_summary_info(study, "memory")
    assert summary.best_extra == {"val_mae": 0.6, "val_spearman": 0.5}
    from hpo.report._page import build_report_html

    html = build_report_html(study, "memory")
    summary_html = html.split("<h2>Summary</h2>")[1].split("</section>")[0]
    assert "val_spearman 0.5" in summary_html and "val_accuracy" not in summary_html
    assert "<th>val_mae</th>" in html


def test_classification_keeps_accuracy_and_f1() -> None:
    study = optuna.create_study()
    study.set_user_attr("hpo_config", {"metric": "val_loss"})
    study.add_trial(make_trial(0))
    assert _tables._get_trials_table_info(study).extra_metrics == ["val_accuracy", "val_f1"]
