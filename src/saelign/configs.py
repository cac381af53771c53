"""Config dataclasses are the single source of truth: the CLI flags, config files and run.json come from them.

A stage declares `@dataclass class XConfig` whose fields carry `metadata={"help": ...}`. `add_config_args`
turns the fields into argparse flags, `config_from_args` merges defaults < config file < flags, and
`config_from_dict` validates a YAML/JSON mapping (unknown keys and wrong types are errors naming the field).
A config that nests another one may leave some of its fields out (`metadata={"hide": {name: why}}` on the nested
field): it sets them itself, so they are neither flags, nor config-file keys, nor written to config.json."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from saelign.errors import SaelignError

C = TypeVar("C")


def help_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with CLI help text; list defaults are copied per instance."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str, hidden: dict[str, str] | None = None) -> Any:
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise SaelignError(f"{where}: null is not allowed; give a value of type {getattr(base, '__name__', base)}")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise SaelignError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise SaelignError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SaelignError(f"{where}: expected true/false, got {value!r}")
    if base in (int, float):
        if isinstance(value, bool):
            raise SaelignError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if base is float else int(value)
        except (TypeError, ValueError):
            raise SaelignError(f"{where}: expected {base.__name__}, got {value!r}") from None
        if base is int and isinstance(value, float) and not value.is_integer():
            raise SaelignError(f"{where}: expected an integer, got {value!r}")
        return number
    if base is str:
        if not isinstance(value, str | int | float):
            raise SaelignError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(base) and isinstance(value, dict):
        return config_from_dict(base, value, where=where, hidden=hidden)
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "config",
                     hidden: dict[str, str] | None = None) -> C:
    if not isinstance(data, dict):
        raise SaelignError(f"{where}: expected a mapping of option names to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    hidden = hidden or {}
    if clash := sorted(set(data) & set(hidden)):
        raise SaelignError(f"{where}.{clash[0]} is not an option here: {hidden[clash[0]]}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in hidden}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SaelignError(f"{where}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}", fields[k].metadata.get("hide")) for k, v in data.items()}
    return cls(**kwargs)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SaelignError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SaelignError(f"config file {path} cannot be parsed: {exc}") from exc
    return data or {}


def config_to_dict(cfg: Any, hidden: dict[str, str] | None = None) -> dict[str, Any]:
    """The config as JSON-ready data, without the fields a nesting config hides (see the module docstring)."""
    out = {f.name: config_to_dict(getattr(cfg, f.name), f.metadata.get("hide"))
           if dataclasses.is_dataclass(getattr(cfg, f.name)) else getattr(cfg, f.name)
           for f in dataclasses.fields(cfg) if f.name not in (hidden or {})}
    return json.loads(json.dumps(out, default=str))


def _nested(f: dataclasses.Field, tp: Any, prefix: str) -> tuple[type, str] | None:
    """A nested config's class and flag prefix: its flags carry its name (--sft-steps) unless metadata says."""
    base, _ = _unwrap_optional(tp)
    if not dataclasses.is_dataclass(base) or f.metadata.get("cli") is False:
        return None
    return base, prefix + f.metadata.get("prefix", f.name.replace("_", "-") + "-")


def add_config_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                    hidden: dict[str, str] | None = None) -> None:
    """Add one `--flag` per dataclass field, and a group of flags per nested config (pass the parser itself, not
    a group, for those). Defaults stay in the dataclass (argparse default is None)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in (hidden or {}):
            continue
        if nested := _nested(f, hints[f.name], prefix):
            group = parser.add_argument_group(f"{f.name} (YAML section {f.name}:)")
            add_config_args(group, *nested, f.metadata.get("hide"))
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if typing.get_origin(base) is typing.Literal:
            parser.add_argument(flag, dest=prefix + f.name, choices=typing.get_args(base), default=None, help=help_text)
        elif base is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            metavar = "A,B,..." if typing.get_origin(base) in (list, tuple) else base.__name__.upper() if isinstance(base, type) else "VALUE"
            parser.add_argument(flag, dest=prefix + f.name, default=None, metavar=metavar, help=help_text)


def flags_from_args(cls: type, args: argparse.Namespace, prefix: str = "",
                    hidden: dict[str, str] | None = None) -> dict[str, Any]:
    """The flags given on the command line, in the nested layout of `cls`."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in (hidden or {}):
            continue
        if nested := _nested(f, hints[f.name], prefix):
            if given := flags_from_args(nested[0], args, nested[1], f.metadata.get("hide")):
                out[f.name] = given
        elif getattr(args, prefix + f.name, None) is not None:
            out[f.name] = getattr(args, prefix + f.name)
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`; nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = deep_merge(out[key], value) if nested else value
    return out


def config_from_args(cls: type[C], args: argparse.Namespace, file_data: dict[str, Any] | None = None, prefix: str = "") -> C:
    """Defaults < config file < flags."""
    flags = flags_from_args(cls, args, prefix)
    return config_from_dict(cls, deep_merge(file_data or {}, flags), where=f"option --{prefix}" if prefix else "options")
