"""Bridge to SAILS: aligned concept slots as a subspace for the LoRA init.

An aligned slot's decoder row is the direction the SAE writes when its concept is present (e.g. an aligned
"harmful request" slot), so the span of the chosen slots' rows is a ready-made SAILS subspace: pass the
basis to `saelign.sails.lora_init.make_peft_model` and the provenance into the adapter's sidecar."""

from collections.abc import Sequence
from typing import Any

import torch

from saelign.align.slots import SlotMap
from saelign.errors import SaelignError, require
from saelign.sae.model import SAE
from saelign.sails.subspace import basis_hash, build_subspace


def slots_to_subspace(sae: SAE, slot_map: SlotMap, concepts: Sequence[str | int] | None = None, tau: float = 1.0,
                      max_rank: int | None = None) -> torch.Tensor:
    """Orthonormal U [d_in, r] spanning the decoder rows of the chosen concepts' slots (all concepts by default).
    tau < 1 keeps the principal directions explaining that share of the rows, at most max_rank of them (as SAILS
    does for features)."""
    slot_map.validate(sae)
    chosen = list(concepts) if concepts is not None else list(slot_map.concepts)
    require(chosen, "no concepts chosen for the subspace; name at least one concept of the slot map")
    rows = sae.W_dec.detach()[[slot_map.slot(c) for c in chosen]]
    if (rows.norm(dim=1) == 0).any():
        raise SaelignError("a chosen slot has an all-zero decoder row (it was never trained); post-train the SAE first")
    return build_subspace(rows, tau=tau, max_rank=max_rank)


def subspace_provenance(slot_map: SlotMap, concepts: Sequence[str | int] | None, basis: torch.Tensor) -> dict[str, Any]:
    """What the SAILS sidecar should record about a slot-derived subspace."""
    chosen = [slot_map.concepts[slot_map.index(c)] for c in (concepts if concepts is not None else slot_map.concepts)]
    return {"subspace_source": "alignsae_slots", "hookpoint": slot_map.hookpoint, "concepts": chosen,
            "slots": [slot_map.slot(c) for c in chosen], "rank": int(basis.shape[1]), "basis_sha256": basis_hash(basis)}
