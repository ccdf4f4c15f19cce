"""The demo configs of the image, token and regression tasks load, and their search spaces
pass the objective's checks (against the packaged models' blocks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import load_config
from hpo.search_space import load_search_space
from objectives import resolve_objective

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("name", ["images", "ner", "regression"])
def test_demo_config_and_space_are_valid(name: str) -> None:
    cfg = load_config(ROOT / "examples" / f"{name}.yaml")
    spec = resolve_objective(cfg.objective)
    space = load_search_space(cfg.search_space)
    assert spec.validate_space is not None
    spec.validate_space(cfg.objective_config, space.distributions())
    assert cfg.metric in spec.metrics
