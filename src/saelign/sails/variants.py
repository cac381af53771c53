"""Behaviours asked in several registers: which registers each behaviour gets, and the register x kind table.

A behaviour is one request whatever its wording; every wording of it carries the behaviour id and lands in the
split the id hashes to (see `data.split_examples`). Within one split and kind, `expand` gives each behaviour
up to `n` registers, always the ones that split and kind have the fewest examples in so far (ties broken by a
hash of the behaviour), so registers even out even when some prompts fit only their own register (a "Why does
ice float?" question has no template). Prompts from user files are kept as written: a user who wants
rewordings writes them, with one `behaviour` id.
"""

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

from saelign.sails.registers import REGISTERS, rewrite


class Wording(Protocol):
    """What this module reads of `saelign.sails.data.Example` (a frozen dataclass; data.py imports this module)."""

    prompt: str
    kind: str
    source: str
    register: str | None
    behaviour: str | None


def verbatim(example: Wording) -> bool:
    return example.source.startswith("user:")


def options(group: Sequence[Wording], allowed: Sequence[str], n: int) -> list[Wording]:
    """Every wording of the behaviour `group` in an allowed register (before choosing `n` of them).

    With `n` = 0, or for user prompts, only the wordings as written; else one templated rewrite per register.
    """
    if n == 0 or any(verbatim(e) for e in group):
        return [e for e in group if e.register in allowed]
    original = group[0]
    out = []
    for register in allowed:
        text = rewrite(original.prompt, register, original.behaviour or "")
        if text is not None:
            out.append(dataclasses.replace(original, prompt=text, register=register))
    return out


def size(group: Sequence[Wording], allowed: Sequence[str], n: int) -> int:
    """How many examples `expand` makes of this behaviour."""
    found = len(options(group, allowed, n))
    return found if n == 0 or any(verbatim(e) for e in group) else min(n, found)


def _tie_break(example: Wording) -> int:
    digest = hashlib.sha256(f"{example.behaviour}\x00{example.register}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def expand(groups: Iterable[Sequence[Wording]], allowed: Sequence[str], n: int) -> list[Wording]:
    """The examples of `groups` (one kind, one split, in split order), each behaviour in at most `n` registers
    chosen to keep the register counts level (`n` = 0: as written)."""
    counts: Counter[str] = Counter()
    out: list[Wording] = []
    for group in groups:
        found = options(group, allowed, n)
        if n and not any(verbatim(e) for e in group):
            found = sorted(found, key=lambda e: (counts[e.register], _tie_break(e)))[:n]
            found.sort(key=lambda e: allowed.index(e.register))
        counts.update(e.register for e in found)
        out += found
    return out


def register_table(examples: Iterable[Wording], kinds: Sequence[str]) -> dict[str, dict[str, int]]:
    """{register: {kind: count}} over every register, kinds in the given order."""
    counts = Counter((e.register, e.kind) for e in examples)
    return {r: {k: counts[r, k] for k in kinds} for r in REGISTERS}


def format_table(tables: dict[str, dict[str, dict[str, int]]], kinds: Sequence[str]) -> str:
    """The register x kind tables of several splits as one aligned text block."""
    lines = [f"{'split':6} {'register':11} " + " ".join(f"{k:>10}" for k in kinds)]
    for split, table in tables.items():
        for register, row in table.items():
            if any(row.values()):
                lines.append(f"{split:6} {register:11} " + " ".join(f"{row[k]:>10}" for k in kinds))
    return "\n".join(lines)


def imbalances(tables: dict[str, dict[str, dict[str, int]]], kinds: Sequence[str] = ("harmful", "harmless"),
               high: float = 0.6, low: float = 0.2) -> list[str]:
    """Registers over `high` of one kind and under `low` of another in some split: forms that predict the
    kind."""
    problems = []
    for split, table in tables.items():
        totals = {k: sum(row[k] for row in table.values()) for k in kinds}
        for register, row in table.items():
            shares = {k: row[k] / totals[k] for k in kinds if totals[k]}
            for a in shares:
                for b in shares:
                    if shares[a] > high and shares[b] < low:
                        problems.append(f"{split}: {register} is {shares[a]:.0%} of {a} "
                                        f"but {shares[b]:.0%} of {b}")
    return problems
