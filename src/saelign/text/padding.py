"""Token ids in batches: encoding, the pad-id rule and the padder every batch in saelign uses.

Pad id: the tokenizer's pad token, else its end-of-sequence token, else 0. It only fills positions the
attention mask hides (and losses ignore), so any id would do; the fallbacks serve hand-made tokenizers."""

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from saelign.errors import require


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], special_tokens: bool = True
              ) -> list[list[int]]:
    """Each text's token ids; a text without any is an error (there is nothing to read or continue)."""
    ids = tokenizer(list(texts), add_special_tokens=special_tokens)["input_ids"] if texts else []
    empty = [i for i, row in enumerate(ids) if not row]
    require(not empty, f"prompt(s) {empty[:5]} tokenise to nothing; each prompt needs at least one token")
    return ids


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return next((int(i) for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)


def pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [n, longest row], int64, mask 1 on real tokens.
    Right padding keeps every token at its unpadded index; left padding puts every row's last token at index
    -1, where generation continues (give the model position ids counted from each row's first real token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
