"""Config dataclasses are the single source of truth: the CLI flags, config files and run.json come from them.

A stage declares `@dataclass class XConfig` whose fields carry `metadata={"help": ...}`. `add_config_args`
turns the fields into argparse flags, `config_from_args` merges defaults < config file < flags, and
`config_from_dict` validates a YAML/JSON mapping (unknown keys and wrong types are errors naming the field).
Errors name a field by `label(path)`: the CLI passes one that names the flag (`--sft-steps`) or the config file
and key the value came from; a `__post_init__` check names its field first (`steps must be positive`), so the
same label replaces that word.
A config that nests another one may leave some of its fields out (`metadata={"hide": {name: why}}` on the nested
field): it sets them itself, so they are neither flags, nor config-file keys, nor written to config.json."""

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from saelign.errors import SaelignError

C = TypeVar("C")
Label = Callable[[tuple[str, ...]], str]  # a field's path in the nested config -> the name the user knows it by
_LEADING_FIELD = re.compile(r"([a-z_][a-z0-9_]*)(?=[ :=,)])")


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


def _coerce(value: Any, tp: Any, path: tuple[str, ...], label: Label, hidden: dict[str, str] | None = None) -> Any:
    base, optional = _unwrap_optional(tp)
    where = label(path)
    if value is None:
        if optional:
            return None
        raise SaelignError(f"{where}: null is not allowed; give a value of type {getattr(base, '__name__', base)}")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # `k: 16` in YAML means the list of one
        if not isinstance(value, list | tuple):
            raise SaelignError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, path, label) for v in value]
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
        except (TypeError, ValueError, OverflowError):
            raise SaelignError(f"{where}: expected {base.__name__}, got {value!r}") from None
        if base is int and isinstance(value, float) and not value.is_integer():
            raise SaelignError(f"{where}: expected an integer, got {value!r}")
        if base is float and not math.isfinite(number):
            raise SaelignError(f"{where}: expected a finite number, got {value!r}")
        return number
    if base is str:
        if not isinstance(value, str | int | float):
            raise SaelignError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise SaelignError(f"{where}: expected a section of options (a mapping), got {value!r}")
        return _from_dict(base, value, path, label, hidden)
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "config",
                     hidden: dict[str, str] | None = None, label: Label | None = None) -> C:
    """`cls` from a mapping; errors name a field as `label(path)`, by default `where.path`."""
    return _from_dict(cls, data, (), label or (lambda path: ".".join((where, *path))), hidden)


def _from_dict(cls: type[C], data: Any, path: tuple[str, ...], label: Label, hidden: dict[str, str] | None) -> C:
    where = label(path)
    if not isinstance(data, dict):
        raise SaelignError(f"{where}: expected a mapping of option names to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    hidden = hidden or {}
    if clash := sorted(set(data) & set(hidden)):
        raise SaelignError(f"{label((*path, clash[0]))} is not an option here: {hidden[clash[0]]}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in hidden}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise SaelignError(f"{where}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], (*path, k), label, fields[k].metadata.get("hide")) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except SaelignError as exc:
        # A check names its field first: the user knows it by its label (a flag, or a key in a file).
        message = str(exc)
        if (match := _LEADING_FIELD.match(message)) and match.group(1) in fields:
            raise SaelignError(label((*path, match.group(1))) + message[match.end():]) from None
        raise


def load_config_file(path: str | Path, sections: Sequence[str] | None = None) -> dict[str, Any]:
    """A YAML/JSON config file's mapping. With `sections`, its top level must hold only those sections, each a
    mapping (an option left at the top level would otherwise be ignored without a word)."""
    path = Path(path)
    if not path.is_file():
        raise SaelignError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise SaelignError(f"config file {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise SaelignError(f"config file {path} cannot be parsed: {detail}; fix its syntax") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SaelignError(f"config file {path}: the top level must be a mapping of option names (or sections) "
                           f"to values, got a {type(data).__name__}")
    if sections is not None:
        if unknown := sorted(map(str, set(data) - set(sections))):
            raise SaelignError(f"config file {path}: unknown top-level key(s) {', '.join(unknown)}; this command "
                               f"reads the sections {', '.join(sections)} (put each option inside its section)")
        for name, value in data.items():
            if value is not None and not isinstance(value, dict):
                raise SaelignError(f"config file {path}: section {name} must be a mapping of options, got {value!r}")
    return data


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
                    hidden: dict[str, str] | None = None, shown: Mapping[str, Any] | None = None) -> None:
    """Add one `--flag` per dataclass field, and a group of flags per nested config (pass the parser itself, not
    a group, for those). Defaults stay in the dataclass (argparse default is None); `shown`: a nested mapping of
    the values the help text gives as defaults instead of the dataclass's (a preset's)."""
    shown = shown or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in (hidden or {}):
            continue
        if nested := _nested(f, hints[f.name], prefix):
            group = parser.add_argument_group(f"{f.name} (YAML section {f.name}:)")
            add_config_args(group, *nested, f.metadata.get("hide"), shown.get(f.name))
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = shown.get(f.name, default)
        if isinstance(default, list):
            default = ",".join(map(str, default)) or "none"
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


def _paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path of a nested mapping (sections and their options)."""
    out = set()
    for key, value in data.items():
        out.add((*prefix, key))
        if isinstance(value, Mapping):
            out |= _paths(value, (*prefix, key))
    return out


def flag_names(cls: type, prefix: str = "", hidden: dict[str, str] | None = None,
               path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """The flag of each (nested) field path, as `add_config_args` names it."""
    hints = typing.get_type_hints(cls)
    out: dict[tuple[str, ...], str] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in (hidden or {}):
            continue
        if nested := _nested(f, hints[f.name], prefix):
            out |= flag_names(*nested, f.metadata.get("hide"), (*path, f.name))
        else:
            out[(*path, f.name)] = "--" + (prefix + f.name).replace("_", "-")
    return out


def source_label(cls: type, flags: Mapping[str, Any], file: str | Path | None = None,
                 file_data: Mapping[str, Any] | None = None, prefix: str = "", section: str | None = None) -> Label:
    """Names a field where the user set it: its flag if a flag gave it, the file and key if the file did,
    else its dotted path (a preset or a stored config)."""
    from_flags, from_file, names = _paths(flags), _paths(file_data or {}), flag_names(cls, prefix)

    def label(path: tuple[str, ...]) -> str:
        if path in from_flags and path in names:
            return names[path]
        if file is not None and (path in from_file or not path):
            key = ".".join(map(str, (section, *path) if section else path))
            return f"{file}: {key}" if key else f"config file {file}"
        return ".".join(map(str, path)) or "options"
    return label


def config_from_args(cls: type[C], args: argparse.Namespace, file_data: dict[str, Any] | None = None,
                     prefix: str = "", file: str | Path | None = None, section: str | None = None) -> C:
    """Defaults < config file < flags."""
    flags = flags_from_args(cls, args, prefix)
    label = source_label(cls, flags, file, file_data, prefix, section)
    return config_from_dict(cls, deep_merge(file_data or {}, flags), label=label)
