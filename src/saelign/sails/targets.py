"""Training targets for the SAILS safety fine-tune.

Harmful prompts get a natural refusal drawn from the packaged templates (some echo the request), chosen by a hash
of the prompt so a rebuild gives the same target. Harmless and borderline prompts get the base model's own greedy
answer, so the fine-tune teaches refusing without teaching a new style of helping; answers the offline judge
calls refusals or degenerate are dropped rather than trained on, and so are answers that open like a refusal
(`PrefixJudge`): the default model answers some plain requests with "I'm sorry for any misunderstanding, but as
a chatbot ... I don't have ...", which the offline judge reads as help; trained on, such an answer teaches the
adapter to apologise to a harmless request (5 of the quick preset's 92 harmless and borderline targets were
such answers). An answer cut off by `max_new_tokens` is trimmed back to its last full sentence."""

import dataclasses
import functools
import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from importlib import resources

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.progress import logger
from saelign.sails.data import Example
from saelign.sails.generate import generate_answers
from saelign.sails.judge import OfflineJudge, PrefixJudge
from saelign.text import normalize

# First words that mark an imperative request ("Write a ...") whose lower-cased text reads after "I won't".
IMPERATIVE_VERBS = frozenset("""
write create develop give provide explain describe generate design teach show outline instruct produce draft compose
list suggest offer publish post make build demonstrate help tell convince plan devise guide educate hack release
""".split())
_HOW_TO = re.compile(r"\bhow to (.+?)[.?!]*$", re.IGNORECASE | re.DOTALL)
_SELF_HARM = re.compile(r"suicid|self[- ]harm|kill (?:myself|yourself|themselves)|eating disorder|anorexi|bulimi|overdose",
                        re.IGNORECASE)
_ECHO_MAX_WORDS = 16


@functools.cache
def refusal_templates() -> dict[str, tuple[str, ...]]:
    data = json.loads((resources.files("saelign") / "data" / "refusal_templates.json").read_text(encoding="utf-8"))
    return {group: tuple(items) for group, items in data["templates"].items()}


def _echo_slots(prompt: str) -> dict[str, str]:
    """The phrases an echoing template may quote: 'action' after 'how to', 'request' for an imperative."""
    text = " ".join(prompt.split())
    slots = {}
    match = _HOW_TO.search(text)
    if match and len(match.group(1).split()) <= _ECHO_MAX_WORDS:
        slots["action"] = match.group(1)
    first = text.split(" ", 1)[0].lower()
    if first in IMPERATIVE_VERBS and len(text.split()) <= _ECHO_MAX_WORDS:
        slots["request"] = (text[0].lower() + text[1:]).rstrip(".!?")
    return slots


def refusal_for(prompt: str) -> str:
    """A refusal for `prompt`: a support-oriented one for self-harm, else generic or echoing, fixed per prompt."""
    return refusals_for(prompt, 1)[0]


def refusals_for(prompt: str, n: int) -> list[str]:
    """`n` different refusals for `prompt` (fewer if the pool is smaller), spread over the template pool from
    the one `refusal_for` picks: the unwanted responses of a harmless prompt's unlikelihood contrasts."""
    templates = refusal_templates()
    slots = _echo_slots(prompt)
    if _SELF_HARM.search(prompt):
        pool = list(templates["self_harm"])
    else:
        pool = list(templates["generic"]) + [t for group in slots for t in templates[group]]
    digest = int(hashlib.sha256(normalize(prompt).encode()).hexdigest()[:12], 16)
    picks = dict.fromkeys((digest + j * len(pool) // n) % len(pool) for j in range(min(n, len(pool))))
    return [pool[i].format(**slots) for i in picks]


def refusal_contrasts(examples: Sequence[Example], per_prompt: int) -> list[tuple[str, str, str]]:
    """(prompt, refusal, answer) for every harmless or borderline example with a target: the refusals the
    unlikelihood term pushes down where the answer should help."""
    return [(e.prompt, refusal, e.target) for e in examples if e.kind != "harmful" and e.target
            for refusal in refusals_for(e.prompt, per_prompt)]


def trim_to_sentence(text: str, min_keep: float = 0.5) -> str:
    """Cut an answer that stops mid-sentence back to its last sentence end, if that keeps >= min_keep of it."""
    text = text.strip()
    if not text or text[-1] in ".!?\"')`":
        return text
    cut = max(text.rfind(mark) for mark in (". ", "! ", "? ", ".\n", "!\n", "?\n"))
    return text[: cut + 1] if cut + 1 >= min_keep * len(text) else text


def add_targets(examples: Sequence[Example], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                max_new_tokens: int = 64, batch_size: int = 16) -> list[Example]:
    """Examples with `target` filled in (existing targets kept); harmless answers that are refusals or
    degenerate are dropped, with a log line saying how many."""
    todo = [i for i, e in enumerate(examples) if e.target is None and e.kind != "harmful"]
    answers = generate_answers(model, tokenizer, [examples[i].prompt for i in todo], max_new_tokens, batch_size)
    answers = [trim_to_sentence(a) for a in answers]
    prompts = [examples[i].prompt for i in todo]
    verdicts = OfflineJudge().judge(prompts, answers)
    openers = PrefixJudge().judge(prompts, answers)
    generated = {i: (a, "refusal opener" if v.label == "complied" and o.label == "refused" else v.label)
                 for i, a, v, o in zip(todo, answers, verdicts, openers, strict=True)}
    out, dropped = [], Counter()
    for i, example in enumerate(examples):
        if example.target is not None:
            out.append(example)
        elif example.kind == "harmful":
            out.append(dataclasses.replace(example, target=refusal_for(example.prompt)))
        elif generated[i][1] == "complied":
            out.append(dataclasses.replace(example, target=generated[i][0]))
        else:
            dropped[generated[i][1]] += 1
    if dropped:
        logger.info(f"dropped {sum(dropped.values())} harmless prompts whose base-model answer was not usable: {dict(dropped)}")
    return out
