"""Data checks before a study starts: errors stop it (unless allowed), warnings are logged.

The checks themselves live on the training side (:mod:`objectives.checks`); this module runs
them for a :class:`~hpo.config.StudyConfig` and turns their verdict into an input error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hpo.config import StudyConfig
from hpo.errors import ConfigError
from hpo.errors import HPOInputError

if TYPE_CHECKING:
    from objectives.checks import Finding

__all__ = ["DataCheckError", "check_data", "run_data_checks"]

_LOG = logging.getLogger("hpo")


class DataCheckError(HPOInputError):
    """Raised when the data has problems that make results wrong (leakage, conflicting labels)."""


def check_data(cfg: StudyConfig) -> list[Finding]:
    """Run the data checks of the study's objective; an empty list when it has none.

    Raises:
        ConfigError: a data file is missing or unreadable, or the model's tokenizer cannot be
            loaded.

    Example:
        >>> from hpo.config import load_config
        >>> findings = check_data(load_config("examples/demo.yaml"))
        >>> [f.code for f in findings]
        []
    """
    from objectives import resolve_objective
    from objectives.data import DataError

    spec = resolve_objective(cfg.objective)
    if spec.check_data is None:
        return []
    try:
        return spec.check_data(cfg.objective_config)
    except DataError as exc:
        raise ConfigError(f"dataset: {exc}") from None
    except ValueError as exc:  # the model's tokenizer
        raise ConfigError(str(exc)) from None


def run_data_checks(cfg: StudyConfig, allow: bool = False) -> list[Finding]:
    """Check the data of ``cfg`` before its study starts: log warnings, stop on errors.

    Args:
        cfg: the study's config.
        allow: True: errors are logged as warnings and the study may start anyway.

    Returns:
        Every finding (errors first).

    Raises:
        DataCheckError: the data has errors and ``allow`` is False. One line that names each
            error, with counts and examples, and says how to go on.
        ConfigError: a data file is missing or unreadable.
    """
    findings = check_data(cfg)
    errors = [f for f in findings if f.severity == "error"]
    for f in findings:
        if f.severity == "warning":
            _LOG.warning("data check: %s: %s", f.code, f.message)
    if errors and not allow:
        unusable = [f for f in errors if f.code in ("label-column", "too-few-classes")]
        hint = "fix the data files" if unusable else "fix the data or pass --allow to run anyway"
        raise DataCheckError(
            "data check failed: " + "; ".join(f"{f.code}: {f.message}" for f in errors)
            + f" -- {hint} (all findings: hpo check-data --config FILE)"
        )
    for f in errors:
        _LOG.warning("data check (allowed with --allow): %s: %s", f.code, f.message)
    return findings
