"""Recipes: YAML files naming steps and their options, validated into method configs."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

from cnnzip.errors import CnnzipError
from cnnzip.methods import STEPS

BUILTIN = Path(__file__).parent


@dataclass(frozen=True)
class Recipe:
    """A named list of method configs, applied in order (their order is checked when the
    recipe is made, before anything runs)."""

    name: str
    steps: tuple[tuple[str, Any], ...]
    source: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_order([kind for kind, _ in self.steps], self.source)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def option_groups(config_type: type) -> dict[str, type]:
    """A step config's option groups: the fields whose type is itself a dataclass
    (``policy``, ``sensitivity``), by name."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)
            if dataclasses.is_dataclass(hints[f.name])}


def _nest(where: str, config_type: type, options: dict[str, Any]) -> dict[str, Any]:
    """A step's options with its groups gathered: ``policy: {episodes: 50}``, the flat key
    ``policy_episodes: 50`` (how recipes wrote it before groups) and ``--set``'s
    ``policy.episodes`` are the same option, the flat or dotted key winning over the group's; a
    plain value for a group that has a ``method`` (``policy: ddpg``) is its method."""
    options = dict(options)
    for name, group in option_groups(config_type).items():
        keys = {f.name for f in dataclasses.fields(group)}
        value = options.pop(name, None)
        if value is not None and not isinstance(value, dict):
            if "method" not in keys:
                raise CnnzipError(f"{where}: {name} is a group of options; write "
                                  f"'{name}: {{KEY: VALUE}}' with KEY one of "
                                  f"{', '.join(sorted(keys))}")
            value = {"method": value}
        value = dict(value or {})
        prefixes = (f"{name}_", f"{name}.")
        for key in [k for k in options if k.startswith(prefixes) and k[len(name) + 1:] in keys]:
            value[key[len(name) + 1:]] = options.pop(key)
        unknown = sorted(set(value) - keys)
        if unknown:
            raise CnnzipError(f"{where}: unknown key '{name}.{unknown[0]}'; {name}'s keys are "
                              f"{', '.join(sorted(keys))}")
        if value:
            options[name] = value
    return options


# Bounds every step's options of these names keep (a group's too), beside each config's own
# checks: (low, high, low inclusive, high inclusive); None is unbounded. Every float option
# must also be finite.
BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (0, None, True, True), "slimming_epochs": (0, None, True, True),
    "weight_epochs": (0, None, True, True), "finetune_epochs": (0, None, True, True),
    "lr": (0, None, False, True), "rounds": (1, None, True, True), "steps": (1, None, True, True),
    "samples": (1, None, True, True), "fisher_samples": (1, None, True, True),
    "calibration": (1, None, True, True), "batches": (1, None, True, True),
    "episodes": (1, None, True, True), "iterations": (1, None, True, True),
    "sparsity": (0, 1, True, False), "target_sparsity": (0, 1, True, False),
    "max_sparsity": (0, 1, False, True), "tolerance": (0, 1, True, True),
    "bits_tolerance": (0, 1, True, True), "max_drop": (0, 1, True, True),
    "splice_margin": (0, 1, True, False), "ramp": (0, 1, True, True),
    "sparsities": (0, 1, False, False), "ratios": (0, 1, False, False),
}


def _values(value: Any) -> list[float]:
    """The numbers in an option's value (a number, or a tuple, list or mapping of them)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _values(item)]
    return []


def check_bounds(where: str, config: Any, prefix: str = "") -> None:
    """Refuse a non-finite number anywhere in ``config`` and a value outside :data:`BOUNDS`
    (``sparsities: []`` too), in its groups as well; messages start with ``where``."""
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_bounds(where, value, f"{name}.")
            continue
        numbers = _values(value)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise CnnzipError(f"{where}: {name} must be finite, got {value!r}")
        if f.name not in BOUNDS or value is None:
            continue
        low, high, low_in, high_in = BOUNDS[f.name]
        if isinstance(value, (list, tuple)) and not value:
            raise CnnzipError(f"{where}: {name} is empty")
        for v in numbers:
            if (low is not None and (v < low if low_in else v <= low)) \
                    or (high is not None and (v > high if high_in else v >= high)):
                span = (f"at least {low}" if low_in else f"above {low}") if high is None \
                    else f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                raise CnnzipError(f"{where}: {name} must be {span}, got {v!r}")


def _step(where: str, kind: str, options: Any) -> Any:
    if kind not in STEPS:
        raise CnnzipError(f"{where}: unknown step {kind!r}; steps are {', '.join(STEPS)}")
    options = options or {}
    if not isinstance(options, dict):
        raise CnnzipError(f"{where} ({kind}): options must be a mapping")
    config_type = STEPS[kind].config
    options = _nest(f"{where} ({kind})", config_type, options)
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise CnnzipError(f"{where} ({kind}): unknown key {unknown[0]!r}; "
                          f"known keys are {', '.join(sorted(known))}")
    try:
        config = pydantic.TypeAdapter(config_type).validate_python(options)
        check_bounds(kind, config)
        return config
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise CnnzipError(f"{where} ({kind}): {field}: {err['msg']}") from None
    except CnnzipError as exc:
        raise CnnzipError(f"{where}: {exc}") from None


def parse_recipe(data: Any, source: str) -> Recipe:
    """Validate a recipe's parsed YAML; errors name the file, the step and the key."""
    if not isinstance(data, dict):
        raise CnnzipError(f"{source}: a recipe is a mapping with 'name' and 'steps'")
    unknown = sorted(set(data) - {"name", "steps"})
    if unknown:
        raise CnnzipError(f"{source}: unknown key {unknown[0]!r}; known keys are name, steps")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CnnzipError(f"{source}: 'steps' must be a non-empty list")
    if len(steps) > 99:
        raise CnnzipError(f"{source}: {len(steps)} steps; a recipe has at most 99")
    parsed = []
    for i, item in enumerate(steps, 1):
        if not isinstance(item, dict) or len(item) != 1:
            raise CnnzipError(f"{source}: step {i} must be one mapping like '- prune: {{...}}'")
        (kind, options), = item.items()
        parsed.append((kind, _step(f"{source}: step {i}", kind, options)))
    return Recipe(str(data.get("name", Path(source).stem)), tuple(parsed), source)


def check_order(kinds: list[str], source: str) -> None:
    """Refuse a step that comes after one it may not follow (before anything runs)."""
    for i, kind in enumerate(kinds):
        for earlier, why in STEPS[kind].after:
            if earlier in kinds[:i]:
                raise CnnzipError(f"{source}: step {i + 1} ({kind}) comes after step "
                                  f"{kinds.index(earlier) + 1} ({earlier}): {why}")


def apply_overrides(data: Any, overrides: tuple[str, ...] | list[str], source: str) -> Any:
    """Set ``STEP.KEY=VALUE`` options (VALUE read as YAML) in every step of that kind."""
    for item in overrides:
        target, sep, value = item.partition("=")
        kind, dot, key = target.partition(".")
        if not sep or not dot or not kind or not key:
            raise CnnzipError(f"--set {item!r}: write STEP.KEY=VALUE, e.g. prune.epochs=20")
        steps = [step for step in (data or {}).get("steps") or []
                 if isinstance(step, dict) and kind in step]
        if not steps:
            raise CnnzipError(f"--set {item!r}: {source} has no {kind!r} step")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise CnnzipError(f"--set {item!r}: cannot read the value ({exc})") from None
        for step in steps:
            step[kind] = {**(step[kind] or {}), key: parsed}
    return data


def load_recipe(name_or_path: str, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """A built-in recipe by name, or a YAML file by path, with ``STEP.KEY=VALUE`` overrides."""
    path = Path(name_or_path)
    if not path.suffix and (BUILTIN / f"{name_or_path}.yaml").is_file():
        path = BUILTIN / f"{name_or_path}.yaml"
    if not path.is_file():
        raise CnnzipError(f"unknown recipe {name_or_path!r}: not a file, and the built-in "
                          f"recipes are {', '.join(builtin_names())}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CnnzipError(f"{path}: cannot read recipe ({exc})") from None
    recipe = parse_recipe(apply_overrides(data, overrides, str(path)), str(path))
    return dataclasses.replace(recipe, overrides=tuple(overrides))
