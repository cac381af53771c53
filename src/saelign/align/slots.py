"""The slot map: which SAE latent is bound to which concept, saved as `slot_map.json` next to the aligned SAE.

Each slot also carries a `scale`, its mean activation on its own concept's prompts. Interventions express
amplitudes in these units (concept swap writes α·scale into the target slot), so α means the same thing for
MSE-bound slots (scale ≈ 1, the authors' convention), CE-bound slots and a vanilla SAE's best latents."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from saelign.errors import SaelignError, require
from saelign.io import read_json, write_json_atomic
from saelign.sae.model import SAE

SLOT_MAP_FILE = "slot_map.json"
SLOT_MAP_FORMAT = "saelign-slot-map"


@dataclass
class SlotMap:
    concepts: list[str]
    slots: list[int]
    hookpoint: str
    d_sae: int
    position: str = "last"
    scales: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.scales:
            self.scales = [1.0] * len(self.slots)

    def check_consistent(self, where: str = "slot map") -> None:
        require(self.concepts, f"{where}: no concepts; an ontology needs at least one concept")
        if not len(self.concepts) == len(self.slots) == len(self.scales):
            raise SaelignError(f"{where}: {len(self.concepts)} concepts, {len(self.slots)} slots and {len(self.scales)} scales "
                               "must have equal lengths; regenerate the slot map")
        for name, values in (("concept", self.concepts), ("slot", self.slots)):
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise SaelignError(f"{where}: duplicate {name}(s) {', '.join(dupes)}; each concept needs its own slot")
        bad = [s for s in self.slots if not 0 <= s < self.d_sae]
        require(not bad, f"{where}: slot(s) {bad} outside 0..{self.d_sae - 1} (d_sae={self.d_sae})")

    def index(self, concept: str | int) -> int:
        """Concept position in the map, from its name or its index."""
        if isinstance(concept, int):
            if not 0 <= concept < len(self.concepts):
                raise SaelignError(f"concept index {concept} out of range 0..{len(self.concepts) - 1}")
            return concept
        if concept not in self.concepts:
            raise SaelignError(f"unknown concept {concept!r}; the slot map has: {', '.join(self.concepts)}")
        return self.concepts.index(concept)

    def slot(self, concept: str | int) -> int:
        return self.slots[self.index(concept)]

    def scale(self, concept: str | int) -> float:
        return self.scales[self.index(concept)]

    def validate(self, sae: SAE, where: str = "slot map") -> None:
        """Raise if this map is inconsistent or cannot belong to `sae` (different width or hookpoint)."""
        self.check_consistent(where)
        if self.d_sae != sae.cfg.d_sae:
            raise SaelignError(f"{where} was made for an SAE with d_sae={self.d_sae}, but this SAE has d_sae={sae.cfg.d_sae}; "
                               "load the SAE saved next to the slot map")
        if self.hookpoint and sae.cfg.hookpoint and self.hookpoint != sae.cfg.hookpoint:
            raise SaelignError(f"{where} is for hookpoint {self.hookpoint!r}, but the SAE reads {sae.cfg.hookpoint!r}; "
                               "load the SAE saved next to the slot map")

    def to_dict(self) -> dict[str, Any]:
        entries = zip(self.slots, self.concepts, self.scales, strict=True)
        return {"format": SLOT_MAP_FORMAT, "hookpoint": self.hookpoint, "position": self.position,
                "d_sae": self.d_sae, "slots": {str(s): {"concept": c, "scale": sc} for s, c, sc in entries}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "slot map") -> Self:
        if not isinstance(data, dict) or data.get("format") != SLOT_MAP_FORMAT or not isinstance(data.get("slots"), dict):
            raise SaelignError(f"{where} is not a saelign slot map (expected format={SLOT_MAP_FORMAT!r} and a 'slots' mapping)")
        try:
            slots = [int(s) for s in data["slots"]]
            entries = list(data["slots"].values())
            slot_map = cls(concepts=[str(e["concept"]) for e in entries], slots=slots, hookpoint=str(data.get("hookpoint", "")),
                           d_sae=int(data["d_sae"]), position=str(data.get("position", "last")),
                           scales=[float(e.get("scale", 1.0)) for e in entries])
        except (KeyError, TypeError, ValueError) as exc:
            raise SaelignError(f"{where}: malformed entry ({exc!r}); each slot needs a 'concept', and d_sae must be set") from exc
        slot_map.check_consistent(where)
        return slot_map


def save_slot_map(slot_map: SlotMap, directory: str | Path) -> Path:
    path = Path(directory) / SLOT_MAP_FILE
    write_json_atomic(path, slot_map.to_dict())
    return path


def load_slot_map(path: str | Path, sae: SAE | None = None) -> SlotMap:
    """Read `slot_map.json` (or the folder holding it); with `sae`, also check that it belongs to that SAE."""
    path = Path(path)
    if path.is_dir():
        path = path / SLOT_MAP_FILE
    slot_map = SlotMap.from_dict(read_json(path, "slot map"), where=f"slot map {path}")
    if sae is not None:
        slot_map.validate(sae, where=f"slot map {path}")
    return slot_map
