"""Token ids and padding, batched greedy decoding with hooks, normalisation and answer matching: one each."""

from saelign.text.decode import context_length, cut_at_stop, decode_steps, greedy_decode, sampler, stop_ids
from saelign.text.matching import answer_matches, lenient_match, normalize
from saelign.text.padding import pad, pad_token_id, token_ids

__all__ = ["answer_matches", "context_length", "cut_at_stop", "decode_steps", "greedy_decode", "lenient_match", "normalize", "pad",
           "pad_token_id", "sampler", "stop_ids", "token_ids"]
