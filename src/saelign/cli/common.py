"""Helpers shared by subcommands: --config files and config construction."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from saelign.configs import add_config_args, config_from_args, load_config_file

C = TypeVar("C")


def add_stage_parser(subparsers: Any, name: str, help: str, configs: list[tuple[type, str]], description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose flags come from one or more (config class, flag prefix) pairs."""
    parser = subparsers.add_parser(name, help=help, description=description or help,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML/JSON file with options (flags override it)")
    for cls, prefix in configs:
        add_config_args(parser.add_argument_group(cls.__name__), cls, prefix=prefix)
    return parser


def build_config(cls: type[C], args: argparse.Namespace, section: str | None = None, prefix: str = "") -> C:
    """Defaults < --config file (top level, or its `section` mapping) < flags."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        loaded = load_config_file(args.config)
        data = loaded.get(section, {}) if section else loaded
    return config_from_args(cls, args, data, prefix=prefix)
