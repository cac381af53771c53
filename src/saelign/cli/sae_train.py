"""`saelign sae train` (being written)."""

from __future__ import annotations

from typing import Any


def register(group: Any) -> None:
    group.add_parser("train", help="train sparse autoencoders (work in progress)")
