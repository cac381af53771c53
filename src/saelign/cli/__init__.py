"""`saelign` command line: one subcommand per pipeline stage, each built from that stage's config dataclass."""

import argparse
import contextlib
import importlib
import io
import sys
from collections.abc import Sequence

from saelign import distributed
from saelign.errors import SaelignError
from saelign.progress import setup_logging
from saelign.runinfo import SAELIGN_VERSION

# What a subcommand that runs under torchrun sets (parser.set_defaults(data_parallel=True)).
DATA_PARALLEL = "data_parallel"

# Each module defines register(subparsers); order = order in --help.
COMMAND_MODULES = [
    "saelign.cli.capture",
    "saelign.cli.sae",
    "saelign.cli.label",
    "saelign.cli.dashboard",
    "saelign.cli.sails",
    "saelign.cli.align",
    "saelign.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelign",
        description="Interpretable alignment of language models with sparse autoencoders (SAILS, AlignSAE).",
        epilog="Every stage option can also come from a YAML/JSON file given with --config; flags override it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"saelign {SAELIGN_VERSION}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command's own parser, following the subcommands chosen in `args`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage; the subcommand's says which flags exist
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    launched = distributed.launched()
    rank = f" (rank {distributed.global_rank_from_env()})" if launched else ""
    setup_logging(args.verbose, quiet=launched and distributed.global_rank_from_env() > 0)
    try:
        if launched and not getattr(args, DATA_PARALLEL, False):
            raise SaelignError("this subcommand runs in one process: run it without torchrun (under "
                               "torchrun: capture, sae train, align train and sails train)")
        distributed.init()
        # Rank 0 reports for all: the other ranks' standard output (the same summary) is dropped.
        quiet = not distributed.is_main()
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            result = args.func(args)
    except SaelignError as exc:
        print(f"saelign{rank}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saelign{rank}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
