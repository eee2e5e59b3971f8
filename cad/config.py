"""YAML recipes for config dataclasses, with ``key=value`` overrides from the command line.

    cfg = load_config(SFTConfig, "configs/sft_tiny.yaml", ["lr=1e-3", "model.decoder.d_model=128"])

Values are parsed as YAML (numbers, booleans, lists); dotted keys reach into dict fields.
Unknown keys are an error that names the key and lists the valid ones; so is a value of the wrong
type for its field (``batch_size=four``); a float field also takes ``1e-3``, which YAML reads as
text.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Sequence, TypeVar

import yaml

from cad.io import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A recipe or a ``key=value`` override is unusable; the message names the key."""


_NOUNS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          dict: "a mapping", type(None): "null"}


def _options(hint) -> tuple:
    """The plain types a field annotation allows (``int | None`` -> (int, NoneType))."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _options(arg))
    origin = typing.get_origin(hint)
    return (origin if origin is not None else hint,)


def _coerce(cls: type, key: str, value, hint):
    """``value`` if it fits the field's type (a numeric string for a float field becomes a float),
    else a ConfigError that names the key, the value and the expected type."""
    allowed = _options(hint)
    if typing.Any in allowed or not all(isinstance(t, type) for t in allowed):
        return value
    for t in allowed:
        if t is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                return number
        elif t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif t not in (int, float) and isinstance(value, t):
            return value
    expected = " or ".join(_NOUNS.get(t, t.__name__) for t in allowed)
    raise ConfigError(f"{key}={value!r}: expected {expected} for {cls.__name__}.{key}")


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{key}': '{part}' is not a mapping")
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a recipe must be a YAML mapping of keys to values")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    defaults = cls()
    hints = typing.get_type_hints(cls)
    merged = {}
    for key, value in data.items():
        value = _coerce(cls, key, value, hints.get(key, typing.Any))
        base = getattr(defaults, key)
        merged[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return cls(**merged)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def recipe_from_argv(cls: type[T], prog: str, description: str, default_config: str,
                     argv: Sequence[str] | None = None) -> tuple[T, bool] | None:
    """``--config YAML [--resume] [key=value ...]``, the command line of every training stage:
    the recipe and whether to resume, or None after printing the config error."""
    import sys

    from cad.cli import ArgumentParser

    ap = ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", default=default_config, help="YAML recipe")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides), args.resume
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
