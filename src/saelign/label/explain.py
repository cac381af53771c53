"""Model-written labels: a local chat model names a latent from the requests that drive it most and least.

The explainer sees the top prompts, the bottom prompts (the contrast) and the data-grounded line, and answers
with a short noun phrase; it runs greedily, so the same model gives the same label. With several candidates
the question is asked in several ways (`QUESTIONS`, with and without the measured line) and a detector keeps
the label that best tells the explainer's own top examples from its bottom ones: the held-out examples that
score the label are never looked at.
"""

import re
from collections.abc import Mapping, Sequence
from statistics import fmean

from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.label.detect import Detector, check_chat_model
from saelign.label.reading import Reading
from saelign.text import context_length

EXPLAIN_PROMPT = ("A feature of a language model is strongly active on these requests:\n{top}\n\n"
                  "It is inactive on these requests:\n{bottom}\n\n{grounded}{question}")
QUESTIONS = ("In at most eight words, what kind of request does the feature detect? "
             "Answer with the phrase only.",
             "In a few words, what do the active requests share that the inactive ones lack? Answer with the "
             "phrase only.",
             "Give the active requests a short title of at most eight words. Answer with the title only.")
# (question, with the measured line): the first is the single greedy label's
VARIANTS = tuple((q, measured) for q in QUESTIONS for measured in (True, False))
_PREFIX = re.compile(r"^(the feature (detects|fires on)|answer|label)\s*:?\s*", re.IGNORECASE)
_DANGLING = re.compile(r"^(and|or|that|which)\s+", re.IGNORECASE)  # "The feature detects and responds to..."
_WORD = re.compile(r"[a-z']+")
# A label made only of the question's own words (plus glue words) names nothing: small explainers answer
# "The feature detects and detects." or echo "a feature that is strongly active on these requests".
_ECHO = set(_WORD.findall(" ".join([EXPLAIN_PROMPT, *QUESTIONS]).lower())) | {
    "and", "or", "the", "that", "this", "which", "following", "identifies", "identify", "detects", "fires"}


def _bullets(prompts: Sequence[str], width: int = 200) -> str:
    return "\n".join(f"- {p[:width].strip()}" for p in prompts)


def explain_prompt(reading: Reading, n_top: int | None = None, n_bottom: int | None = None,
                   width: int = 200, measured: bool = True, question: str = QUESTIONS[0]) -> str:
    """The explainer's question about one latent, with its first `n_top` / `n_bottom` examples (all by
    default), each cut to `width` characters, and the data-grounded line when `measured`."""
    grounded = f"Measured: it {reading.grounded}.\n\n" if reading.grounded and measured else ""
    top = _bullets([e.prompt for e in reading.top_prompts[:n_top]], width)
    bottom = _bullets([e.prompt for e in reading.bottom_prompts[:n_bottom]], width)
    return EXPLAIN_PROMPT.format(top=top, bottom=bottom, grounded=grounded, question=question)


def _shorter_prompts(reading: Reading, measured: bool, question: str):
    """The explainer's question from longest to shortest: shorter examples first, then fewer of them (the
    contrast goes before the top examples; one top example always stays), then without the measured line."""
    n_top, n_bottom = len(reading.top_prompts), len(reading.bottom_prompts)
    for width in (200, 100, 50):
        yield explain_prompt(reading, n_top, n_bottom, width, measured, question)
    for kept in range(n_bottom - 1, -1, -1):
        yield explain_prompt(reading, n_top, kept, 50, measured, question)
    for kept in range(n_top - 1, 0, -1):
        yield explain_prompt(reading, kept, 0, 50, measured, question)
    yield explain_prompt(reading, 1, 0, 50, False, question)


def fitted_prompt(tokenizer: PreTrainedTokenizerBase, reading: Reading, room: int | None, option: str,
                  measured: bool = True, question: str = QUESTIONS[0]) -> str:
    """The longest form of the explainer's question whose chat-formatted ids fit in `room` tokens (any
    length when `room` is None): a small explainer sees fewer, shorter examples rather than failing."""
    from saelign.sails.generate import encode_chat  # lazy: saelign.sails imports the label package

    prompt = explain_prompt(reading, measured=measured, question=question)
    if room is None:
        return prompt
    for prompt in _shorter_prompts(reading, measured, question):
        if len(encode_chat(tokenizer, [prompt])[0]) <= room:
            return prompt
    raise SaelignError(f"{option}: even one example leaves the explainer's question longer than its "
                       f"context allows ({room} tokens for the question); use an explainer with a longer "
                       "context or fewer label tokens")


def clean_label(answer: str, max_words: int = 12) -> str:
    """First line of the answer, without a restated preamble, quotes or a trailing full stop; empty when
    it only echoes the question."""
    line = next((ln.strip() for ln in answer.splitlines() if ln.strip()), "")
    line = _DANGLING.sub("", _PREFIX.sub("", line)).strip(" \"'`*.:")
    if set(_WORD.findall(line.lower())) <= _ECHO:
        return ""
    return " ".join(line.split()[:max_words])


def label_candidates(model: nn.Module, tokenizer: PreTrainedTokenizerBase, readings: Mapping[int, Reading],
                     n: int = 1, max_new_tokens: int = 24, batch_size: int = 8,
                     option: str = "--explainer") -> dict[int, list[str]]:
    """{latent: the cleaned greedy answers to the first n `VARIANTS` of the question, in that order ('' where
    an answer only echoed the question)}."""
    from saelign.sails.generate import generate_answers  # lazy: saelign.sails imports the label package

    check_chat_model(tokenizer, option)
    if not 1 <= n <= len(VARIANTS):
        raise SaelignError(f"{option}: label candidates must be 1 to {len(VARIANTS)}, got {n}")
    latents = list(readings)
    limit = context_length(model)
    room = None if limit is None else limit - max_new_tokens
    prompts = [fitted_prompt(tokenizer, readings[i], room, option, measured, question)
               for i in latents for question, measured in VARIANTS[:n]]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    return {latent: [clean_label(a) for a in answers[k * n:(k + 1) * n]] for k, latent in enumerate(latents)}


def own_example_margin(detector: Detector, label: str, reading: Reading) -> float:
    """How much higher the detector scores the explainer's top examples than its bottom ones for `label`."""
    top = detector.scores(label, [e.prompt for e in reading.top_prompts])
    bottom = detector.scores(label, [e.prompt for e in reading.bottom_prompts]) or [0.0]
    return fmean(top) - fmean(bottom)


def choose_label(candidates: Sequence[str], reading: Reading, detector: Detector | None) -> str:
    """The non-empty candidate with the largest `own_example_margin` (the first non-empty one without a
    detector); '' when all are empty."""
    kept = list(dict.fromkeys(c for c in candidates if c))
    if len(kept) <= 1 or detector is None:
        return kept[0] if kept else ""
    return max(kept, key=lambda label: own_example_margin(detector, label, reading))


def explain_latents(model: nn.Module, tokenizer: PreTrainedTokenizerBase, readings: Mapping[int, Reading],
                    max_new_tokens: int = 24, batch_size: int = 8, option: str = "--explainer",
                    candidates: int = 1, chooser: Detector | None = None) -> dict[int, str]:
    """{latent: short label}; also stored in each reading's `explanation`. With candidates > 1, the label
    `choose_label` keeps among that many answers."""
    answers = label_candidates(model, tokenizer, readings, candidates, max_new_tokens, batch_size, option)
    out = {}
    for latent, labels in answers.items():
        readings[latent].explanation = out[latent] = choose_label(labels, readings[latent], chooser)
    return out
