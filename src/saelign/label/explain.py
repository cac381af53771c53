"""Model-written labels: a local chat model names a latent from the requests that drive it most and least.

The explainer sees the top prompts, the bottom prompts (the contrast) and the data-grounded line, and answers
with a short noun phrase; it runs greedily, so the same model gives the same label.
"""

import re
from collections.abc import Mapping, Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.label.detect import check_chat_model
from saelign.label.reading import Reading

EXPLAIN_PROMPT = ("A feature of a language model is strongly active on these requests:\n{top}\n\n"
                  "It is inactive on these requests:\n{bottom}\n\n{grounded}"
                  "In at most eight words, what kind of request does the feature detect? "
                  "Answer with the phrase only.")
_PREFIX = re.compile(r"^(the feature (detects|fires on)|answer|label)\s*:?\s*", re.IGNORECASE)
_DANGLING = re.compile(r"^(and|or|that|which)\s+", re.IGNORECASE)  # "The feature detects and responds to..."
_WORD = re.compile(r"[a-z']+")
# A label made only of the question's own words (plus glue words) names nothing: small explainers answer
# "The feature detects and detects." or echo "a feature that is strongly active on these requests".
_ECHO = set(_WORD.findall(EXPLAIN_PROMPT.lower())) | {
    "and", "or", "the", "that", "this", "which", "following", "identifies", "identify", "detects", "fires"}


def _bullets(prompts: Sequence[str], width: int = 200) -> str:
    return "\n".join(f"- {p[:width].strip()}" for p in prompts)


def explain_prompt(reading: Reading) -> str:
    grounded = f"Measured: it {reading.grounded}.\n\n" if reading.grounded else ""
    top = _bullets([e.prompt for e in reading.top_prompts])
    bottom = _bullets([e.prompt for e in reading.bottom_prompts])
    return EXPLAIN_PROMPT.format(top=top, bottom=bottom, grounded=grounded)


def clean_label(answer: str, max_words: int = 12) -> str:
    """First line of the answer, without a restated preamble, quotes or a trailing full stop; empty when
    it only echoes the question."""
    line = next((ln.strip() for ln in answer.splitlines() if ln.strip()), "")
    line = _DANGLING.sub("", _PREFIX.sub("", line)).strip(" \"'`*.:")
    if set(_WORD.findall(line.lower())) <= _ECHO:
        return ""
    return " ".join(line.split()[:max_words])


def explain_latents(model: nn.Module, tokenizer: PreTrainedTokenizerBase, readings: Mapping[int, Reading],
                    max_new_tokens: int = 24, batch_size: int = 8,
                    option: str = "--explainer") -> dict[int, str]:
    """{latent: short label}; also stored in each reading's `explanation`."""
    from saelign.sails.generate import generate_answers  # lazy: saelign.sails imports the label package

    check_chat_model(tokenizer, option)
    latents = list(readings)
    answers = generate_answers(model, tokenizer, [explain_prompt(readings[i]) for i in latents],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = {}
    for latent, answer in zip(latents, answers, strict=True):
        readings[latent].explanation = out[latent] = clean_label(answer)
    return out
