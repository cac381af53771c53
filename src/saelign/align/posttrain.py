"""AlignSAE post-training: bind each concept of an ontology to one dedicated SAE latent ("slot").

Two stages, as in the authors' code: stage 1 trains reconstruction only (new slots learn to reconstruct),
stage 2 adds L1 on the free bank, binding, concept⊥free decorrelation, slot silence on generic text and the
optional value head. Every step mixes a batch of concept-position activations with a batch of generic
activations, so the free bank keeps reconstructing everything else.

Choices beyond the authors' code, each a config option:
- slots are appended ("new") or the least-used latents are reused ("reassign"); either way the encoder starts
  as a linear probe (pre-activation 1 on the concept's mean, 0 on the rest) and the decoder row as the concept's
  mean activation offset (class mean minus the mean of all class means), so a swap s→t at α=1 moves the
  activation by the mean difference between the two concepts. The free bank already reconstructs everything,
  so a learned slot row shrinks towards zero and the swap loses its effect; `slot_decoder="fixed"` (default)
  keeps the rows at these offsets and lets the free bank adapt around them;
- for topk/batchtopk/jumprelu SAEs the slots are listed in `SAEConfig.always_on_latents`: top-k runs over the
  free bank only and the slots pass through ReLU, so they are readable whatever the free bank does;
- free-bank decoder rows are held at their loaded norms (so L1 cannot be dodged by growing them); slot rows
  have no norm constraint: with MSE binding the slot value is ≈1, so the row carries the concept's magnitude;
- "silence" keeps slots at zero on generic text; "anchor" keeps the slot encoders near their probe
  initialisation (with few templates per concept, MSE binding alone overfits the train templates);
- the value head is off by default: it makes slot values entity-dependent, which fights a swap at fixed α.

Under torchrun each rank takes every N-th row of each step's concept and generic batches (the data itself is
small and in every rank's memory); gradients are averaged and the decorrelation's batch covariance is taken
over all ranks' rows, so N processes give one process's result up to float summation order."""

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from saelign import checkpoint, distributed
from saelign.align.losses import ValueHead, anchor_loss, binding_loss, decorrelation_loss, silence_loss
from saelign.align.slots import SLOT_MAP_FILE, SlotMap, load_slot_map, save_slot_map
from saelign.configs import config_to_dict, help_field
from saelign.errors import SaelignError
from saelign.progress import logger, progress
from saelign.runinfo import record_stage
from saelign.sae.model import SAE
from saelign.sae.sparse_ops import decode_active, pre_acts_sparse_grad


@dataclass
class PostTrainConfig:
    # Options that may change between a run and its resumption: they do not change the result.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "out"})
    steps_stage1: int = help_field(200, "stage 1 steps: reconstruction only (the authors pre-train here; for a loaded SAE a short warm-up)")
    steps_stage2: int = help_field(1500, "stage 2 steps: all losses")
    batch_size: int = help_field(64, "concept-position activations per step (authors: 64)")
    generic_batch_size: int = help_field(256, "generic activations per step, when they are given as one tensor")
    lr: float = help_field(3e-4, "Adam learning rate, constant (authors: 1e-3, training from scratch)")
    l1_coeff: float = help_field(1e-3, "L1 on the free bank, as mean |z| over rows and free latents (authors: 1e-3)")
    binding: Literal["mse", "ce"] = help_field("mse", "binding loss: mse (slots to one-hot, authors' default; slot value ≈1 = present) or ce (slots as logits)")
    binding_coeff: float = help_field(1.0, "binding loss weight (authors: 1.0)")
    decorrelation_coeff: float = help_field(1e-2, "weight of the squared cross-covariance between slots and free bank (authors: 1e-2)")
    silence_coeff: float = help_field(0.1, "weight pushing slots to zero on generic activations (not in the authors' code; 0 disables)")
    anchor_coeff: float = help_field(1.0, "stage 2: weight keeping each slot's encoder column near its linear-probe "
                                          "initialisation (relative squared distance; not in the authors' code; 0 disables)")
    value_coeff: float = help_field(0.0, "value-head weight (authors: 0.5); needs answer tokens")
    value_hidden: int = help_field(256, "hidden width of each concept's value head (authors: 256)")
    slots: Literal["new", "reassign"] = help_field("new", "new: append one latent per concept; reassign: reuse the least-used latents")
    slot_decoder: Literal["fixed", "learned"] = help_field("fixed", "fixed: slot decoder rows stay at the concepts' mean "
                                                                    "activation offsets; learned: trained like the rest")
    seed: int = help_field(0, "seed for batch sampling and the value head")
    checkpoint_every: int = help_field(200, "steps between checkpoints in --out (0: only at the end)")
    out: str = help_field("", "output folder for the aligned SAE, slot_map.json and checkpoints (empty: keep in memory)")

    @property
    def total_steps(self) -> int:
        return self.steps_stage1 + self.steps_stage2


CHECKPOINT_DIR = "checkpoint"
# Options added after checkpoints were first written, with the value those older runs effectively used.
_ADDED_OPTIONS = {"anchor_coeff": 0.0}


class GenericBatches:
    """Step-indexed generic activations: random rows of a tensor, or the items of an iterable in order.
    An iterable is restarted when exhausted (a DataLoader or activation-store loader can be; a generator
    cannot); on resume the batches of finished steps are skipped, so a resumed run sees the same data."""

    def __init__(self, source: torch.Tensor | Iterable[torch.Tensor], batch_size: int, seed: int):
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self._iter = None if isinstance(source, torch.Tensor) else iter(source)
        self._next_step = 0
        self._cached: tuple[int, torch.Tensor] | None = None
        if isinstance(source, torch.Tensor) and source.reshape(-1, source.shape[-1]).shape[0] == 0:
            raise SaelignError("generic activations are empty; give some residual-stream activations to keep reconstructing")

    def _pull(self) -> torch.Tensor:
        assert self._iter is not None
        try:
            return next(self._iter)
        except StopIteration:
            self._iter = iter(self.source)
            if self._iter is self.source:
                raise SaelignError("generic batches ran out; pass a re-iterable loader or a tensor, or train for fewer steps") from None
            try:
                return next(self._iter)
            except StopIteration:
                raise SaelignError("generic batches are empty; give some residual-stream activations") from None

    def batch(self, step: int) -> torch.Tensor:
        if self._cached and self._cached[0] == step:
            return self._cached[1]
        if isinstance(self.source, torch.Tensor):
            flat = self.source.reshape(-1, self.source.shape[-1])
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7)
            out = flat[torch.randint(flat.shape[0], (self.batch_size,), generator=g)]
        else:
            if step < self._next_step:
                raise SaelignError("generic batches must be read in step order")
            while self._next_step < step:
                self._pull()
                self._next_step += 1
            out = self._pull()
            self._next_step += 1
            out = out.reshape(-1, out.shape[-1])
        self._cached = (step, out.float())
        return out.float()


def _check_inputs(sae: SAE, acts: torch.Tensor, labels: torch.Tensor, names: list[str], cfg: PostTrainConfig) -> None:
    n_concepts = len(names)
    if acts.ndim != 2 or acts.shape[1] != sae.cfg.d_in:
        raise SaelignError(f"concept activations must be [n, d_in={sae.cfg.d_in}], got {list(acts.shape)}; "
                           "capture them at the SAE's hookpoint")
    if labels.shape != (acts.shape[0],):
        raise SaelignError(f"{acts.shape[0]} concept activations but {labels.numel()} labels; give one label per row")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_concepts):
        raise SaelignError(f"labels must lie in 0..{n_concepts - 1} ({n_concepts} concepts)")
    missing = [names[c] for c in range(n_concepts) if not (labels == c).any()]
    if missing:
        raise SaelignError(f"no examples for concept(s) {', '.join(missing)}; every concept needs training prompts")
    if cfg.binding == "ce" and n_concepts < 2:
        raise SaelignError("binding='ce' needs at least two concepts; use binding='mse' for a single concept")
    taken = len(sae.cfg.always_on_latents)
    free = sae.cfg.d_sae - taken - (n_concepts if cfg.slots == "reassign" else 0)
    if n_concepts > free:
        raise SaelignError(f"the ontology has {n_concepts} concepts but the SAE's free bank would keep only {free} latents "
                           f"(d_sae={sae.cfg.d_sae}, slots={cfg.slots}); use a wider SAE, slots='new', or fewer concepts")
    if sae.activation.uses_k and sae.cfg.k > free:
        raise SaelignError(f"k={sae.cfg.k} exceeds the {free} free latents left after reserving slots; use slots='new'")


@torch.no_grad()
def _with_slots(sae: SAE, acts: torch.Tensor, labels: torch.Tensor, generic: torch.Tensor, n_concepts: int,
                mode: str) -> tuple[SAE, list[int]]:
    """A copy of `sae` with one slot per concept, each initialised as a linear probe for its concept."""
    device = sae.W_dec.device
    acts, labels, generic = acts.to(device), labels.to(device), generic.to(device)
    if mode == "new":
        cfg = copy.deepcopy(sae.cfg)
        cfg.d_sae = sae.cfg.d_sae + n_concepts
        aligned = SAE(cfg, device=device)
        slots = list(range(sae.cfg.d_sae, cfg.d_sae))
        old = sae.cfg.d_sae
        aligned.W_enc[:, :old] = sae.W_enc
        aligned.b_enc[:old] = sae.b_enc
        aligned.W_dec[:old] = sae.W_dec
        aligned.b_dec.copy_(sae.b_dec)
        aligned.norm_scale.copy_(sae.norm_scale)
        if sae.threshold is not None:
            aligned.threshold[:old] = sae.threshold
            aligned.threshold[old:] = 0.0
    else:
        aligned = copy.deepcopy(sae)
        usage = (sae.encode(torch.cat([acts, generic])) > 0).float().mean(0)
        usage[sae.cfg.always_on_latents] = float("inf")
        slots = sorted(torch.argsort(usage, stable=True)[:n_concepts].tolist())
        if aligned.threshold is not None:
            aligned.threshold[slots] = 0.0
    # Recorded for every activation (relu ignores it) so cfg.json always says which latents are slots.
    aligned.cfg.always_on_latents = [*sae.cfg.always_on_latents, *slots]
    centred = lambda x: x * aligned.norm_scale - aligned.b_dec  # noqa: E731
    u, g = centred(acts), centred(generic)
    means = torch.stack([u[labels == c].mean(0) for c in range(n_concepts)])
    # A shared reference, so that decoder row t minus row s is exactly the mean difference of the two concepts.
    reference = means.mean(0) if n_concepts > 1 else g.mean(0)
    for c, slot in enumerate(slots):
        rest = [u[labels != c].mean(0)] if (labels != c).any() else []
        other = torch.stack([*rest, g.mean(0)]).mean(0)
        w = means[c] - other
        w = w / w.pow(2).sum().clamp_min(1e-12)
        aligned.W_enc[:, slot] = w
        aligned.b_enc[slot] = -(other @ w)
        aligned.W_dec[slot] = means[c] - reference
    return aligned, slots


def _slot_scales(sae: SAE, acts: torch.Tensor, labels: torch.Tensor, slots: list[int]) -> list[float]:
    with torch.no_grad():
        z = sae.encode(acts.to(sae.W_dec.device))[:, slots].cpu()
    return [max(float(z[labels == c, c].mean()), 1e-6) for c in range(len(slots))]


def post_train(sae: SAE, concept_acts: torch.Tensor, concept_labels: torch.Tensor,
               generic_batches: torch.Tensor | Iterable[torch.Tensor], cfg: PostTrainConfig | None = None,
               concept_names: Sequence[str] | None = None, answer_tokens: torch.Tensor | None = None,
               position: str = "last") -> tuple[SAE, SlotMap]:
    """Return (aligned SAE, slot map), trained on `sae`'s device. With cfg.out set: checkpoints, resume, and
    the SAE + slot_map.json saved there."""
    cfg = cfg or PostTrainConfig()
    distributed.init()
    distributed.require_divisible(cfg.batch_size, "batch_size")
    labels = torch.as_tensor(concept_labels, dtype=torch.long)
    n_concepts = int(labels.max()) + 1 if concept_names is None else len(concept_names)
    names = list(concept_names) if concept_names is not None else [f"concept_{i}" for i in range(n_concepts)]
    acts = concept_acts.float().cpu()
    _check_inputs(sae, acts, labels, names, cfg)
    if cfg.value_coeff > 0 and (answer_tokens is None or len(answer_tokens) != len(acts)):
        raise SaelignError("value_coeff > 0 needs answer_tokens: the first answer token of every concept example")
    out = Path(cfg.out) if cfg.out else None
    # The concepts and how many examples each has: a checkpoint resumes only on the same concept data.
    data = {"concepts": names, "examples": torch.bincount(labels, minlength=n_concepts).tolist()}
    if out is not None and (out / SLOT_MAP_FILE).is_file():
        from saelign.sae.formats import load_sae

        _restore(out, cfg, data)  # raises if the finished run used other options or concepts
        logger.info(f"post-training already finished in {out}; loading it")
        aligned = load_sae(out)
        return aligned, load_slot_map(out, aligned)

    device = sae.W_dec.device  # the caller places the SAE (beside its model)
    stream = GenericBatches(generic_batches, cfg.generic_batch_size, cfg.seed)
    aligned, slots = _with_slots(copy.deepcopy(sae).to(device).float(), acts, labels, stream.batch(0), n_concepts, cfg.slots)
    value_head = None
    if cfg.value_coeff > 0:
        assert answer_tokens is not None
        value_head = ValueHead(n_concepts, torch.unique(answer_tokens), cfg.value_hidden,
                               torch.Generator().manual_seed(cfg.seed)).to(device)
    params = [aligned.W_enc, aligned.b_enc, aligned.W_dec, aligned.b_dec, *(value_head.parameters() if value_head else [])]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    free_mask = torch.ones(aligned.cfg.d_sae, dtype=torch.bool, device=device)
    free_mask[aligned.cfg.always_on_latents] = False
    # Free rows are scaled back to their loaded norms after every step, slot rows left as they are (factor 1).
    row_norms = aligned.W_dec.detach().norm(dim=1, keepdim=True)
    slot_rows = aligned.W_dec.detach()[slots].clone()
    probe = aligned.W_enc.detach()[:, slots].clone()  # recomputed identically on resume: the init is deterministic

    start = 0
    if out is not None:
        start = _restore(out, cfg, data, slots, aligned, value_head, optimizer)
    acts_d, labels_d = acts.to(device), labels.to(device)
    answers_d = answer_tokens.to(device) if answer_tokens is not None else None
    bar = progress(total=cfg.total_steps, desc="AlignSAE post-train", unit="step")
    bar.update(start)
    for step in range(start, cfg.total_steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        # this rank's share of the step's batches (all of them in one process)
        idx = distributed.split(torch.randint(len(acts), (cfg.batch_size,), generator=g)).to(device)
        generic = distributed.split(stream.batch(step)).to(device)
        terms = training_losses(aligned, slots, free_mask, acts_d[idx], labels_d[idx], generic,
                                cfg, stage=1 if step < cfg.steps_stage1 else 2, value_head=value_head,
                                answers=answers_d[idx] if answers_d is not None else None, probe=probe)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        distributed.all_reduce_gradients(params)
        optimizer.step()
        with torch.no_grad():
            W_dec = aligned.W_dec
            scale = row_norms / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            W_dec.mul_(torch.where(free_mask.unsqueeze(1), scale, 1.0))  # in place: no copy of the free rows
            if cfg.slot_decoder == "fixed":
                aligned.W_dec[slots] = slot_rows
        bar.update(1)
        if step % 50 == 0 or step == cfg.total_steps - 1:
            shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            bar.set_postfix_str(shown)
            logger.debug(f"step {step}: {shown}")
        done = step + 1
        if out is not None and (done == cfg.total_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            _save(out, cfg, data, slots, aligned, value_head, optimizer, done)
    bar.close()

    slot_map = SlotMap(concepts=names, slots=slots, hookpoint=sae.cfg.hookpoint, d_sae=aligned.cfg.d_sae,
                       position=position, scales=_slot_scales(aligned, acts, labels, slots))
    if out is not None and distributed.is_main():
        from saelign.sae.formats import save_sae

        save_sae(aligned, out)
        # Recorded before the slot map: a rerun after a crash between the two would find the run finished.
        record_stage(out, "align-posttrain", config_to_dict(cfg), slots=dict(zip(names, slots, strict=True)))
        save_slot_map(slot_map, out)  # written last: its presence marks the run finished
    distributed.barrier("the aligned SAE rank 0 writes")
    return aligned, slot_map


def _save(out: Path, cfg: PostTrainConfig, data: dict[str, Any], slots: list[int], sae: SAE,
          value_head: ValueHead | None, optimizer: torch.optim.Optimizer, step: int) -> None:
    optim, groups = checkpoint.optimizer_tensors(optimizer)
    tensors = {"sae": sae.state_dict(), "optimizer": optim}
    if value_head is not None:
        tensors["value_head"] = value_head.state_dict()
    checkpoint.save(out / CHECKPOINT_DIR, step, tensors, checkpoint.fingerprint(cfg, **data), slots=slots,
                    param_groups=groups)


def _restore(out: Path, cfg: PostTrainConfig, data: dict[str, Any], slots: list[int] | None = None,
             sae: SAE | None = None, value_head: ValueHead | None = None,
             optimizer: torch.optim.Optimizer | None = None) -> int:
    """Load `out`'s checkpoint into the modules and return its step (0: none). Refuses other options or slots;
    without modules it only performs those checks."""
    # Checkpoints older than the concept fingerprint cannot tell: they resume as before (a finished folder's
    # ontology copy is still compared by align train).
    ckpt = checkpoint.load(out / CHECKPOINT_DIR, checkpoint.fingerprint(cfg, **data), added={**_ADDED_OPTIONS, **data})
    if ckpt is None:
        return 0
    state, tensors = ckpt
    if slots is not None and state.get("slots") != slots:
        raise SaelignError(f"{out} reserved slots {state.get('slots')} but this run chose {slots}: the SAE or the "
                           "concept data changed; use a new --out")
    if sae is not None and optimizer is not None:
        sae.load_state_dict(tensors["sae"])
        if value_head is not None:
            value_head.load_state_dict(tensors["value_head"])
        checkpoint.load_optimizer(optimizer, tensors["optimizer"], state["param_groups"])
    return int(state["step"])


def training_losses(sae: SAE, slots: list[int], free_mask: torch.Tensor, concept_x: torch.Tensor, labels: torch.Tensor,
                    generic_x: torch.Tensor, cfg: PostTrainConfig, stage: int, value_head: ValueHead | None = None,
                    answers: torch.Tensor | None = None, probe: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All loss terms of one step (stage 1: reconstruction only); `loss` is their weighted sum. `probe`: the slots'
    initial encoder columns [d_in, C], for the anchor term."""
    x = torch.cat([concept_x, generic_x])
    # gradients through z's few nonzero entries: the encoder's weight gradient and the decoder product read
    # only those (the same loss and gradients as the dense products, in another summation order)
    pre = pre_acts_sparse_grad(x * sae.norm_scale, sae.b_dec, sae.W_enc, sae.b_enc)
    z = sae.activate(pre)
    x_hat = (decode_active(z, sae.W_dec) + sae.b_dec) / sae.norm_scale
    recon = ((x_hat - x) * sae.norm_scale).pow(2).mean()
    terms = {"recon": recon}
    if stage >= 2:
        n = len(concept_x)
        free = z[:, free_mask]
        terms["l1"] = free.abs().mean()
        terms["binding"] = binding_loss(pre[:n, slots], labels, cfg.binding)
        # a covariance over the global batch: every rank's rows, with gradients back to each rank's own
        terms["decorrelation"] = decorrelation_loss(distributed.gather_rows_with_grad(z[:, slots]),
                                                    distributed.gather_rows_with_grad(free))
        terms["silence"] = silence_loss(z[n:, slots])
        weights = {"l1": cfg.l1_coeff, "binding": cfg.binding_coeff, "decorrelation": cfg.decorrelation_coeff,
                   "silence": cfg.silence_coeff}
        if value_head is not None and answers is not None:
            own = z[torch.arange(n), torch.as_tensor(slots, device=z.device)[labels]]
            terms["value"] = value_head.loss(own, labels, answers)
            weights["value"] = cfg.value_coeff
        if cfg.anchor_coeff > 0 and probe is not None:
            terms["anchor"] = anchor_loss(sae.W_enc[:, slots], probe)
            weights["anchor"] = cfg.anchor_coeff
        total = recon + sum(w * terms[k] for k, w in weights.items())
    else:
        total = recon
    return {"loss": total, **terms}
