"""``python -m hpo``: the ``hpo`` command (how launchers start workers)."""

from hpo.cli import main

main()
