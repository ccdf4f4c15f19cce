"""Write a study's report: one self-contained HTML file that opens offline from disk.

The report answers at a glance: did the search converge, what mattered, what did pruning save,
what is the best configuration, and who ran what. Each figure has two halves, as in
``optuna.visualization``: ``_get_<plot>_info(study) -> NamedTuple`` computes the numbers (tested
on their own) and ``_<plot>_figure(info)`` draws them with plotly.

Everything is computed from one snapshot of the study's trials
(:func:`hpo.report._study._snapshot`), so a report of a running study is consistent with itself
and the storage is read only once.

plotly and ``optuna.visualization`` are imported inside functions: ``import hpo.report`` stays cheap.

Modules, in the order the data flows:

- ``_study``: the snapshot, and readers of our trial attributes;
- ``_summary``, ``_info``, ``_tables``: the numbers of the header, of each figure, of the tables;
- ``_figures``: plotly figures of the ``_info`` numbers;
- ``_html``, ``_sections``, ``_page``: escaping, the page's parts, the page and its file.

Example:
    .. code-block:: python

        import optuna
        from hpo.report import write_report

        study = optuna.load_study(study_name="sst2", storage="sqlite:///studies.db")
        write_report(study, "report.html", storage_label="sqlite:///studies.db")
"""

from __future__ import annotations

from hpo.report._page import build_report_html
from hpo.report._page import write_report

__all__ = ["build_report_html", "write_report"]
