"""StudyConfig: file values, flag overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import config_from_dict
from hpo.config import load_config
from hpo.errors import ConfigError

ROOT = Path(__file__).parents[2]


def base(**extra: object) -> dict[str, object]:
    return {"study": "s", "search_space": "search_spaces/default.yaml", **extra}


def test_demo_config_loads_with_every_documented_key() -> None:
    cfg = load_config(ROOT / "examples" / "demo.yaml")
    assert cfg.study == "demo-rotten-tomatoes"
    assert cfg.storage == "sqlite:///studies.db"
    assert (cfg.objective, cfg.metric, cfg.direction) == ("text_classification", "val_loss", "minimize")
    assert cfg.sampler.name == "tpe" and cfg.pruner.options == {"n_startup_trials": 3}
    assert (cfg.n_trials, cfg.timeout, cfg.seed) == (12, None, 0)
    oc = cfg.objective_config
    assert (oc.model, oc.max_length, oc.epochs, oc.evals_per_epoch) == ("minilm", 64, 2, 2)
    assert oc.dataset.name == "rotten_tomatoes" and oc.dataset.max_examples == 1000
    assert oc.seed == 0 and oc.metric == "val_loss"


def test_flags_override_file_values() -> None:
    cfg = load_config(
        ROOT / "examples" / "demo.yaml",
        {"study": "other", "n_trials": 3, "timeout": 60.0, "sampler": "random", "pruner": "none",
         "seed": 7, "storage": "sqlite:///x.db"},
    )
    assert (cfg.study, cfg.n_trials, cfg.timeout, cfg.seed) == ("other", 3, 60.0, 7)
    assert cfg.sampler.name == "random" and cfg.sampler.options == {}
    assert cfg.pruner.name == "none" and cfg.storage == "sqlite:///x.db"
    assert cfg.objective_config.seed == 7


def test_same_sampler_flag_keeps_the_file_options() -> None:
    cfg = load_config(ROOT / "examples" / "demo.yaml", {"sampler": "tpe"})
    assert cfg.sampler.options == {"n_startup_trials": 4}


def test_direction_follows_the_metric() -> None:
    assert config_from_dict(base(metric="val_accuracy")).direction == "maximize"
    assert config_from_dict(base()).direction == "minimize"


def test_stored_dict_round_trips() -> None:
    cfg = load_config(ROOT / "examples" / "demo.yaml")
    again = config_from_dict({**cfg.to_dict(), "storage": cfg.storage})
    assert again == cfg


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (base(learning_rate=1e-3), "<config>: unknown key 'learning_rate' (valid: cache_dir, "),
        (base(metric="val_acc"), "<config>: metric: unknown metric 'val_acc' for objective "
                                 "'text_classification' (valid: val_loss, val_accuracy, val_f1)"),
        (base(metric="val_accuracy", direction="minimize"),
         "<config>: direction: val_accuracy should be maximized, not minimized"),
        (base(direction="up"), "<config>: direction: expected minimize or maximize, got 'up'"),
        (base(sampler={"name": "bayes"}),
         "<config>: sampler.name: unknown sampler 'bayes' (valid: tpe, nsga2, random, gp, cmaes, qmc, grid)"),
        (base(pruner="asha"), "<config>: pruner.name: unknown pruner 'asha' (valid: median, "
                              "percentile, successive-halving, hyperband, patient, threshold, pareto-halving, none)"),
        (base(objective="regression"), "<config>: objective: unknown objective 'regression'"),
        (base(n_trials=0), "<config>: n_trials: expected a positive integer, got 0"),
        (base(timeout=-1), "<config>: timeout: expected seconds > 0 or null, got -1"),
        (base(epochs=0), "<config>: epochs must be an integer >= 1, got 0"),
        (base(dataset={"name": "imdb"}), "<config>: unknown builtin dataset 'imdb' (valid: rotten_tomatoes, sms_spam, trec, vader_sources)"),
        ({"search_space": "x.yaml"}, "<config>: study: expected a study name, got None"),
        (base(search_space=None), "<config>: search_space: expected the path of a YAML file"),
        (base(grace_period=5, heartbeat_interval=10),
         "<config>: grace_period: must exceed heartbeat_interval (10), got 5"),
    ],
)
def test_bad_values_are_named(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value).startswith(message), str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the config \(No such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line 2"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty.yaml: the config is empty"):
        load_config(empty)


def test_search_space_resolves_beside_the_config_and_in_hpo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "space.yaml").write_text("x: {type: float, low: 0, high: 1}\n")
    (tmp_path / "conf" / "a.yaml").write_text("study: a\nobjective: toy\nsearch_space: space.yaml\n")
    assert load_config(tmp_path / "conf" / "a.yaml").search_space == str(tmp_path / "conf" / "space.yaml")
    (tmp_path / "conf" / "b.yaml").write_text("study: b\nsearch_space: search_spaces/default.yaml\n")
    assert Path(load_config(tmp_path / "conf" / "b.yaml").search_space).exists()


@pytest.mark.parametrize("what", ["config", "search space"])
def test_a_file_that_is_not_utf8_is_one_error(tmp_path: Path, what: str) -> None:
    """A file saved as Latin-1 (or any binary) used to end in a UnicodeDecodeError traceback."""
    from hpo.errors import SearchSpaceError
    from hpo.search_space import load_search_space

    path = tmp_path / "latin1.yaml"
    if what == "config":
        path.write_bytes("study: s\n# r\u00e9glages\nsearch_space: x.yaml\n".encode("latin-1"))
        load, error = load_config, ConfigError
    else:
        path.write_bytes("lr: {type: float, low: 0.1, high: 1}  # \u00e9\n".encode("latin-1"))
        load, error = load_search_space, SearchSpaceError
    with pytest.raises(error) as info:
        load(path)
    assert str(info.value) == (f"{path}: the {what} is not UTF-8 text (byte 0xe9 at line "
                               f"{2 if what == 'config' else 1}); save it as UTF-8")


def test_a_directory_or_fifo_as_config_is_one_error(tmp_path: Path) -> None:
    import os

    with pytest.raises(ConfigError, match=r"cannot read the config \(it is a directory\)$"):
        load_config(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"cannot read the config \(it is not a regular file\)$"):
        load_config(fifo)  # returns at once: a FIFO is never opened


LAUGHS = "".join(
    [f'{chr(97 + i)}: &{chr(97 + i)} [{", ".join([f"*{chr(96 + i)}"] * 9)}]\n' for i in range(1, 10)]
)


@pytest.mark.parametrize("what", ["config", "search space"])
def test_nested_yaml_aliases_are_refused_before_they_expand(tmp_path: Path, what: str) -> None:
    """'Billion laughs': 9 levels of 9 aliases each are 387 million strings once expanded; the
    load stops at the first alias instead (it used to run for a minute, then fail)."""
    from hpo.errors import SearchSpaceError
    from hpo.search_space import load_search_space

    path = tmp_path / "laughs.yaml"
    path.write_text('study: s\nsearch_space: x.yaml\nlol: &a "lol"\n' + LAUGHS)
    load, error = (load_config, ConfigError) if what == "config" else (load_search_space,
                                                                        SearchSpaceError)
    with pytest.raises(error) as info:
        load(path)
    assert str(info.value) == (f"{path}: line 4: YAML aliases (*a) are not allowed in the {what}; "
                               "write the values out")


@pytest.mark.parametrize("what", ["config", "search space"])
def test_a_key_given_twice_is_refused(tmp_path: Path, what: str) -> None:
    """YAML keeps the last of two equal keys without a word: n_trials: 50 ... n_trials: 5 ran 5
    trials, and a search space's second `lr` replaced the first."""
    from hpo.errors import SearchSpaceError
    from hpo.search_space import load_search_space

    path = tmp_path / "twice.yaml"
    if what == "config":
        path.write_text("study: s\nn_trials: 50\nsearch_space: x.yaml\nn_trials: 5\n")
        load, error, key, line = load_config, ConfigError, "n_trials", 4
    else:
        path.write_text("lr: {type: float, low: 0.1, high: 1}\n"
                        "bs: {type: int, low: 1, high: 4, low: 2}\n")
        load, error, key, line = load_search_space, SearchSpaceError, "low", 2
    with pytest.raises(error) as info:
        load(path)
    assert str(info.value) == (f"{path}: line {line}: duplicate key {key!r}; each key may appear "
                               "once (YAML would keep only the last)")
