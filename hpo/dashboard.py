"""Start optuna-dashboard on an hpo storage: our studies are plain optuna studies."""

from __future__ import annotations

import importlib.util

from hpo.errors import HPOError
from hpo.storage import build_storage
from hpo.storage import redact_url

__all__ = ["serve"]


def serve(url: str, host: str, port: int) -> None:
    """Serve optuna-dashboard for ``url`` until interrupted.

    Args:
        url:
            The storage URL; its password is never printed.
        host:
            The address to listen on.
        port:
            The port to listen on.

    Raises:
        HPOError: optuna-dashboard is not installed (the ``dashboard`` extra of hpo).
        StorageError: the storage cannot be opened.
    """
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise HPOError("optuna-dashboard is not installed: pip install optuna-dashboard")
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on http://{host}:{port} for {redact_url(url)}")  # noqa: T201
    run_server(build_storage(url), host=host, port=port)
