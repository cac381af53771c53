"""Shared fixtures: tiny randomly initialised HF models (Llama, GPT-2, Qwen2, Gemma) and a small local tokenizer.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences, with ChatML specials.
"""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

os.environ.setdefault("SAELIGN_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
    "I cannot help with that request because it could cause harm.",
    "Sparse autoencoders decompose activations into interpretable features.",
    "user assistant system hello world 0123456789 !?.,;:'\"()[]{}",
] * 20


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<pad>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def tiny_config(arch: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_hidden_layers=4, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=2, **common)
    if arch == "gemma":
        return GemmaConfig(num_key_value_heads=1, head_dim=8, **common)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=256, n_inner=64, bos_token_id=1, eos_token_id=2)
    raise ValueError(arch)


def make_tiny_model(arch: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return make_tiny_model("llama", len(tokenizer))


@pytest.fixture(params=["llama", "gpt2", "qwen2", "gemma"])
def tiny_any(request, tokenizer):
    """(arch, model, block hookpoint pattern) for each supported architecture family."""
    blocks = {"gpt2": "transformer.h.*"}.get(request.param, "model.layers.*")
    return request.param, make_tiny_model(request.param, len(tokenizer)), blocks


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_llama, tokenizer):
    """The tiny Llama saved as a local HF folder (what users pass as --model PATH)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
