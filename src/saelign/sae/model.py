"""The sparse autoencoder: one module for every activation (`saelign.sae.activations`: relu, topk, ...).

Weights follow SAELens naming and shapes (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold)
so saving is a plain tensor dump. Inputs are multiplied by `norm_scale` (input normalisation stored with the
weights) before encoding and divided by it after decoding, so callers always work in the model's raw units."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from saelign.configs import help_field
from saelign.errors import SaelignError
from saelign.sae.activations import ACTIVATIONS, activation_class


@dataclass
class SAEConfig:
    d_in: int = help_field(576, "width of the activations the SAE reads (the model's d_model for the residual stream)")
    d_sae: int = help_field(4608, "number of latents")
    activation: str = help_field("topk", f"a registered activation: {', '.join(sorted(ACTIVATIONS))}")
    k: int = help_field(32, "active latents per token for the activations that keep k (topk, batchtopk)")
    hookpoint: str = help_field("", "module path the SAE reads, e.g. model.layers.15")
    model: str = help_field("", "model the activations came from")
    always_on_latents: list[int] = help_field([], "latents exempt from top-k/threshold sparsity, passing through ReLU only (AlignSAE concept slots)")

    def __post_init__(self) -> None:
        # Checked with the options, so a pipeline refuses a bad width before it changes any file.
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SaelignError(f"d_sae must be positive (and d_in), got d_in={self.d_in}, d_sae={self.d_sae}")
        if activation_class(self.activation).uses_k and not 0 < self.k <= self.d_sae:
            raise SaelignError(f"k={self.k} must be in 1..d_sae={self.d_sae} for activation {self.activation}")


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        self.activation = activation_class(cfg.activation)()  # cfg's widths and k were checked in __post_init__
        if any(not 0 <= i < cfg.d_sae for i in cfg.always_on_latents):
            raise SaelignError(f"always_on_latents {cfg.always_on_latents} must lie in 0..{cfg.d_sae - 1}")
        self.cfg = cfg
        kw = {"device": device, "dtype": dtype}
        # Stored latent-major (W_enc.t() is contiguous): sparse training produces the encoder gradient one latent
        # row at a time, and this layout takes it without a transposing copy; products read either layout.
        self.W_enc = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw).t())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        # Off autograd by default: training may switch it on (JumpReLU) or set it once (BatchTopK).
        self.threshold = (nn.Parameter(torch.zeros(cfg.d_sae, **kw), requires_grad=False)
                          if self.activation.uses_threshold else None)
        self.register_buffer("norm_scale", torch.ones((), **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)  # tied init: a standard, well-conditioned start
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise SaelignError(f"SAE expects inputs of width d_in={self.cfg.d_in} (hookpoint {self.cfg.hookpoint or '?'}), got {x.shape[-1]}; "
                               "the SAE does not match this model/hookpoint")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.norm_scale - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Dense latents from pre-activations [..., d_sae]."""
        act = self.activation
        if not self.cfg.always_on_latents or act.elementwise:
            return act.sparsify(pre, self, training)
        # Concept slots must stay readable, so they sit out the top-k competition / threshold (ReLU only).
        mask = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=pre.device)
        mask[self.cfg.always_on_latents] = True
        excluded = pre.masked_fill(mask, act.slot_fill)
        return torch.where(mask, F.relu(pre), act.sparsify(excluded, self, training))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.activate(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W_dec + self.b_dec) / self.norm_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def decoder_directions(self, latents: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Unit-norm decoder rows in the model's raw activation space [n, d_in]."""
        rows = self.W_dec if latents is None else self.W_dec[torch.as_tensor(latents, dtype=torch.long)]
        return F.normalize(rows.detach().float(), dim=-1)
