"""Helpers shared by subcommands: --config files and config construction."""

import argparse
from collections.abc import Sequence
from typing import Any, TypeVar

from saelign.configs import add_config_args, config_from_args, load_config_file

C = TypeVar("C")


def add_stage_parser(subparsers: Any, name: str, help: str, configs: list[tuple[type, str]],
                     description: str | None = None, sections: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """A subcommand whose flags come from one or more (config class, flag prefix) pairs. `sections`: the
    top-level keys its --config file may hold (None: the file holds the options themselves)."""
    parser = subparsers.add_parser(name, help=help, description=description or help,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML/JSON file with options (flags override it)")
    parser.set_defaults(config_sections=None if sections is None else tuple(sections))
    for cls, prefix in configs:
        add_config_args(parser.add_argument_group(cls.__name__), cls, prefix=prefix)
    return parser


def config_file(args: argparse.Namespace) -> dict[str, Any]:
    """The --config file's mapping, its sections checked (empty without --config)."""
    if not getattr(args, "config", None):
        return {}
    return load_config_file(args.config, getattr(args, "config_sections", None))


def build_config(cls: type[C], args: argparse.Namespace, section: str | None = None, prefix: str = "",
                 file_data: dict[str, Any] | None = None) -> C:
    """Defaults < --config file (top level, or its `section` mapping) < flags. `file_data`: the file's
    options for `cls` when the caller has rearranged them."""
    if file_data is None:
        loaded = config_file(args)
        file_data = (loaded.get(section) or {}) if section else loaded
    return config_from_args(cls, args, file_data, prefix=prefix, file=getattr(args, "config", None), section=section)
