import pytest
import torch

from saelign.align.interventions import (
    SlotGuard,
    apply_edit,
    concept_swap,
    generate_with,
    sae_splice,
    slot_amplify,
    slot_clamp,
    slot_zero,
)
from saelign.align.slots import SlotMap
from saelign.errors import SaelignError
from saelign.models import forward_capture, patch_output
from saelign.sae.model import SAE, SAEConfig

HOOK = "model.layers.1"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, activation="relu", hookpoint=HOOK))
    with torch.no_grad():
        sae.reset_parameters(seed=0)
        sae.norm_scale.fill_(0.7)  # a non-trivial scale, so unit mistakes show
    return sae.requires_grad_(False)


@pytest.fixture(scope="module")
def slot_map():
    return SlotMap(["a", "b", "c"], [5, 9, 13], HOOK, 64, scales=[1.0, 2.0, 0.5])


@pytest.fixture(scope="module")
def ids():
    return torch.randint(5, 300, (2, 7), generator=torch.Generator().manual_seed(1))


def run(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def hidden(model, ids):
    return forward_capture(model, [HOOK], ids, stop_early=False)[HOOK]


def test_splice_with_error_term_is_identity_and_without_it_equals_the_reconstruction(tiny_llama, sae, ids):
    clean, x = run(tiny_llama, ids), hidden(tiny_llama, ids)
    with sae_splice(tiny_llama, sae):
        assert torch.equal(hidden(tiny_llama, ids), x)
        assert torch.equal(run(tiny_llama, ids), clean)
    with sae_splice(tiny_llama, sae, keep_error=False):
        torch.testing.assert_close(hidden(tiny_llama, ids), sae(x))
        assert not torch.allclose(run(tiny_llama, ids), clean)
    assert torch.equal(run(tiny_llama, ids), clean)  # hooks are removed on exit


def test_slot_zero_removes_exactly_the_slot_contribution(tiny_llama, sae, ids):
    x = hidden(tiny_llama, ids)
    z = sae.encode(x)
    assert (z[..., 5] > 0).any()
    with slot_zero(tiny_llama, sae, 5):
        kept = hidden(tiny_llama, ids)
    torch.testing.assert_close(kept, x - z[..., 5:6] * sae.W_dec[5] / sae.norm_scale)
    with slot_zero(tiny_llama, sae, "a", slot_map=SlotMap(["a"], [5], HOOK, 64), keep_error=False):
        replaced = hidden(tiny_llama, ids)
    z0 = z.clone()
    z0[..., 5] = 0
    torch.testing.assert_close(replaced, sae.decode(z0))


def test_clamp_and_amplify(tiny_llama, sae, ids):
    x = hidden(tiny_llama, ids)
    z = sae.encode(x)
    with slot_clamp(tiny_llama, sae, [5, 9], 3.0):
        clamped = hidden(tiny_llama, ids)
    expected = x + ((3.0 - z[..., 5:6]) * sae.W_dec[5] + (3.0 - z[..., 9:10]) * sae.W_dec[9]) / sae.norm_scale
    torch.testing.assert_close(clamped, expected)
    with slot_amplify(tiny_llama, sae, 5, 1.0):
        assert torch.equal(hidden(tiny_llama, ids), x)
    with slot_amplify(tiny_llama, sae, 5, 3.0):
        torch.testing.assert_close(hidden(tiny_llama, ids), x + 2 * z[..., 5:6] * sae.W_dec[5] / sae.norm_scale)
    with pytest.raises(SaelignError, match="pass slot_map="):
        slot_zero(tiny_llama, sae, "a")
    with pytest.raises(SaelignError, match="outside 0..63"):
        slot_zero(tiny_llama, sae, 64)


def test_interventions_nest(tiny_llama, sae, ids):
    with slot_zero(tiny_llama, sae, 5):
        alone = run(tiny_llama, ids)
    with sae_splice(tiny_llama, sae), slot_zero(tiny_llama, sae, 5):
        assert torch.equal(run(tiny_llama, ids), alone)
    x = hidden(tiny_llama, ids)
    with slot_clamp(tiny_llama, sae, 5, 0.0, positions=0), slot_clamp(tiny_llama, sae, 9, 0.0, positions="last"):
        both = hidden(tiny_llama, ids)
    z = sae.encode(x)
    torch.testing.assert_close(both[:, 0], x[:, 0] - z[:, 0, 5:6] * sae.W_dec[5] / sae.norm_scale)
    torch.testing.assert_close(both[:, -1], x[:, -1] - z[:, -1, 9:10] * sae.W_dec[9] / sae.norm_scale)
    assert torch.equal(both[:, 1:-1], x[:, 1:-1])


def test_concept_swap_identity_cases_and_values(tiny_llama, sae, slot_map, ids):
    clean, x = run(tiny_llama, ids), hidden(tiny_llama, ids)
    with concept_swap(tiny_llama, sae, slot_map, "a", "a", alpha=5.0):
        assert torch.equal(run(tiny_llama, ids), clean)
    quiet = SAE(sae.cfg).requires_grad_(False)
    quiet.load_state_dict(sae.state_dict())
    quiet.b_enc[[5, 9]] = -1e4  # both slots silent everywhere: α = 0 changes nothing
    with concept_swap(tiny_llama, quiet, slot_map, "a", "b", alpha=0.0):
        assert torch.equal(run(tiny_llama, ids), clean)
    with concept_swap(tiny_llama, sae, slot_map, "a", "b", alpha=2.0):
        swapped = hidden(tiny_llama, ids)
    z = sae.encode(x)
    last = x[:, -1] + ((2.0 * 2.0 - z[:, -1, 9:10]) * sae.W_dec[9] - z[:, -1, 5:6] * sae.W_dec[5]) / sae.norm_scale
    torch.testing.assert_close(swapped[:, -1], last)
    assert torch.equal(swapped[:, :-1], x[:, :-1])


def test_per_row_swap_equals_each_rows_own_swap(tiny_llama, sae, slot_map, ids):
    """One forward that swaps a->b in row 0 and c->c (left alone) in row 1 gives each row what its own swap gives."""
    with concept_swap(tiny_llama, sae, slot_map, [0, 2], [1, 2], alpha=2.0, positions="all", when_active=True):
        both = hidden(tiny_llama, ids)
    with concept_swap(tiny_llama, sae, slot_map, "a", "b", alpha=2.0, positions="all", when_active=True):
        torch.testing.assert_close(both[0], hidden(tiny_llama, ids)[0])
    torch.testing.assert_close(both[1], hidden(tiny_llama, ids)[1])
    assert not torch.equal(both[0], hidden(tiny_llama, ids)[0])
    with pytest.raises(SaelignError, match="one source and target per row"), \
            concept_swap(tiny_llama, sae, slot_map, [0, 1, 2], [1, 2, 0], alpha=2.0):
        hidden(tiny_llama, ids)


def test_gated_swap_touches_only_positions_where_the_source_is_the_active_concept(tiny_llama, sae, slot_map, ids):
    x = hidden(tiny_llama, ids)
    z = sae.encode(x)[..., slot_map.slots]
    active = (z.argmax(-1) == 0) & (z[..., 0] > 0)
    assert active.any() and not active.all()
    with concept_swap(tiny_llama, sae, slot_map, "a", "c", alpha=2.0, positions="all", when_active=True):
        swapped = hidden(tiny_llama, ids)
    changed = (swapped != x).any(-1)
    assert torch.equal(changed, active)


def test_slot_guard_flags_exactly_above_threshold(tiny_llama, sae, slot_map, ids):
    clean, x = run(tiny_llama, ids), hidden(tiny_llama, ids)
    z = sae.encode(x)[..., [5, 13]]
    threshold = float(z.median())
    expected = {(r, p, "ac"[k]) for r, p, k in (z > threshold).nonzero().tolist()}
    with SlotGuard(tiny_llama, sae, slot_map, ["a", "c"], mode="flag", threshold=threshold) as guard:
        assert torch.equal(run(tiny_llama, ids), clean)
    assert {(e.row, e.position, e.concept) for e in guard.events} == expected and guard.forwards == 1
    assert all(e.value > threshold for e in guard.events)

    guard = SlotGuard(tiny_llama, sae, slot_map, ["a"], mode="zero", threshold=threshold)
    with guard:
        guarded = hidden(tiny_llama, ids)
    over = sae.encode(x)[..., 5] > threshold
    expected_h = x - torch.where(over, sae.encode(x)[..., 5], 0)[..., None] * sae.W_dec[5] / sae.norm_scale
    torch.testing.assert_close(guarded, expected_h)
    assert guard.triggered
    guard.reset()
    with guard:
        run(tiny_llama, ids[:, :1] * 0 + 5)
    assert guard.forwards == 1
    with pytest.raises(SaelignError, match="mode must be"):
        SlotGuard(tiny_llama, sae, slot_map, ["a"], mode="block")


def test_generate_with_matches_hf_greedy_and_applies_interventions(tiny_llama, tokenizer, sae, slot_map):
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    hf = tiny_llama.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids),
                             pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(hf[0, ids.shape[1]:], skip_special_tokens=True)
    assert generate_with(tiny_llama, tokenizer, prompt, max_new_tokens=6) == expected
    strong = SlotMap(["a", "b"], [5, 9], HOOK, 64, scales=[1.0, 400.0])
    swap = concept_swap(tiny_llama, sae, strong, "a", "b", alpha=2.0)
    assert generate_with(tiny_llama, tokenizer, prompt, swap, max_new_tokens=6) != expected

    calls = []
    with patch_output(tiny_llama, HOOK, lambda h: calls.append(h.shape[1]) or h):
        generate_with(tiny_llama, tokenizer, prompt, slot_zero(tiny_llama, sae, 5), max_new_tokens=3)
    assert calls[0] == ids.shape[1] and calls[1:] == [1, 1]
    guard = SlotGuard(tiny_llama, sae, slot_map, ["a"], mode="flag", threshold=0.0)
    generate_with(tiny_llama, tokenizer, prompt, guard, max_new_tokens=3, during="prompt")
    assert guard.forwards == 1
    guard.reset()
    generate_with(tiny_llama, tokenizer, prompt, guard, max_new_tokens=3, during="all")
    assert guard.forwards == 3


def test_apply_edit_out_of_range_position_passes_through(sae):
    h = torch.randn(1, 3, 32)
    assert apply_edit(sae, h, lambda z: (z * 0, None), positions=-5) is h
    with pytest.raises(SaelignError, match="positions must be"):
        apply_edit(sae, h, lambda z: (z, None), positions="first")


def test_apply_edit_slice_edits_exactly_that_range(sae):
    h = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3))
    zero_all = lambda z: (z * 0, None)  # noqa: E731
    out = apply_edit(sae, h, zero_all, positions=slice(-3, None))
    assert torch.equal(out[:, :3], h[:, :3])
    torch.testing.assert_close(out[:, 3:], apply_edit(sae, h[:, 3:], zero_all, positions="all"))
    assert not torch.allclose(out[:, 3:], h[:, 3:])
    torch.testing.assert_close(apply_edit(sae, h, zero_all, positions=slice(1, 3))[:, 1:3],
                               apply_edit(sae, h[:, 1:3], zero_all, positions="all"))
    assert apply_edit(sae, h, zero_all, positions=slice(4, 2)) is h  # empty range passes through
    with pytest.raises(SaelignError, match="contiguous"):
        apply_edit(sae, h, zero_all, positions=slice(0, None, 2))


def test_concept_swap_over_a_slice_matches_the_per_position_formula(tiny_llama, sae, slot_map, ids):
    x = hidden(tiny_llama, ids)
    with concept_swap(tiny_llama, sae, slot_map, "a", "b", alpha=2.0, positions=slice(-3, None)):
        swapped = hidden(tiny_llama, ids)
    z = sae.encode(x)
    tail = x[:, -3:] + ((2.0 * 2.0 - z[:, -3:, 9:10]) * sae.W_dec[9] - z[:, -3:, 5:6] * sae.W_dec[5]) / sae.norm_scale
    torch.testing.assert_close(swapped[:, -3:], tail)
    assert torch.equal(swapped[:, :-3], x[:, :-3])
