"""SAE training and evaluation over files, what `saelign sae train` / `sae eval` run: the trainers fill each
SAE config's width, hookpoint and model from the activation source."""

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from saelign import distributed
from saelign.configs import config_to_dict
from saelign.datasets.corpus import iter_contexts, open_corpus
from saelign.errors import SaelignError, require
from saelign.models import DEFAULT_MODEL, ModelConfig, load_model
from saelign.models.loading import model_identity
from saelign.progress import logger
from saelign.runinfo import record_stage
from saelign.sae.evaluate import EVAL_FILE, EvalConfig, context_batches, evaluate_sae
from saelign.sae.formats import check_sae_matches, load_sae
from saelign.sae.model import SAE, SAEConfig
from saelign.sae.train import SAETrainConfig, train_saes
from saelign.store import ActivationStore, CaptureConfig, stream_activations
from saelign.store.capture import tokenizer_identity


def rebatch(chunks: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Cut a stream of row chunks of any size into batches of `batch_size` rows (the last may be smaller)."""
    pending: list[torch.Tensor] = []
    rows = 0
    for chunk in chunks:
        pending.append(chunk)
        rows += chunk.shape[0]
        while rows >= batch_size:
            joined = torch.cat(pending)
            yield joined[:batch_size]
            pending, rows = [joined[batch_size:]], rows - batch_size
    if rows:
        yield torch.cat(pending)


def _train(batches: Iterable[torch.Tensor], sae_cfgs: Sequence[SAEConfig], tcfg: SAETrainConfig,
           names: list[str] | None, **source: Any) -> list[SAE]:
    return train_saes(batches, [dataclasses.replace(c, **source) for c in sae_cfgs], tcfg, names)


def rank_batches(store: ActivationStore, tcfg: SAETrainConfig, rank: int,
                 world_size: int) -> Iterator[torch.Tensor]:
    """Rank `rank`'s shares of the global training batches: its own shards, batch_size / world_size rows a
    step. Ranks' shards hold unequal token counts, so a rank may go on into the next epoch to reach its
    total_tokens / world_size rows."""
    epochs = math.ceil(tcfg.total_tokens / store.num_tokens) + (world_size > 1)
    return store.batches(tcfg.batch_size // world_size, shuffle=True, seed=tcfg.seed, epochs=epochs,
                         max_tokens=-(-tcfg.total_tokens // world_size), rank=rank, world_size=world_size)


def train_from_store(store: str | Path, sae_cfgs: Sequence[SAEConfig], tcfg: SAETrainConfig,
                     names: list[str] | None = None) -> list[SAE]:
    """Train the SAEs on a store's activations (shuffled; total_tokens 0 means one pass over the store).
    Under torchrun each rank reads its own shards, batch_size / world_size rows per step."""
    distributed.init()
    st = ActivationStore(store)
    if not tcfg.total_tokens:
        tcfg.total_tokens = st.num_tokens
    distributed.require_divisible(tcfg.batch_size, "batch_size")
    batches = rank_batches(st, tcfg, distributed.rank(), distributed.world_size())
    return _train(batches, sae_cfgs, tcfg, names, d_in=st.d_in, hookpoint=st.hookpoint,
                  model=str(st.manifest.get("model", "")))


def train_from_stores(stores: Sequence[str | Path], sae_cfgs: Sequence[SAEConfig], tcfg: SAETrainConfig,
                      names: list[str] | None = None) -> dict[str, list[SAE]]:
    """Train the SAEs at each store's hookpoint, into OUT/<hookpoint> (a single store: into OUT itself);
    return {hookpoint: SAEs} of the hookpoints this process trained. With `distribute_modules` under torchrun,
    rank r trains hookpoints r, r + N, ... alone on their whole stores; otherwise all ranks share each one."""
    require(stores, "no activation store given")
    hookpoints = [ActivationStore(s, verify=False).hookpoint for s in stores]
    if len(set(hookpoints)) < len(hookpoints):
        raise SaelignError(f"two of the stores {list(map(str, stores))} hold the same hookpoint; give one "
                           "store per hookpoint")
    if len(stores) == 1:
        return {hookpoints[0]: train_from_store(stores[0], sae_cfgs, tcfg, names)}
    distributed.init()
    mine = list(range(len(stores)))
    if tcfg.distribute_modules and distributed.world_size() > 1:
        mine = mine[distributed.rank()::distributed.world_size()]
        if not mine:
            logger.warning(f"rank {distributed.rank()} has no hookpoint to train: {len(stores)} hookpoints "
                           f"for {distributed.world_size()} processes")
    trained = {}
    for index in mine:
        folder = str(Path(tcfg.out) / hookpoints[index]) if tcfg.out else ""
        folder_cfg = dataclasses.replace(tcfg, out=folder)
        with distributed.solo() if tcfg.distribute_modules else contextlib.nullcontext():
            trained[hookpoints[index]] = train_from_store(stores[index], sae_cfgs, folder_cfg, names)
    distributed.barrier("every rank's hookpoints")
    return trained


def train_on_the_fly(model_cfg: ModelConfig, hookpoint: str, sae_cfgs: Sequence[SAEConfig],
                     tcfg: SAETrainConfig, corpus: str = "sotu", context_length: int = 128,
                     names: list[str] | None = None) -> list[SAE]:
    """Train the SAEs on activations captured from the model as training reads them (no store written)."""
    require(tcfg.total_tokens, "on-the-fly training needs --total-tokens (there is no store to count)")
    distributed.init()
    distributed.require_divisible(tcfg.batch_size, "batch_size")
    model, tokenizer = load_model(model_cfg)
    cfg = CaptureConfig(hookpoints=[hookpoint], corpus=corpus, context_length=context_length, token_budget=0)
    # Each rank forwards its own share of the corpus's batches (`stream_activations` splits them).
    chunks = (acts[hookpoint] for acts in stream_activations(model, tokenizer, cfg))
    first = next(chunks, None)
    if first is None:
        raise SaelignError(f"corpus {corpus!r} yielded no tokens to train on")
    share = tcfg.batch_size // distributed.world_size()
    return _train(rebatch(itertools.chain([first], chunks), share), sae_cfgs, tcfg, names,
                  d_in=first.shape[1], hookpoint=hookpoint, model=model_identity(model_cfg))


def evaluate_sae_files(sae_path: str | Path, store_path: str | Path, cfg: EvalConfig,
                       model_cfg: ModelConfig | None = None, hookpoint: str | None = None,
                       overwrite: bool = False) -> dict[str, Any]:
    """Evaluate a saved SAE on a store (and spliced into its model); writes eval.json, the density plot and
    run.json into cfg.out, replacing an earlier evaluation there only with `overwrite`. `model_cfg` None or
    with an empty `model` means the store's model; `hookpoint` defaults to the SAE's, else the store's."""
    earlier = Path(cfg.out) / EVAL_FILE
    require(overwrite or not earlier.exists(), f"{earlier} holds an earlier evaluation; pass --overwrite to "
                                               "replace it, or choose another --out")
    store = ActivationStore(store_path)
    model_cfg = dataclasses.replace(model_cfg or ModelConfig(model=""))
    recorded = str(store.manifest.get("model", DEFAULT_MODEL))  # the default model is recorded by name
    default = recorded == model_identity(ModelConfig())
    model_cfg.model = model_cfg.model or (DEFAULT_MODEL if default else recorded)
    sae = load_sae(sae_path)
    hookpoint = hookpoint or sae.cfg.hookpoint or store.hookpoint
    require(sae.d_in == store.d_in, f"the SAE reads width {sae.d_in} but store {store_path} holds width "
                                    f"{store.d_in}; evaluate it on a store of its own hookpoint")
    require(hookpoint == store.hookpoint, f"the SAE is for hookpoint {hookpoint} but store {store_path} "
                                          f"holds {store.hookpoint}")
    batches = store.batches(cfg.batch_size, shuffle=False, max_tokens=cfg.max_tokens or None)
    model = token_batches = None
    if cfg.n_contexts > 0:
        model, tokenizer = load_model(model_cfg)
        check_sae_matches(sae, model, hookpoint)
        recorded = store.manifest.get("tokenizer")
        recorded_vocab = recorded.get("vocab_sha256") if isinstance(recorded, dict) else None
        if recorded_vocab not in (None, tokenizer_identity(tokenizer)["vocab_sha256"]):
            raise SaelignError(f"store {store_path} was captured with another tokenizer than "
                               f"{model_cfg.model}'s; evaluate with the store's model (leave --model out) or "
                               "capture a store with this one")
        sae = sae.to(next(model.parameters()).device)
        manifest = store.manifest
        recorded = manifest.get("corpus", {})
        same_corpus = not cfg.corpus or cfg.corpus == recorded.get("source")
        corpus = open_corpus(cfg.corpus or recorded.get("source", "sotu"), recorded.get("text_field", "text"),
                             bool(recorded.get("chat", False)), int(recorded.get("seed", 0)))
        if (skip := cfg.skip_contexts) < 0:  # the contexts the store covers, so the text is unseen
            skip = store.last_context() + 1 if same_corpus else 0
        masking = manifest.get("masking", {})
        contexts = iter_contexts(corpus, tokenizer, int(manifest.get("context_length", 128)))
        token_batches = context_batches(contexts, masking.get("token_ids", []),
                                        bool(masking.get("first_position", True)), cfg.context_batch_size,
                                        cfg.n_contexts, skip)
    results = evaluate_sae(sae, batches, model=model, hookpoint=hookpoint, token_batches=token_batches,
                           cfg=cfg, out_dir=cfg.out)
    summary = {k: v for k, v in results.items() if k != "firing_frequency"}
    record_stage(cfg.out, "sae_eval", {"sae": str(sae_path), "store": str(store_path),
                                       "eval": config_to_dict(cfg), "model": config_to_dict(model_cfg)},
                 results=summary)
    return results
