"""Search spaces: every shipped file loads; every bad entry names the file and key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.errors import SearchSpaceError
from hpo.search_space import load_search_space
from hpo.search_space import search_space_from_dict

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_search_space_loads_and_samples(path: Path) -> None:
    space = load_search_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = space.sample(study.ask())
        assert params and set(params) <= set(space.distributions())


def test_default_and_lora_spaces_have_the_promised_entries() -> None:
    root = Path(__file__).parents[2] / "search_spaces"
    default = load_search_space(root / "default.yaml").distributions()
    assert {"learning_rate", "batch_size", "freeze_layers", "weight_decay", "dropout",
            "warmup_ratio"} <= set(default)
    assert default["learning_rate"].log
    lora = load_search_space(root / "lora.yaml").distributions()
    assert {"r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate"} <= set(lora)


def test_scientific_notation_without_a_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("learning_rate: {type: float, low: 1e-5, high: 5e-4, log: true}\n")
    d = load_search_space(path).distributions()["learning_rate"]
    assert (d.low, d.high, d.log) == (1e-5, 5e-4, True)


def test_scientific_notation_in_choices_and_conditions_is_a_number(tmp_path: Path) -> None:
    """`choices: [1e-5, 1e-4]` used to be the strings '1e-5' and '1e-4' (YAML 1.1): the
    objective got a string learning rate."""
    import optuna

    path = tmp_path / "s.yaml"
    path.write_text("learning_rate: {type: categorical, choices: [1e-5, 1.0e-4, 3E-4]}\n"
                    "warmup_ratio: {type: float, low: 0, high: 0.1, condition: {learning_rate: 1e-5}}\n"
                    "name: {type: categorical, choices: ['8', a1e5]}\n")
    space = load_search_space(path)
    assert space.distributions()["learning_rate"].choices == (1e-5, 1e-4, 3e-4)
    assert space.distributions()["name"].choices == ("8", "a1e5")  # quoted / not a number
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        params = space.sample(study.ask())
        assert isinstance(params["learning_rate"], float)
        assert ("warmup_ratio" in params) == (params["learning_rate"] == 1e-5)
        seen.append(params["learning_rate"])
    assert 1e-5 in seen


def test_conditional_entries_are_sampled_only_when_enabled() -> None:
    space = search_space_from_dict({
        "r": {"type": "int", "low": 2, "high": 8, "condition": {"finetuning": "lora"}},
        "finetuning": {"type": "categorical", "choices": ["full", "lora"]},
        "freeze_layers": {"type": "int", "low": 0, "high": 2, "condition": {"finetuning": ["full"]}},
    })
    assert [p.name for p in space.params][0] == "finetuning"  # parents first
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        params = space.sample(study.ask())
        seen.add(params["finetuning"])
        assert ("r" in params) == (params["finetuning"] == "lora")
        assert ("freeze_layers" in params) == (params["finetuning"] == "full")
    assert seen == {"full", "lora"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: {type: float, low: 0.1, high: 0.01}",
         "lr: `low <= high` must hold, but got low=0.1, high=0.01"),
        ("lr: {type: decimal, low: 0, high: 1}",
         "lr.type: expected one of float, int, categorical, got 'decimal'"),
        ("lr: {type: float, low: 0, high: 1, lg: true}",
         "lr: unknown key 'lg' for type float (valid: condition, help, high, log, low, step, type)"),
        ("lr: {type: float, high: 1}", "lr: missing key 'low' for type float"),
        ("lr: {type: float, low: zero, high: 1}", "lr.low: expected a number, got 'zero'"),
        ("lr: {type: float, low: 0.0, high: 1.0, log: true}",
         "lr: `low > 0` must hold for `log=True`, but got (low=0.0, high=1.0)."),
        ("n: {type: int, low: 0.5, high: 3}", "n.low: expected an integer for type int, got 0.5"),
        ("c: {type: categorical, choices: []}", "c.choices: expected a non-empty list, got []"),
        ("c: {type: categorical, choices: [[1, 2]]}",
         "c.choices: each choice must be a number, string, bool or null, got [1, 2] "
         "(write a list as a string, e.g. 'query,value')"),
        ("lr: 0.1", "lr: expected a mapping like {type: float, low: 0.0, high: 1.0}, got 0.1"),
        ("r: {type: int, low: 1, high: 4, condition: {mode: lora}}",
         "r.condition: unknown parameter 'mode' (defined: r)"),
        ("m: {type: categorical, choices: [a, b]}\nr: {type: int, low: 1, high: 4, condition: {m: c}}",
         "r.condition: m can never be 'c'"),
        ("a: {type: int, low: 1, high: 4, condition: {b: 1}}\nb: {type: int, low: 1, high: 4, condition: {a: 1}}",
         "a.condition: cyclic conditions a -> b -> a"),
        ("- a\n- b", "expected a mapping of parameter name to entry, got list"),
        ("lr: {type: float, low: 0.1, high: [oops", "not valid YAML at line 2"),
        ("n: {type: int, low: 0, high: 4, step: 0}", "n.step: expected a number > 0, got 0"),
        ("x: {type: float, low: 0, high: 1, step: -0.5}",
         "x.step: expected a number > 0, got -0.5"),
        ("n: {type: int, low: 1, high: 10, step: 4}",
         "n: `(high - low)` must be a multiple of `step`, but got low=1, high=10, step=4 "
         "(e.g. high=9 or high=13)"),
        ("x: {type: float, low: 0.0, high: 1.0, step: 0.3}",
         "x: `(high - low)` must be a multiple of `step`, but got low=0.0, high=1.0, step=0.3 "
         "(e.g. high=0.9 or high=1.2)"),
    ],
)
def test_bad_entries_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path)
    assert str(info.value) == f"{path}: {message}"


def test_steps_that_divide_the_range_are_kept() -> None:
    space = search_space_from_dict({
        "n": {"type": "int", "low": 1, "high": 13, "step": 4},
        "x": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},  # inexact in binary
        "m": {"type": "int", "low": 2, "high": 2, "step": 3},
    })
    d = space.distributions()
    assert (d["n"].high, d["n"].step, d["x"].high, d["x"].step, d["m"].high) == (13, 4, 0.3, 0.1, 2)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match=r"nope.yaml: cannot read the search space \(No such file"):
        load_search_space(tmp_path / "nope.yaml")


def test_grid_values_and_fits() -> None:
    space = search_space_from_dict({
        "bs": {"type": "categorical", "choices": [8, 16]},
        "k": {"type": "int", "low": 0, "high": 2},
        "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    })
    assert space.grid({"lr": [1e-4]}) == {"bs": [8, 16], "k": [0, 1, 2], "lr": [1e-4]}
    # The config's `sampler: {name: grid, search_space: {lr: [1e-5]}}` is YAML 1.1 too.
    assert space.grid({"lr": ["1e-5", 2e-5]})["lr"] == [1e-5, 2e-5]
    with pytest.raises(SearchSpaceError, match="lr: the grid sampler needs a finite list of values"):
        space.grid()
    assert space.fits("bs", 16) and not space.fits("bs", 32)
    assert space.fits("lr", 1e-4) and not space.fits("lr", 1.0) and not space.fits("nope", 1)
