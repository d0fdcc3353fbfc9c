"""The workflow config's one schema: its defaults, its closed keys and what each key reruns.

Every default of the workflow, of every ``unet-pipeline`` command and of the option classes
(:class:`unet_pipeline.train.settings.TrainConfig`, :class:`unet_pipeline.train.augment.AugmentConfig`)
is read from ``schemas/config.schema.yaml`` through :func:`section_defaults`, so it is written
down once. :func:`check_config` validates a config in place (every section refuses unknown keys
and names the nearest valid one), turns the strings of ``snakemake --config`` overrides into the
numbers and booleans the schema asks for, and fills in the defaults.

Keys marked ``x-speed-only: true`` in the schema change how fast, where or how visibly a stage
runs, never what it writes; :func:`result_keys` leaves them out, so the workflow's rules never
rerun for them (config/README.md, "What a change reruns").
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["SCHEMA_PATH", "load_schema", "section_defaults", "with_schema_defaults", "speed_only_keys", "result_keys",
           "check_config"]

#: The one schema of the workflow config, shipped inside the package.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """The parsed schema (read once per process)."""
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _section_schema(section: str) -> dict:
    try:
        return load_schema()["properties"][section]
    except KeyError:
        raise KeyError(f"the config schema has no section {section!r}") from None


def section_defaults(section: str) -> dict[str, Any]:
    """Key -> default of one section (``training``, ``augment``, ...), as the schema gives them."""
    props = _section_schema(section).get("properties", {})
    return {key: spec["default"] for key, spec in props.items() if "default" in spec}


def _frozen(value: Any) -> Any:
    """Lists (as YAML gives them) as tuples, nested too: hashable, immutable dataclass defaults."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def with_schema_defaults(section: str):
    """Class decorator, applied under ``@dataclass``: every annotated field of the class that the
    schema's ``section`` gives a default and the class body does not, takes the schema's default
    (lists as tuples). So an option class declares its fields and types, and the schema alone
    says their defaults."""

    def fill(cls):
        defaults = section_defaults(section)
        for name in cls.__dict__.get("__annotations__", {}):
            if name in defaults and name not in cls.__dict__:
                setattr(cls, name, _frozen(defaults[name]))
        return cls

    return fill


def speed_only_keys(section: str) -> frozenset[str]:
    """The keys of a section marked ``x-speed-only`` (speed, device, progress, checkpoints)."""
    props = _section_schema(section).get("properties", {})
    return frozenset(key for key, spec in props.items() if spec.get("x-speed-only"))


def result_keys(config: Mapping, section: str) -> dict[str, Any]:
    """A section of a checked config without its speed-only keys: what shapes a stage's output."""
    skip = speed_only_keys(section)
    return {key: value for key, value in dict(config.get(section) or {}).items() if key not in skip}


def check_config(config: MutableMapping, source: str | Path | None = None) -> MutableMapping:
    """Validate ``config`` against the schema in place, then fill in every default.

    Strings where the schema wants a number, an integer or a boolean (what ``snakemake --config
    'training={epochs: 100}'`` passes) are read as YAML scalars first.

    Raises
    ------
    ConfigError
        Naming the key and the problem: ``training.epocs: unknown key; did you mean epochs?``, or
        ``training.epochs: 0 is less than the minimum of 1``; every problem, one per line.
    """
    from jsonschema import Draft202012Validator

    schema = load_schema()
    _coerce_strings(config, schema)
    problems = _unknown_keys(config, schema, "")
    if not problems:
        for error in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "config"
            problems.append(f"{where}: {error.message}")
    if problems:
        prefix = f"{source}: " if source else ""
        raise ConfigError(prefix + ("\n" + prefix).join(problems))
    _fill_defaults(config, schema)
    return config


def _object_schemas(spec: Mapping) -> tuple[dict, Any]:
    """``(properties, additionalProperties)`` of an object schema (empty for other schemas)."""
    if "properties" not in spec and not isinstance(spec.get("additionalProperties"), (dict, bool)):
        return {}, True
    return spec.get("properties", {}), spec.get("additionalProperties", True)


def _unknown_keys(value: Any, spec: Mapping, where: str) -> list[str]:
    """``<path>: unknown key; did you mean <nearest>?`` for every key a closed object does not list."""
    if not isinstance(value, Mapping):
        return []
    props, extra = _object_schemas(spec)
    problems = []
    for key, item in value.items():
        path = f"{where}.{key}" if where else str(key)
        if key in props:
            problems += _unknown_keys(item, props[key], path)
        elif extra is False:
            near = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.6) \
                or [k for k in props if k.startswith(str(key)) or str(key).startswith(k)]
            hint = f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(props)}"
            problems.append(f"{path}: unknown key; {hint}")
        elif isinstance(extra, Mapping):
            problems += _unknown_keys(item, extra, path)
    return problems


_SCALAR_TYPES = {"integer", "number", "boolean"}


def _types(spec: Mapping) -> set[str]:
    kind = spec.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _coerce_strings(value: Any, spec: Mapping) -> None:
    """Read string values as YAML scalars where the schema wants a number or a boolean, in place."""
    import yaml

    if not isinstance(value, MutableMapping):
        return
    props, extra = _object_schemas(spec)
    for key, item in list(value.items()):
        sub = props.get(key, extra if isinstance(extra, Mapping) else None)
        if sub is None:
            continue
        kinds = _types(sub)
        if isinstance(item, str) and kinds & _SCALAR_TYPES and "string" not in kinds:
            try:
                value[key] = yaml.safe_load(item)
            except yaml.YAMLError:
                pass  # left as it is: validation names the key
        elif isinstance(item, list) and isinstance(sub.get("items"), Mapping) and _types(sub["items"]) & _SCALAR_TYPES:
            value[key] = [yaml.safe_load(x) if isinstance(x, str) else x for x in item]
        else:
            _coerce_strings(item, sub)


def _fill_defaults(value: MutableMapping, spec: Mapping) -> None:
    """Set every missing key that has a default, recursing into objects (in place)."""
    import copy

    for key, sub in spec.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if isinstance(value.get(key), MutableMapping) and "properties" in sub:
            _fill_defaults(value[key], sub)
