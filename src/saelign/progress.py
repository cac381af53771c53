"""The one place library code reports progress and messages: a logger plus tqdm bars."""

import logging
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
logger = logging.getLogger("saelign")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A progress bar on stderr; silenced with SAELIGN_QUIET=1 (tests, CI logs), and on ranks > 0 under
    torchrun (rank 0's bar speaks for all)."""
    disable = os.environ.get("SAELIGN_QUIET") == "1" or int(os.environ.get("RANK", "0")) > 0
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True, leave=False)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """`quiet`: warnings and errors only (ranks > 0 under torchrun, whose info rank 0 already gives)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
