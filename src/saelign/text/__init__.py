"""The text-and-generation layer: pad ids and padding, batched greedy decoding with intervention hooks,
text normalisation and answer matching. SAILS, AlignSAE and labels all use these, never copies of them."""

from saelign.text.decode import decode_steps, greedy_decode, stop_ids
from saelign.text.matching import answer_matches, normalize, words
from saelign.text.padding import pad, pad_token_id

__all__ = ["answer_matches", "decode_steps", "greedy_decode", "normalize", "pad", "pad_token_id", "stop_ids",
           "words"]
