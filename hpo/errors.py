"""Errors that ``hpo`` raises on purpose; ``hpo.cli`` turns each into a one-line message.

Input errors (exit code 2) derive from :class:`HPOInputError`; everything else from
:class:`HPOError` is a runtime failure (exit code 1).
"""

from __future__ import annotations

__all__ = [
    "HPOError",
    "HPOInputError",
    "ConfigError",
    "SearchSpaceError",
    "StudyNotFoundError",
    "StorageError",
    "DataMismatchError",
    "StudyConfigConflictError",
    "StorageLostError",
    "ReportError",
]


class HPOError(Exception):
    """Base class of every error ``hpo`` raises on purpose."""


class HPOInputError(HPOError):
    """Bad input from the user: a config, a flag, a file or a URL. Exit code 2."""


class ConfigError(HPOInputError):
    """Raised when a study config file, key or flag value is missing or invalid."""


class SearchSpaceError(HPOInputError):
    """Raised when a search-space YAML file or one of its entries is invalid."""


class StudyNotFoundError(HPOInputError):
    """Raised when a study name does not exist in the given storage."""


class StorageError(HPOInputError):
    """Raised when a storage URL is malformed or its database cannot be reached."""


class DataMismatchError(HPOInputError):
    """Raised when a worker's view of the data differs from the study's fingerprint."""


class StudyConfigConflictError(HPOInputError):
    """Raised when a study exists with a config different from the one given."""


class StorageLostError(HPOError):
    """Raised when a storage's SQLite file is deleted or replaced while a process uses it."""


class ReportError(HPOError):
    """Raised when a report file cannot be written (a read-only directory, a full disk)."""


class ExportWriteError(HPOError):
    """Raised when an export's files cannot be written (a read-only directory, a full disk)."""
