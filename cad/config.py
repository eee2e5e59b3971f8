"""YAML recipes for config dataclasses, with ``key=value`` overrides from the command line.

    cfg = load_config(SFTConfig, "configs/sft_tiny.yaml", ["lr=1e-3", "model.decoder.d_model=128"])

Values are parsed as YAML (numbers, booleans, lists); dotted keys reach into dict fields.
Unknown keys are an error that names the key and lists the valid ones.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


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
    merged = {}
    for key, value in data.items():
        base = getattr(defaults, key)
        merged[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return cls(**merged)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def recipe_from_argv(cls: type[T], prog: str, description: str, default_config: str,
                     argv: Sequence[str] | None = None) -> tuple[T, bool] | None:
    """``--config YAML [--resume] [key=value ...]``, the command line of every training stage:
    the recipe and whether to resume, or None after printing the config error."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", default=default_config, help="YAML recipe")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides), args.resume
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
