"""The one greedy decoder: parity with a naive one-prompt-at-a-time loop and with HF generate, padding that
changes nothing, stop ids, hooks on prompt and generated tokens, and a stream that computes only what is read."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from conftest import tiny_config
from saelign.errors import SaelignError
from saelign.models import patch_output
from saelign.text import decode_steps, greedy_decode, pad, pad_token_id, sampler, stop_ids, token_ids
from saelign.text.opening import MIN_SHARED_PREFIX, opening_cache, shared_prefix_length

PROMPTS = ["The capital of France is", "Hello", "How do I bake bread? Mix flour and", "I cannot help", "Paris"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def untied(arch: str, vocab_size: int) -> torch.nn.Module:
    """A tiny random model whose greedy outputs vary (tied embeddings make it repeat its input token)."""
    config = tiny_config(arch, vocab_size)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tokenizer):
    return untied(request.param, len(tokenizer))


@torch.inference_mode()
def naive_greedy(model, prompt: list[int], max_new_tokens: int, stop=()) -> list[int]:
    """No batch, no padding, no cache: the whole sequence is re-read for every new token."""
    seq, new = list(prompt), []
    for _ in range(max_new_tokens):
        token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        new.append(token)
        if token in stop:
            break
        seq.append(token)
    return new


def test_batched_decoding_equals_naive_one_at_a_time_greedy(model, tokenizer):
    prompts = token_ids(tokenizer, PROMPTS)
    got = greedy_decode(model, prompts, 6, pad_token_id(tokenizer), batch_size=3)
    assert got == [naive_greedy(model, p, 6) for p in prompts]
    assert len({tuple(row) for row in got}) > 1  # the order of the answers really is checked
    stop = {got[0][2], got[3][1]}  # rows end at (and include) their first stop id; the others run on
    stopped = greedy_decode(model, prompts, 6, pad_token_id(tokenizer), stop=stop, batch_size=2)
    assert stopped == [naive_greedy(model, p, 6, stop) for p in prompts]
    assert all(s == g[:len(s)] for s, g in zip(stopped, got, strict=True)) and len(stopped[0]) <= 3


def test_batched_continuations_equal_hf_greedy_generation(tiny_any, tokenizer):
    _, model, _ = tiny_any
    got = greedy_decode(model, token_ids(tokenizer, PROMPTS), 4, pad_token_id(tokenizer), batch_size=4)
    for i, text in enumerate(PROMPTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
        assert got[i] == hf[0, ids.shape[1]:].tolist()


@torch.inference_mode()
def test_left_and_right_padding_give_the_same_next_tokens(model, tokenizer):
    prompts = token_ids(tokenizer, PROMPTS)
    ids, mask = pad(prompts, pad_token_id(tokenizer))  # right: each row's next token is read at its own end
    logits = model(input_ids=ids, attention_mask=mask).logits
    right = [int(logits[i, len(p) - 1].argmax()) for i, p in enumerate(prompts)]
    left = [row[0] for row in greedy_decode(model, prompts, 1, pad_token_id(tokenizer), batch_size=len(prompts))]
    assert left == right


def test_a_hook_on_generated_tokens_changes_only_what_follows_the_prompt(model, tokenizer):
    prompts = token_ids(tokenizer, PROMPTS[:3])
    block = "model.layers.1" if hasattr(model, "model") else "transformer.h.1"
    push = partial(patch_output, model, block, lambda h: h + 50 * torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(1)))
    plain = greedy_decode(model, prompts, 5, pad_token_id(tokenizer))
    steered = greedy_decode(model, prompts, 5, pad_token_id(tokenizer), token_context=push)
    assert [r[0] for r in steered] == [r[0] for r in plain]  # the prompt was read without the hook
    assert steered != plain
    on_prompt = greedy_decode(model, prompts, 5, pad_token_id(tokenizer), prompt_context=push)
    assert on_prompt != plain


def test_prompt_context_is_active_only_while_the_prompt_is_read(tiny_llama, tokenizer):
    seen = []
    context = partial(patch_output, tiny_llama, "model.layers.0", lambda h: seen.append(h.shape[1]) or h)
    greedy_decode(tiny_llama, token_ids(tokenizer, PROMPTS[:2]), 3, pad_token_id(tokenizer), prompt_context=context)
    assert seen == [max(len(tokenizer(t)["input_ids"]) for t in PROMPTS[:2])]


def test_the_stream_computes_only_the_steps_it_is_asked_for(tiny_llama, tokenizer):
    calls = []
    ids, mask = pad(token_ids(tokenizer, PROMPTS[:2]), pad_token_id(tokenizer), left=True)
    with patch_output(tiny_llama, "model.layers.0", lambda h: calls.append(h.shape[1]) or h):
        steps = decode_steps(tiny_llama, ids, mask, max_new_tokens=10)
        first, second = next(steps), next(steps)
        steps.close()
    assert calls == [ids.shape[1], 1] and first.shape == second.shape == (2,)
    want = greedy_decode(tiny_llama, token_ids(tokenizer, PROMPTS[:2]), 2, pad_token_id(tokenizer))
    assert torch.stack([first, second], dim=1).tolist() == want


def test_a_row_that_stops_leaves_the_batch_and_the_others_decode_the_same(model, tokenizer):
    prompts = token_ids(tokenizer, PROMPTS)
    free = greedy_decode(model, prompts, 8, pad_token_id(tokenizer), batch_size=5)
    stop = {free[1][1]}  # the longest-first order puts this row anywhere; it ends at step 2 at the latest
    sizes = []
    layer = "model.layers.0" if hasattr(model, "model") else "transformer.h.0"
    with patch_output(model, layer, lambda h: sizes.append(h.shape[0]) or h):
        stopped = greedy_decode(model, prompts, 8, pad_token_id(tokenizer), stop=stop, batch_size=5)
    cut = [next((row[:k + 1] for k, t in enumerate(row) if t in stop), row) for row in free]
    assert stopped == cut and len(stopped[1]) <= 2
    assert sizes[0] == 5 and min(sizes) < 5 and sizes == sorted(sizes, reverse=True)  # the batch shrank
    # Edits on generated tokens are per row: the batch keeps every row, and the answers are the same.
    sizes.clear()
    with patch_output(model, layer, lambda h: sizes.append(h.shape[0]) or h):
        kept = greedy_decode(model, prompts, 8, pad_token_id(tokenizer), stop=stop, batch_size=5,
                             token_context=nullcontext)
    assert kept == cut and set(sizes) == {5}


def test_prompts_that_open_alike_read_the_opening_once_per_batch_and_answer_as_alone(model, tokenizer):
    opening = "System: you are a helpful assistant who answers briefly.\nUser: "
    prompts = token_ids(tokenizer, [opening + p for p in PROMPTS])
    shared = shared_prefix_length(prompts)
    assert shared >= MIN_SHARED_PREFIX and all(p[:shared] == prompts[0][:shared] for p in prompts)
    read = []
    layer = "model.layers.0" if hasattr(model, "model") else "transformer.h.0"
    with patch_output(model, layer, lambda h: read.append(h.shape[0] * h.shape[1]) or h):
        got = greedy_decode(model, prompts, 6, pad_token_id(tokenizer), batch_size=3)
    assert got == [naive_greedy(model, p, 6) for p in prompts]
    assert len({tuple(row) for row in got}) > 1
    # Each batch reads the opening alone once, then its rows' own tokens (the longest three come first).
    rest = sorted((len(p) - shared for p in prompts), reverse=True)
    assert read[:2] == [shared, 3 * rest[0]] and read[2 + 5:2 + 5 + 2] == [shared, 2 * rest[3]]
    stop = {got[0][2]}  # pruning finished rows keeps working under the shared opening
    assert greedy_decode(model, prompts, 6, pad_token_id(tokenizer), stop=stop, batch_size=5) == [
        naive_greedy(model, p, 6, stop) for p in prompts]


def sliding_gemma3(vocab_size: int) -> torch.nn.Module:
    """A tiny Gemma 3 whose sliding-window layers (window 6) see less than one prompt: their cache drops tokens."""
    config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=8, num_hidden_layers=4, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=256)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma", "gemma3-sliding"])
def test_the_shared_opening_answers_as_alone_in_every_family(arch, tokenizer):
    model = sliding_gemma3(len(tokenizer)) if arch == "gemma3-sliding" else untied(arch, len(tokenizer))
    prompts = token_ids(tokenizer, ["System: be brief and kind.\nUser: " + p for p in PROMPTS])
    assert shared_prefix_length(prompts) >= MIN_SHARED_PREFIX
    got = greedy_decode(model, prompts, 5, pad_token_id(tokenizer), batch_size=3)
    assert got == [naive_greedy(model, p, 5) for p in prompts]
    # Pads after a cached opening would take real tokens' places in a sliding window: such models read it per row.
    with torch.inference_mode():
        cache = opening_cache(model, prompts[0][:MIN_SHARED_PREFIX], 3)
    assert (cache is None) == (arch == "gemma3-sliding")


def test_the_shared_opening_leaves_every_prompt_a_token_and_is_skipped_when_short():
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]) == 5
    assert shared_prefix_length([[1, 2, 3, 4, 5, 9, 9], [1, 2, 3, 4, 5, 8]]) == 5
    assert shared_prefix_length([[1, 2, 3, 9], [1, 2, 3, 8]]) == 0  # 3 < MIN_SHARED_PREFIX
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6]]) == 0 and shared_prefix_length([]) == 0


def test_sampling_follows_its_seed_and_a_cold_sampler_is_greedy(model, tokenizer):
    ids, mask = pad(token_ids(tokenizer, PROMPTS[:2]), pad_token_id(tokenizer), left=True)

    def run(pick=None) -> list[list[int]]:
        return torch.stack(list(decode_steps(model, ids, mask, 8, pick=pick)), dim=1).tolist()

    greedy = run()
    assert greedy == greedy_decode(model, token_ids(tokenizer, PROMPTS[:2]), 8, pad_token_id(tokenizer))
    assert run(sampler(1e-4, 0)) == greedy  # near zero temperature all mass is on the argmax
    hot = run(sampler(5.0, 3))
    assert hot == run(sampler(5.0, 3)) and hot != greedy and hot != run(sampler(5.0, 4))
    with pytest.raises(SaelignError, match="temperature must be positive"):
        sampler(0.0, 1)


def test_stop_ids_and_errors(tiny_llama, tokenizer):
    assert stop_ids(tiny_llama, tokenizer) == sorted({tokenizer.eos_token_id, tiny_llama.generation_config.eos_token_id})
    assert stop_ids(torch.nn.Linear(2, 2), tokenizer) == [tokenizer.eos_token_id]
    with pytest.raises(SaelignError, match="must be positive"):
        greedy_decode(tiny_llama, [[1]], 0, 0)
    with pytest.raises(SaelignError, match=r"prompt\(s\) \[1\] tokenise to nothing"):
        token_ids(tokenizer, ["Hello", ""])
    assert token_ids(tokenizer, []) == [] and greedy_decode(tiny_llama, [], 2, 0) == []
