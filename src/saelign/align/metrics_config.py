"""What `alignment_report` measures and how the swaps run: the `align eval` flags, apart from the metrics so
the swap module can read them without importing the report."""

from dataclasses import dataclass
from typing import Literal

from saelign.configs import help_field
from saelign.errors import SaelignError

DEFAULT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)


@dataclass
class MetricsConfig:
    """What `alignment_report` measures and how `swap_success` runs its swaps (`align eval` flags)."""

    alphas: list[float] = help_field(list(DEFAULT_ALPHAS), "swap amplitudes (in target slot scales)")
    swaps: bool = help_field(True, "measure concept swaps (entities with answers under several concepts)")
    max_per_pair: int = help_field(10, "swaps per (source, target) concept pair and α")
    max_rest: int = help_field(10, "prompts of other concepts checked for 'rest unchanged' per pair")
    known_only: bool = help_field(True, "only swap to facts the model states itself")
    swap_span: Literal["concept", "prompt"] = help_field(
        "concept", "tokens a swap edits: concept (the slots' training token) or prompt (every token)"
    )
    swap_when_active: bool = help_field(
        False, "with swap_span=prompt, edit only the tokens where the source slot is the active concept"
    )
    swap_during: Literal["prompt", "all"] = help_field(
        "prompt", "when a swap edits: prompt (while read; the authors' protocol) or all (answer tokens too)"
    )
    swap_keep_error: bool = help_field(
        True,
        "a swap writes x + decode(z') - decode(z), keeping the SAE's error (the authors' hook variant adds "
        "this steering delta); False writes decode(z') itself (their 06_swap_evaluate)",
    )
    oracle: bool = help_field(
        True,
        "also measure the swap ceiling: the concept token's whole activation "
        "replaced by the same entity's target-concept train prompt's",
    )
    n_tokens: int = help_field(0, "tokens generated per continuation (0: the longest answer + 2, at most 12)")
    batch_size: int = help_field(16, "prompts per forward pass")

    def __post_init__(self) -> None:
        for name, choices in (("swap_span", ("concept", "prompt")), ("swap_during", ("prompt", "all"))):
            if getattr(self, name) not in choices:
                raise SaelignError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not self.alphas or min(self.max_per_pair, self.max_rest, self.n_tokens) < 0 or self.batch_size < 1:
            raise SaelignError(
                "metrics options: give at least one alpha, batch_size >= 1 and max_per_pair, "
                "max_rest, n_tokens >= 0"
            )
