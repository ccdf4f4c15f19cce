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

import os
import pathlib
from typing import TYPE_CHECKING

from hpo.errors import ReportError
from hpo.report import _page
from hpo.report._page import build_report_html

if TYPE_CHECKING:
    import optuna

__all__ = ["build_report_html", "write_report"]


def write_report(
    study: optuna.Study, path: str | os.PathLike[str], storage_label: str
) -> pathlib.Path:
    """Write a study's report to ``path`` atomically (see :func:`hpo.report._page.write_report`).

    Raises:
        ReportError: the file cannot be written (a read-only or missing directory, a full
            disk): one line naming the file; nothing half-written is left behind.
    """
    for folder in pathlib.Path(path).parents:  # its nearest existing folder must be one
        if folder.exists():
            if not folder.is_dir():
                raise ReportError(f"cannot write the report {path}: {folder} is not a directory")
            break
    try:
        return _page.write_report(study, path, storage_label)
    except OSError as exc:
        raise ReportError(f"cannot write the report {path}: {exc.strerror or exc}") from None
