"""YAML -> validated config.

A config file has the seed's sections (``seed``, ``data``, ``model``,
``training``, ``optimizer``, ``scheduler``, ``search``) plus ``ray``. Loading
validates every key raysweep knows and fills in defaults; every error names the
file and the dotted key path and is raised as :class:`~raysweep.errors.ConfigError`.

With the built-in trainer an unknown key is an error (with a did-you-mean).
With a user entrypoint (``training.entrypoint: "pkg.mod:fn"``) unknown keys and
sections pass through untouched to the user's function, while raysweep's own
keys are still checked.

Nothing here imports ray, torch or optuna.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from raysweep import constants
from raysweep.errors import ConfigError

# ---------------------------------------------------------------------------
# Schema: section -> key -> Field. A Field knows its type, default and checks.
# ---------------------------------------------------------------------------

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Field:
    kind: str                      # int | float | str | bool | any | list | map
    default: Any = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None   # inclusive
    positive: bool = False         # strictly > 0
    doc: str = ""


def _f(kind: str, default: Any = None, **kw: Any) -> Field:
    return Field(kind, default, **kw)


TRAINER_SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "dataset_name": _f("str", None, nullable=True, doc="name used for runs and studies"),
        "data_dir": _f("str", None, nullable=True, doc="data/<name> with raw/ and splits/"),
        "fold": _f("int", 0, minimum=0),
        "image_size": _f("int", 32, positive=True),
        "grayscale": _f("bool", False),
        "augment": _f("bool", True, doc="random horizontal flip for training"),
        "num_workers": _f("int", 0, minimum=0),
        "cache": _f("bool", True, doc="decode images once per node into a uint8 cache"),
        "cache_dir": _f("str", None, nullable=True),
    },
    "model": {
        "name": _f("str", "simple_cnn"),
        "num_classes": _f("int", None, nullable=True, positive=True),
        "dropout": _f("float", 0.2, minimum=0.0),
        "pretrained": _f("bool", False),
    },
    "training": {
        "batch_size": _f("int", 32, positive=True),
        "num_epochs": _f("int", 10, positive=True),
        "device": _f("str", "auto"),
        "mixed_precision": _f("bool", False),
        "entrypoint": _f("str", None, nullable=True, doc='"package.module:function"'),
        "output_dir": _f("str", "runs"),
        "log_interval": _f("int", 0, minimum=0),
    },
    "optimizer": {
        "name": _f("str", "sgd", choices=("sgd", "adam", "adamw")),
        "lr": _f("float", 0.01, positive=True),
        "momentum": _f("float", 0.9, minimum=0.0),
        "weight_decay": _f("float", 0.0, minimum=0.0),
    },
    "scheduler": {
        "name": _f("str", "step", choices=("step", "cosine", "none")),
        "step_size": _f("int", 10, positive=True),
        "gamma": _f("float", 0.1, positive=True),
        "T_max": _f("int", None, nullable=True, positive=True),
    },
}

SAMPLERS = ("TPESampler", "RandomSampler", "CmaEsSampler", "GridSampler")
PRUNERS = ("MedianPruner", "ASHA", "none")
PARAM_TYPES = ("uniform", "loguniform", "int", "float", "categorical")
AGGREGATIONS = ("mean", "median", "worst")

SEARCH_SCHEMA: dict[str, Field] = {
    "study_name": _f("str", None, nullable=True),
    "n_trials": _f("int", 20, minimum=1),
    "timeout": _f("float", None, nullable=True, positive=True),
    "metric": _f("str", "val_acc"),
    "direction": _f("str", "maximize", choices=("maximize", "minimize")),
    "objective": _f("str", "best", choices=("best", "last"),
                    doc="the trial's value: best or last reported metric"),
    "sampler": _f("map", None, nullable=True),
    "pruner": _f("any", None, nullable=True, doc="mapping, or \"none\" to switch pruning off"),
    "storage": _f("str", None, nullable=True),
    "include_baseline": _f("bool", True),
    "search_space": _f("map", None, nullable=True),
    "output_dir": _f("str", constants.DEFAULT_STUDIES_DIR),
    "cross_validation": _f("map", None, nullable=True),
}

SAMPLER_SCHEMA: dict[str, Field] = {
    "type": _f("str", "TPESampler", choices=SAMPLERS),
    "n_startup_trials": _f("int", 10, minimum=0),
    "seed": _f("int", None, nullable=True),
    "constant_liar": _f("bool", True),
    "multivariate": _f("bool", False),
}

PRUNER_SCHEMA: dict[str, Field] = {
    "type": _f("str", "MedianPruner", choices=PRUNERS),
    "n_startup_trials": _f("int", 5, minimum=0),
    "n_warmup_steps": _f("int", 5, minimum=0),
    "interval_steps": _f("int", 1, minimum=1),
    "grace_period": _f("int", 1, minimum=1),
    "reduction_factor": _f("float", 3, minimum=2),
}

CV_SCHEMA: dict[str, Field] = {
    "enabled": _f("bool", False),
    "n_folds": _f("int", 5, minimum=2),
    "aggregation": _f("str", "mean", choices=AGGREGATIONS),
}

RAY_SCHEMA: dict[str, Field] = {
    "address": _f("str", None, nullable=True),
    "storage_path": _f("str", constants.DEFAULT_RAY_STORAGE),
    "storage_endpoint": _f("str", None, nullable=True),
    "resources_per_trial": _f("map", None, nullable=True),
    "max_concurrent_trials": _f("int", None, nullable=True, minimum=1),
    "max_failures": _f("int", 2, minimum=0),
    "keep_checkpoints": _f("int", 2, minimum=1),
    "keep_best_trials": _f("int", 1, minimum=0),
    "reuse_actors": _f("bool", True),
}

RESOURCES_SCHEMA: dict[str, Field] = {
    "cpu": _f("float", 1.0, minimum=0.0),
    "gpu": _f("float", 0.0, minimum=0.0),
}

PARAM_FIELDS: dict[str, tuple[str, ...]] = {
    "uniform": ("type", "low", "high"),
    "loguniform": ("type", "low", "high"),
    "float": ("type", "low", "high", "step", "log"),
    "int": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices"),
}

# ---------------------------------------------------------------------------
# Typed config objects
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One entry of ``search.search_space``: a dotted config key and its range."""

    name: str                       # dotted key, e.g. "optimizer.lr"
    type: str                       # one of PARAM_TYPES
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SamplerConfig:
    type: str = "TPESampler"
    n_startup_trials: int = 10
    seed: int | None = None
    constant_liar: bool = True
    multivariate: bool = False


@dataclass(frozen=True)
class PrunerConfig:
    type: str = "MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 5
    interval_steps: int = 1
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class CrossValidationConfig:
    enabled: bool = False
    n_folds: int = 5
    aggregation: str = "mean"


@dataclass(frozen=True)
class SearchConfig:
    study_name: str
    n_trials: int
    timeout: float | None
    metric: str
    direction: str
    objective: str
    sampler: SamplerConfig
    pruner: PrunerConfig
    storage: str | None
    include_baseline: bool
    space: tuple[ParamSpec, ...]
    output_dir: str
    cross_validation: CrossValidationConfig

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.study_name


@dataclass(frozen=True)
class RayConfig:
    address: str | None
    storage_path: str
    storage_endpoint: str | None
    cpu: float
    gpu: float
    max_concurrent_trials: int | None
    max_failures: int
    keep_checkpoints: int
    keep_best_trials: int
    reuse_actors: bool


@dataclass(frozen=True)
class Config:
    """A loaded, validated config.

    ``data`` is the full config as a plain nested dict with defaults filled in:
    it is what a trial's function receives (with the trial's parameters set).
    """

    path: str
    data: dict[str, Any]
    search: SearchConfig
    ray: RayConfig
    entrypoint: str | None = None
    has_search: bool = True
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_epochs(self) -> int:
        return int(self.data.get("training", {}).get("num_epochs") or 1)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; unreadable files and non-mappings are ConfigErrors."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file ({exc.strerror})", path=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"invalid YAML{where}: {problem}", path=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of sections, got {type(data).__name__}",
            path=str(path),
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=0.01"`` -> ``("optimizer.lr", 0.01)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating intermediate mappings."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def get_dotted(data: Mapping[str, Any], key: str, default: Any = _NO_DEFAULT) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def has_dotted(data: Mapping[str, Any], key: str) -> bool:
    missing = object()
    return get_dotted(data, key, missing) is not missing


def load_config(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    require_search: bool = True,
) -> Config:
    """Read, override and validate a config file.

    ``overrides`` are ``key=value`` strings (``--set``); they are applied before
    validation so a bad override is reported like a bad file entry.
    """
    raw = read_yaml(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return validate(raw, path=str(path), require_search=require_search, overrides=tuple(overrides))


def validate(
    raw: Mapping[str, Any],
    *,
    path: str = "<config>",
    require_search: bool = True,
    overrides: tuple[str, ...] = (),
) -> Config:
    """Validate a config mapping and return a :class:`Config`."""
    v = _Validator(path)
    data: dict[str, Any] = copy.deepcopy(dict(raw))

    entrypoint = None
    training = data.get("training")
    if isinstance(training, Mapping):
        ep = training.get("entrypoint")
        if ep is not None:
            entrypoint = v.check_value("training.entrypoint", ep, TRAINER_SCHEMA["training"]["entrypoint"])
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", entrypoint):
                raise v.error("training.entrypoint",
                              f'must look like "package.module:function", got {entrypoint!r}')
    strict = entrypoint is None

    known_sections = {"seed", "search", "ray", *TRAINER_SCHEMA}
    if strict:
        for section in data:
            if section not in known_sections:
                raise v.unknown(section, section, known_sections)

    seed = data.get("seed", 42)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise v.error("seed", f"must be an integer, got {seed!r}")
    data["seed"] = seed

    # trainer sections: check known keys, fill defaults
    for section, schema in TRAINER_SCHEMA.items():
        sec = data.get(section)
        if sec is None:
            sec = {}
        if not isinstance(sec, Mapping):
            raise v.error(section, f"must be a mapping, got {type(sec).__name__}")
        data[section] = v.check_section(section, dict(sec), schema, strict=strict)

    # search
    search_raw = data.get("search")
    has_search = search_raw is not None
    if search_raw is None:
        if require_search:
            raise v.error("search", "is missing; add a search block (raysweep init --optuna writes one)")
        search_raw = {}
    if not isinstance(search_raw, Mapping):
        raise v.error("search", f"must be a mapping, got {type(search_raw).__name__}")
    search_d = v.check_section("search", dict(search_raw), SEARCH_SCHEMA, strict=True)
    search = _build_search(v, data, search_d, require_space=require_search)
    data["search"] = _search_to_dict(search_d, search)

    ray_raw = data.get("ray") or {}
    if not isinstance(ray_raw, Mapping):
        raise v.error("ray", f"must be a mapping, got {type(ray_raw).__name__}")
    ray_d = v.check_section("ray", dict(ray_raw), RAY_SCHEMA, strict=True)
    res = ray_d.get("resources_per_trial") or {}
    if not isinstance(res, Mapping):
        raise v.error("ray.resources_per_trial", f"must be a mapping, got {type(res).__name__}")
    res_d = v.check_section("ray.resources_per_trial", dict(res), RESOURCES_SCHEMA, strict=True)
    if res_d["cpu"] == 0 and res_d["gpu"] == 0:
        raise v.error("ray.resources_per_trial", "a trial needs some cpu or gpu, got cpu: 0, gpu: 0")
    if res_d["gpu"] > 1 and res_d["gpu"] != int(res_d["gpu"]):
        raise v.error("ray.resources_per_trial.gpu",
                      f"fractions are allowed below 1 only (0.25, 0.5), got {res_d['gpu']}")
    ray_d["resources_per_trial"] = res_d
    data["ray"] = ray_d
    ray = RayConfig(
        address=ray_d["address"],
        storage_path=ray_d["storage_path"],
        storage_endpoint=ray_d["storage_endpoint"],
        cpu=float(res_d["cpu"]),
        gpu=float(res_d["gpu"]),
        max_concurrent_trials=ray_d["max_concurrent_trials"],
        max_failures=ray_d["max_failures"],
        keep_checkpoints=ray_d["keep_checkpoints"],
        keep_best_trials=ray_d["keep_best_trials"],
        reuse_actors=ray_d["reuse_actors"],
    )
    if search.storage and "://" not in search.storage:
        raise v.error("search.storage",
                      f"must be a database URL (sqlite:///path.db, postgresql://...), got {search.storage!r}")
    return Config(path=path, data=data, search=search, ray=ray, entrypoint=entrypoint,
                  has_search=has_search, overrides=overrides)


def _search_to_dict(search_d: dict[str, Any], search: SearchConfig) -> dict[str, Any]:
    out = dict(search_d)
    out["study_name"] = search.study_name
    out["sampler"] = dict(search.sampler.__dict__)
    out["pruner"] = dict(search.pruner.__dict__)
    out["cross_validation"] = dict(search.cross_validation.__dict__)
    return out


def _build_search(v: "_Validator", data: dict[str, Any], s: dict[str, Any], *, require_space: bool) -> SearchConfig:
    sampler_raw = s.get("sampler") or {}
    if not isinstance(sampler_raw, Mapping):
        raise v.error("search.sampler", f"must be a mapping, got {type(sampler_raw).__name__}")
    sd = v.check_section("search.sampler", dict(sampler_raw), SAMPLER_SCHEMA, strict=True)
    if sd["seed"] is None:
        sd["seed"] = data.get("seed")
    sampler = SamplerConfig(**sd)

    pruner_raw = s.get("pruner")
    if pruner_raw is None:
        pruner_raw = {}          # default: MedianPruner; write `pruner: none` to switch pruning off
    if isinstance(pruner_raw, str):
        pruner_raw = {"type": pruner_raw}
    if not isinstance(pruner_raw, Mapping):
        raise v.error("search.pruner", f"must be a mapping, got {type(pruner_raw).__name__}")
    pruner_raw = dict(pruner_raw)
    if isinstance(pruner_raw.get("type"), str) and pruner_raw["type"].lower() in ("none", "nop", "nopruner"):
        pruner_raw["type"] = "none"
    if isinstance(pruner_raw.get("type"), str) and pruner_raw["type"].lower() in ("asha", "ashascheduler"):
        pruner_raw["type"] = "ASHA"
    pd = v.check_section("search.pruner", pruner_raw, PRUNER_SCHEMA, strict=True)
    pruner = PrunerConfig(**pd)

    cv_raw = s.get("cross_validation") or {}
    if not isinstance(cv_raw, Mapping):
        raise v.error("search.cross_validation", f"must be a mapping, got {type(cv_raw).__name__}")
    cv = CrossValidationConfig(**v.check_section("search.cross_validation", dict(cv_raw), CV_SCHEMA, strict=True))

    space_raw = s.get("search_space")
    if space_raw is None:
        space_raw = {}
    if not isinstance(space_raw, Mapping):
        raise v.error("search.search_space", f"must be a mapping of key: range, got {type(space_raw).__name__}")
    if require_space and not space_raw:
        raise v.error("search.search_space", "is empty; name at least one parameter to search")
    space = tuple(_param(v, data, str(name), spec) for name, spec in space_raw.items())

    if sampler.type == "GridSampler":
        for p in space:
            if p.type not in ("categorical", "int") and p.step is None:
                raise v.error(f"search.search_space.{p.name}.type",
                              f"GridSampler needs categorical, int or stepped float parameters, got {p.type}")

    study_name = s.get("study_name")
    if not study_name:
        ds = data.get("data", {}).get("dataset_name")
        stem = re.sub(r"[^A-Za-z0-9_.\-]", "", Path(v.path).stem) or "sweep"
        study_name = f"{ds}_optimization" if ds else f"{stem}_optimization"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", study_name):
        raise v.error("search.study_name",
                      f"may hold letters, digits, '_', '-' and '.' only, got {study_name!r}")
    return SearchConfig(
        study_name=study_name,
        n_trials=s["n_trials"],
        timeout=s["timeout"],
        metric=s["metric"],
        direction=s["direction"],
        objective=s["objective"],
        sampler=sampler,
        pruner=pruner,
        storage=s["storage"],
        include_baseline=s["include_baseline"],
        space=space,
        output_dir=s["output_dir"],
        cross_validation=cv,
    )


def _param(v: "_Validator", data: dict[str, Any], name: str, spec: Any) -> ParamSpec:
    key = f"search.search_space.{name}"
    if not isinstance(spec, Mapping):
        raise v.error(key, f"must be a mapping like {{type: uniform, low: 0, high: 1}}, got {spec!r}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        if ptype is None:
            raise v.error(f"{key}.type", f"is missing; one of {', '.join(PARAM_TYPES)}")
        raise v.unknown(f"{key}.type", str(ptype), PARAM_TYPES, what="parameter type")
    allowed = PARAM_FIELDS[ptype]
    for k in spec:
        if k not in allowed:
            raise v.unknown(f"{key}.{k}", str(k), allowed, what=f"field for type {ptype}")
    if name.split(".")[0] in ("search", "ray") or not has_dotted(data, name):
        raise v.error(key, f"is not a key of the config; the search space may only name existing keys "
                           f"(e.g. optimizer.lr){_did_you_mean(name, _all_keys(data))}")

    if ptype == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise v.error(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise v.error(f"{key}.choices", f"choices must be numbers, strings, booleans or null, got {c!r}")
        return ParamSpec(name=name, type=ptype, choices=tuple(choices))

    is_int = ptype == "int"
    for bound in ("low", "high"):
        if bound not in spec:
            raise v.error(f"{key}.{bound}", f"is missing for type {ptype}")
    low = v.number(f"{key}.low", spec["low"], integer=is_int)
    high = v.number(f"{key}.high", spec["high"], integer=is_int)
    if low >= high:
        raise v.error(f"{key}.low", f"must be < high ({high}), got {low}")
    log = ptype == "loguniform" or bool(spec.get("log", False))
    if "log" in spec and not isinstance(spec["log"], bool):
        raise v.error(f"{key}.log", f"must be true or false, got {spec['log']!r}")
    if log and low <= 0:
        raise v.error(f"{key}.low", f"must be > 0 for a log scale, got {low}")
    step = spec.get("step")
    if step is not None:
        step = v.number(f"{key}.step", step, integer=is_int)
        if step <= 0:
            raise v.error(f"{key}.step", f"must be > 0, got {step}")
        if log and step != 1:
            raise v.error(f"{key}.step", "cannot be combined with log: true (Optuna samples log ranges without a step)")
        if log and not is_int:
            raise v.error(f"{key}.step", "cannot be combined with log: true")
    elif is_int:
        step = 1
    return ParamSpec(name=name, type=ptype, low=low, high=high, step=step, log=log)


def _all_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, val in data.items():
        full = f"{prefix}{k}"
        if isinstance(val, Mapping):
            out.extend(_all_keys(val, full + "."))
        else:
            out.append(full)
    return out


def _did_you_mean(word: str, options: Any) -> str:
    match = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, key=key)

    def unknown(self, key: str, word: str, options: Any, what: str = "key") -> ConfigError:
        return self.error(key, f"unknown {what} {word!r}{_did_you_mean(word, options)}")

    def number(self, key: str, value: Any, *, integer: bool = False) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.error(key, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise self.error(key, f"must be a number, got {value!r}")
        if integer:
            if float(value) != int(value):
                raise self.error(key, f"must be an integer, got {value!r}")
            return int(value)
        return float(value)

    def check_value(self, key: str, value: Any, f: Field) -> Any:
        if value is None:
            if f.nullable:
                return None
            raise self.error(key, "must not be null")
        kind = f.kind
        if kind == "int":
            value = self.number(key, value, integer=True)
        elif kind == "float":
            value = self.number(key, value)
        elif kind == "str":
            if not isinstance(value, str):
                raise self.error(key, f"must be a string, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise self.error(key, f"must be true or false, got {value!r}")
        elif kind == "map":
            if not isinstance(value, Mapping):
                raise self.error(key, f"must be a mapping, got {value!r}")
        if f.choices is not None and value not in f.choices:
            raise self.error(key, f"must be one of {', '.join(map(str, f.choices))}, got {value!r}"
                                  f"{_did_you_mean(str(value), f.choices)}")
        if kind in ("int", "float"):
            if f.positive and value <= 0:
                raise self.error(key, f"must be > 0, got {value}")
            if f.minimum is not None and value < f.minimum:
                raise self.error(key, f"must be >= {f.minimum:g}, got {value}")
        return value

    def check_section(self, name: str, sec: dict[str, Any], schema: Mapping[str, Field], *, strict: bool) -> dict[str, Any]:
        out = dict(sec)
        if strict:
            for key in sec:
                if key not in schema:
                    raise self.unknown(f"{name}.{key}", str(key), schema)
        for key, f in schema.items():
            if key in sec:
                out[key] = self.check_value(f"{name}.{key}", sec[key], f)
            else:
                out[key] = copy.deepcopy(f.default)
        return out


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")


def mask_url(text: str | None) -> str | None:
    """Hide the password of every URL in ``text``: ``postgresql://u:***@host/db``."""
    if text is None:
        return None
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))


def masked_dict(data: Any) -> Any:
    """A deep copy of ``data`` with every URL password masked."""
    if isinstance(data, Mapping):
        return {k: masked_dict(val) for k, val in data.items()}
    if isinstance(data, list):
        return [masked_dict(x) for x in data]
    if isinstance(data, str):
        return mask_url(data)
    return data


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)

