"""The pad-id rule and the padder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from saelign.text import pad, pad_token_id


@pytest.mark.parametrize("pad_id, eos_id, expected", [(7, 3, 7), (0, 3, 0), (None, 3, 3), (None, 0, 0), (None, None, 0)])
def test_pad_id_is_pad_else_eos_else_zero(pad_id, eos_id, expected):
    assert pad_token_id(SimpleNamespace(pad_token_id=pad_id, eos_token_id=eos_id)) == expected


def test_pad_right_keeps_tokens_at_their_positions():
    ids, mask = pad([[5, 6, 7], [8]], 0)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0]]))


def test_pad_left_ends_every_row_at_the_last_index():
    ids, mask = pad([[5, 6, 7], [8]], -100, left=True)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [-100, -100, 8]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [0, 0, 1]]))
    assert ids.dtype == mask.dtype == torch.long
