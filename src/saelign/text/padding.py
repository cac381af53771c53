"""The pad-id rule and the padder every batch in saelign uses.

Pad id: the tokenizer's pad token, else its end-of-sequence token, else 0. The id only fills positions the
attention mask hides (and that losses ignore), so any id would do; `load_tokenizer` sets pad to EOS already,
the fallbacks serve tokenizers passed in by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [n, longest row], int64, mask 1 on real tokens.

    Right padding keeps every token at its unpadded index; left padding puts every row's last token at index
    -1, where generation continues (give the model position ids counted from each row's first real token).
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
