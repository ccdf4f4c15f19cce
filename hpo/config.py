"""One frozen, validated :class:`StudyConfig`, built once at the CLI edge.

A config file holds study keys (below) and the objective's own keys (model, dataset, epochs, ...),
which the objective's config class validates. Flags override file values; ``--storage`` falls back
to ``HPO_STORAGE`` and then to ``sqlite:///studies.db`` (the CLI resolves that order).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any
from typing import Literal

from hpo._yaml import read_yaml
from hpo.errors import ConfigError
from hpo.storage import DEFAULT_STORAGE
from hpo.storage import StorageSettings

__all__ = [
    "MAX_STUDY_NAME",
    "PRUNERS",
    "SAMPLERS",
    "STUDY_KEYS",
    "PrunerConfig",
    "SamplerConfig",
    "StudyConfig",
    "check_study_name",
    "config_from_dict",
    "load_config",
]

SAMPLERS = ("tpe", "nsga2", "random", "gp", "cmaes", "qmc", "grid")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsga2", "random", "gp", "qmc", "grid")
PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "patient", "threshold",
           "pareto-halving", "none")

# Keys the study side owns; every other key of a config file belongs to the objective.
STUDY_KEYS = (
    "study",
    "storage",
    "objective",
    "direction",
    "sampler",
    "pruner",
    "search_space",
    "n_trials",
    "timeout",
    "heartbeat_interval",
    "grace_period",
    "max_retry",
    "devices_per_trial",
    "n_examples",
    "n_tokens",
    "start_with_recipe",
    "constraints",
    "stop",
)
# Shared by both sides: the study uses them too, and the objective gets them.
SHARED_KEYS = ("metric", "seed")
# optuna's studies.study_name column is VARCHAR(512) (MAX_INDEXED_STRING_LENGTH).
MAX_STUDY_NAME = 512


@dataclass(frozen=True)
class SamplerConfig:
    """An optuna sampler by name, with keyword options for its constructor."""

    name: str = "tpe"  # one of SAMPLERS
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 5}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class PrunerConfig:
    """An optuna pruner by name, with keyword options (steps are training examples seen)."""

    name: str = "median"  # one of PRUNERS
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 3}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs; stored in the study so that any worker can rebuild it."""

    study: str  # study name, unique in its storage
    storage: str  # storage URL (never stored in the study itself)
    objective: str  # registered objective name or "package.module:function"
    metric: str  # what the objective reports and returns
    direction: Literal["minimize", "maximize"]
    sampler: SamplerConfig
    pruner: PrunerConfig
    search_space: str  # path of the search-space YAML file
    n_trials: int | None  # trials across all workers (complete + pruned + failed); None: no limit
    timeout: float | None  # study wall time (its trials' busy time), across workers; None: none
    seed: int  # seed of the sampler, the data splits and the training
    objective_config: Any  # the objective's frozen config dataclass (or a dict)
    storage_settings: StorageSettings = field(default_factory=StorageSettings)
    devices_per_trial: int = 1  # >1: each trial is a data-parallel job on that many devices
    n_examples: int | None = None  # training examples of all trials together; None: no limit
    n_tokens: int | None = None  # training tokens of all trials together; None: no limit
    start_with_recipe: bool = True  # a new study's first trial is the task's usual recipe
    metrics: tuple[str, ...] = ()  # every objective: the metric first, then metrics or costs
    directions: tuple[str, ...] = ()
    constraints: tuple[tuple[str, str, float], ...] = ()  # (cost or metric, "max"|"min", bound)
    stop: dict[str, float] | None = None  # patience/min_delta, or target: stop the study early
    # Keys the user set (file or flags); the rest defaulted. Not part of the config's identity.
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def device(self) -> str | None:
        """The objective's ``device`` setting (None for objectives without one)."""
        return getattr(self.objective_config, "device", None)

    def with_device(self, device: str) -> StudyConfig:
        """This config with the objective training on ``device`` (``--device``, or the GPU a
        launcher pinned a worker to); objectives without a device setting are unchanged."""
        if self.device is None:
            return self
        return replace(self, objective_config=replace(self.objective_config, device=device))

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def to_dict(self) -> dict[str, Any]:
        """The config as stored in the study (JSON-able, without the storage URL)."""
        from objectives import resolve_objective

        spec = resolve_objective(self.objective)
        several = self.multi_objective
        return {
            "study": self.study,
            "objective": self.objective,
            "metric": list(self.metrics) if several else self.metric,
            "direction": list(self.directions) if several else self.direction,
            "sampler": self.sampler.to_dict(),
            "pruner": self.pruner.to_dict(),
            "search_space": self.search_space,
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "seed": self.seed,
            "heartbeat_interval": self.storage_settings.heartbeat_interval,
            "grace_period": self.storage_settings.grace_period,
            "max_retry": self.storage_settings.max_retry,
            "devices_per_trial": self.devices_per_trial,
            "n_examples": self.n_examples,
            "n_tokens": self.n_tokens,
            "start_with_recipe": self.start_with_recipe,
            "constraints": {name: {op: bound} for name, op, bound in self.constraints} or None,
            "stop": self.stop,
            **{
                k: v
                for k, v in spec.config_to_dict(self.objective_config).items()
                if k not in SHARED_KEYS
            },
        }


def _named(source: str, key: str, value: Any, valid: tuple[str, ...]) -> tuple[str, dict]:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{source}: {key}: expected {{name: ...}}, got {value!r}")
    value = dict(value)
    name = value.pop("name")
    if name not in valid:
        raise ConfigError(f"{source}: {key}.name: unknown {key} {name!r} (valid: {', '.join(valid)})")
    return name, value


def _objectives(source: str, data: dict[str, Any], spec: Any,
                objective: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metrics a study optimizes (one, or several: the metric first, then metrics or costs)
    and their directions (each one's natural direction unless given)."""
    from objectives.record import COSTS

    raw = data.get("metric", next(iter(spec.metrics)) if spec.metrics else "value")
    names = raw if isinstance(raw, list) else [raw]
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{source}: metric: expected a metric name or a list of distinct "
                          f"names, got {raw!r}")
    valid = [*spec.metrics, *COSTS] if spec.metrics else []
    for i, name in enumerate(names):
        if spec.metrics and name not in (spec.metrics if i == 0 else valid):
            choices = ", ".join(spec.metrics) if i == 0 else ", ".join(valid)
            what = "metric" if i == 0 else "metric or cost"
            raise ConfigError(f"{source}: metric: unknown {what} {name!r} for objective "
                              f"{objective!r} (valid{' first' if len(names) > 1 and i == 0 else ''}: "
                              f"{choices})")
    natural = [spec.metrics.get(n, "minimize") if spec.metrics else None for n in names]
    given = data.get("direction")
    if given is None:
        directions = [d or "minimize" for d in natural]
    else:
        directions = given if isinstance(given, list) else [given]
        if len(directions) != len(names):
            raise ConfigError(f"{source}: direction: {len(directions)} direction(s) for "
                              f"{len(names)} metric(s); give one per metric, or none")
    for name, d, nat in zip(names, directions, natural, strict=True):
        if d not in ("minimize", "maximize"):
            raise ConfigError(f"{source}: direction: expected minimize or maximize, got {d!r}")
        if nat is not None and d != nat:
            raise ConfigError(f"{source}: direction: {name} should be {nat}d, not {d}d "
                              f"(omit direction to use {nat})")
    return tuple(names), tuple(directions)


def _constraints(source: str, raw: Any, spec: Any) -> tuple[tuple[str, str, float], ...]:
    """``{name: {max: x}}`` or ``{name: {min: x}}`` on recorded costs and metrics."""
    from objectives.record import COSTS

    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: constraints: expected a mapping like "
                          f"{{peak_memory_mb: {{max: 16000}}}}, got {raw!r}")
    valid = [*COSTS, *spec.metrics]
    out = []
    for name, bound in raw.items():
        if name not in valid:
            raise ConfigError(f"{source}: constraints: unknown cost {name!r} (valid: "
                              f"{', '.join(valid)})")
        if (not isinstance(bound, dict) or len(bound) != 1 or next(iter(bound)) not in ("max", "min")
                or isinstance(next(iter(bound.values())), bool)
                or not isinstance(next(iter(bound.values())), int | float)):
            raise ConfigError(f"{source}: constraints.{name}: expected {{max: number}} or "
                              f"{{min: number}}, got {bound!r}")
        ((op, value),) = bound.items()
        out.append((str(name), op, float(value)))
    return tuple(out)


def _stop(source: str, raw: Any) -> dict[str, float] | None:
    """``stop: {patience: n, min_delta: x}`` and/or ``{target: x}``."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw or set(raw) - {"patience", "min_delta", "target"}:
        raise ConfigError(f"{source}: stop: expected patience (trials without improvement, "
                          f"with min_delta) and/or target, got {raw!r}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: stop.{key}: expected a number, got {value!r}")
    if "patience" in raw and (not isinstance(raw["patience"], int) or raw["patience"] < 1):
        raise ConfigError(f"{source}: stop.patience: expected an integer >= 1, got {raw['patience']!r}")
    if "min_delta" in raw and ("patience" not in raw or raw["min_delta"] < 0):
        raise ConfigError(f"{source}: stop.min_delta: needs patience, and must be >= 0")
    return {k: float(v) if k != "patience" else int(v) for k, v in raw.items()}


def _count(source: str, key: str, value: Any) -> int | None:
    """A count that YAML may give as a float (``1.0e6``); None stays None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _positive_int(source, key, value)


def _flag(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
    return value


def _positive_int(source: str, key: str, value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: {key}: expected a positive integer, got {value!r}")
    return value


def check_study_name(name: str, where: str = "--study") -> None:
    """Refuse a study name longer than the storage's column, before anything is written.

    Raises:
        ConfigError: ``WHERE: study name is N characters; at most 512``.
    """
    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(
            f"{where}: study name is {len(name)} characters; at most {MAX_STUDY_NAME}"
        )


def config_from_dict(
    raw: dict[str, Any], source: str = "<config>", overrides: dict[str, Any] | None = None
) -> StudyConfig:
    """Validate a config mapping (file values, then non-None ``overrides``) into a StudyConfig.

    Raises:
        ConfigError: a missing, unknown or invalid key, named with ``source``.
    """
    from objectives import resolve_objective

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    data = dict(raw)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("sampler", "pruner") and isinstance(value, str):
            current = data.get(key)
            same = isinstance(current, dict) and current.get("name") == value
            value = current if same else {"name": value}
        data[key] = value
    objective = data.get("objective", "text_classification")
    try:
        spec = resolve_objective(str(objective))
    except (KeyError, ImportError, TypeError) as exc:
        raise ConfigError(f"{source}: objective: {exc.args[0]}") from None

    study = data.get("study")
    if not isinstance(study, str) or not study.strip():
        raise ConfigError(f"{source}: study: expected a study name, got {study!r}")
    check_study_name(study, f"{source}: study")
    metrics, directions = _objectives(source, data, spec, str(objective))
    metric, direction = metrics[0], directions[0]
    sampler_name, sampler_opts = _named(source, "sampler", data.get("sampler", "tpe"), SAMPLERS)
    several = len(metrics) > 1
    if several and sampler_name not in MULTI_OBJECTIVE_SAMPLERS:
        raise ConfigError(
            f"{source}: sampler: {sampler_name!r} cannot optimize several objectives (valid for "
            f"several: {', '.join(MULTI_OBJECTIVE_SAMPLERS)})")
    default_pruner = "pareto-halving" if several else "median"
    pruner_name, pruner_opts = _named(source, "pruner", data.get("pruner", default_pruner), PRUNERS)
    if several and pruner_name not in ("pareto-halving", "none"):
        raise ConfigError(
            f"{source}: pruner: {pruner_name!r} compares one objective; a study of several "
            "objectives prunes with pareto-halving (or none)")
    if not several and pruner_name == "pareto-halving":
        raise ConfigError(f"{source}: pruner: pareto-halving needs several objectives "
                          "(metric: [a metric, a cost...]); use successive-halving")
    search_space = data.get("search_space", "auto")  # auto: the objective's, sized to the data
    if not isinstance(search_space, str):
        raise ConfigError(f"{source}: search_space: expected the path of a YAML file, got {search_space!r}")
    timeout = data.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ConfigError(f"{source}: timeout: expected seconds > 0 or null, got {timeout!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{source}: seed: expected an integer, got {seed!r}")
    settings = StorageSettings()
    for key in ("heartbeat_interval", "grace_period", "max_retry"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{source}: {key}: expected an integer >= 0, got {value!r}")
            settings = replace(settings, **{key: value})
    if settings.heartbeat_interval and settings.grace_period <= settings.heartbeat_interval:
        raise ConfigError(
            f"{source}: grace_period: must exceed heartbeat_interval "
            f"({settings.heartbeat_interval}), got {settings.grace_period}"
        )
    objective_raw = {k: v for k, v in data.items() if k not in STUDY_KEYS}
    objective_raw["metric"] = metric
    objective_raw["seed"] = seed
    try:
        objective_config = spec.config_from_dict(objective_raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return StudyConfig(
        study=study,
        storage=str(data.get("storage") or DEFAULT_STORAGE),
        objective=str(objective),
        metric=str(metric),
        direction=direction,
        sampler=SamplerConfig(sampler_name, sampler_opts),
        pruner=PrunerConfig(pruner_name, pruner_opts),
        search_space=search_space,
        n_trials=_positive_int(source, "n_trials", data.get("n_trials")),
        timeout=float(timeout) if timeout is not None else None,
        seed=seed,
        objective_config=objective_config,
        storage_settings=settings,
        devices_per_trial=_positive_int(source, "devices_per_trial",
                                        data.get("devices_per_trial", 1), allow_none=False),
        n_examples=_count(source, "n_examples", data.get("n_examples")),
        n_tokens=_count(source, "n_tokens", data.get("n_tokens")),
        start_with_recipe=_flag(source, "start_with_recipe", data.get("start_with_recipe", True)),
        metrics=metrics,
        directions=directions,
        constraints=_constraints(source, data.get("constraints"), spec),
        stop=_stop(source, data.get("stop")),
        given=frozenset(k for k, v in data.items() if v is not None),
    )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a YAML config file and apply flag ``overrides`` (None values are ignored).

    Relative ``search_space`` paths are resolved against the working directory first, then the
    config file's directory, then hpo's own checkout (``search_spaces/default.yaml`` works anywhere).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 or not valid YAML, or a key
            is invalid.

    Example:
        >>> cfg = load_config("examples/demo.yaml", {"n_trials": 4})
    """
    path = Path(path)
    raw = read_yaml(path, "config", ConfigError)
    if raw is None:
        raise ConfigError(f"{path}: the config is empty")
    if isinstance(raw, dict) and isinstance(raw.get("search_space"), str):
        space = Path(raw["search_space"])
        if not space.is_absolute() and not space.exists():
            # Then beside the config file, then the search_spaces/ shipped with hpo.
            for base in (path.parent, Path(__file__).resolve().parent.parent):
                if (base / space).exists():
                    raw = {**raw, "search_space": str(base / space)}
                    break
    return config_from_dict(raw, str(path), overrides)
