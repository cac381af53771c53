"""The options of `saelign serve`: what to load and where to listen, and the limits every request must fit.

Plain dataclasses (no web framework needed), so the CLI can list them without the `serve` extra.
"""

from dataclasses import dataclass, fields

from saelign.configs import help_field
from saelign.errors import SaelignError


@dataclass
class ServeConfig:
    run: str = help_field("", "a SAILS run folder: its model, SAE, labels, selected features and adapter")
    model: str = help_field("", "'default', a local HF model folder or a .gguf file (empty: the run's model)")
    sae: str = help_field("", "an SAE folder for the top features and feature sliders (empty: the run's SAE)")
    aligned: str = help_field("", "an AlignSAE folder (SAE + slot_map.json): concept slots as sliders")
    adapter: str = help_field("", "a PEFT adapter folder (empty: the run's SAILS adapter)")
    device: str = help_field("auto", "cpu, cuda, cuda:N or auto (GPU if present)")
    host: str = help_field("127.0.0.1", "address to listen on; anything but localhost exposes the model")
    port: int = help_field(8000, "port to listen on (0: any free port)")

    def __post_init__(self) -> None:
        if not (self.run or self.model):
            raise SaelignError("give --run (a SAILS run folder) or --model")
        if not 0 <= self.port < 65536:
            raise SaelignError(f"--port must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = help_field(4000, "longest prompt accepted, in characters")
    max_prompt_tokens: int = help_field(512, "longest chat-formatted prompt accepted, in tokens")
    max_new_tokens: int = help_field(128, "most new tokens a request may ask for, per answer")
    time_limit_s: float = help_field(60.0, "seconds a request may take from the moment it is queued")
    queue_size: int = help_field(8, "requests that may wait for the model worker; more are answered 503")
    max_body_bytes: int = help_field(64 * 1024, "largest request body accepted (413 above)")

    def __post_init__(self) -> None:
        bad = [f.name for f in fields(self) if getattr(self, f.name) <= 0]
        if bad:
            raise SaelignError(f"{', '.join(bad)} must be positive")
