"""hpo: hyperparameter optimization for fine-tuning pretrained transformers, on optuna.

The study side: configs, search spaces, storages, the worker loop, reports. It imports the
training side (``objectives``) and keeps heavy libraries out of import time, so ``hpo --help``
starts at once.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
