import pytest
import torch

from saelign.errors import SaelignError
from saelign.models import forward_capture, patch_output, resolve_hookpoints


def test_glob_matches_one_path_segment(tiny_llama):
    blocks = resolve_hookpoints(tiny_llama, ["model.layers.*"])
    assert blocks == [f"model.layers.{i}" for i in range(4)]
    assert resolve_hookpoints(tiny_llama, "model.layers.*.mlp") == [f"model.layers.{i}.mlp" for i in range(4)]


def test_unknown_hookpoint_lists_close_matches(tiny_llama):
    with pytest.raises(SaelignError, match="close matches: model.layers.1"):
        resolve_hookpoints(tiny_llama, ["model.layer.1"])


def test_capture_equals_hidden_states_for_every_architecture(tiny_any, tokenizer):
    arch, model, pattern = tiny_any
    blocks = resolve_hookpoints(model, [pattern])
    ids = torch.randint(5, len(tokenizer), (2, 12))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    got = forward_capture(model, [blocks[0], blocks[2]], ids)
    # hidden_states[i + 1] is the output of block i, except the last entry which is after the final norm
    torch.testing.assert_close(got[blocks[0]], hidden[1])
    torch.testing.assert_close(got[blocks[2]], hidden[3])


def test_stop_early_skips_later_blocks(tiny_llama):
    ran = []
    handles = [m.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, m in enumerate(tiny_llama.model.layers)]
    try:
        forward_capture(tiny_llama, ["model.layers.1"], torch.randint(5, 100, (1, 6)))
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


def test_patch_output_changes_downstream_and_is_removed(tiny_llama):
    ids = torch.randint(5, 100, (1, 6))
    with torch.no_grad():
        clean = tiny_llama(input_ids=ids).logits
        with patch_output(tiny_llama, "model.layers.1", lambda x: torch.zeros_like(x)):
            patched = tiny_llama(input_ids=ids).logits
            zeroed = forward_capture(tiny_llama, ["model.layers.1"], ids)["model.layers.1"]
        after = tiny_llama(input_ids=ids).logits
    assert not torch.allclose(clean, patched)
    assert torch.count_nonzero(zeroed) == 0
    torch.testing.assert_close(clean, after)
