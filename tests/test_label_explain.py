from __future__ import annotations

import pytest

from saelign.errors import SaelignError
from saelign.label.examples import PromptExample
from saelign.label.explain import clean_label, explain_latents, explain_prompt
from saelign.label.reading import Reading


def _reading() -> Reading:
    return Reading(
        "prompt",
        "fires on 90 % of cooking requests and 0 % of coding requests (mean 2 vs 0)",
        [],
        [PromptExample("How do I bake bread?", 2.0)],
        [PromptExample("Sort a list in Python", 0.0)],
        [0, 1],
        [2],
    )


def test_prompt_shows_top_bottom_and_the_grounded_line():
    text = explain_prompt(_reading())
    assert "- How do I bake bread?" in text and "- Sort a list in Python" in text
    assert (
        text.index("bake") < text.index("inactive") < text.index("Sort")
        and "Measured: it fires on 90 %" in text
    )


def test_clean_label():
    assert (
        clean_label('The feature detects: "Cooking and baking questions."\nMore text')
        == "Cooking and baking questions"
    )
    assert clean_label("Label: a b c d e f g h i j k l m n", max_words=3) == "a b c"
    assert clean_label("") == ""
    for echo in (
        "The feature detects and detects.",
        "and identifies the following:",
        "a feature that is strongly active on these requests",
    ):
        assert clean_label(echo) == ""  # names nothing: no model label rather than a wrong one
    assert clean_label("requests to steal bank logins") == "requests to steal bank logins"
    assert clean_label("The feature detects and responds to recipes") == "responds to recipes"


def test_explainer_plumbing_and_a_model_without_chat_template(tiny_llama, tokenizer):
    readings = {3: _reading()}
    out = explain_latents(tiny_llama, tokenizer, readings, max_new_tokens=4)
    assert set(out) == {3} and readings[3].explanation == out[3]
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    with pytest.raises(SaelignError, match="--explainer: .*no chat template"):
        explain_latents(tiny_llama, plain, readings)


def test_a_small_explainer_sees_fewer_shorter_examples_rather_than_failing(tiny_llama, tokenizer):
    from saelign.label.examples import PromptExample
    from saelign.label.explain import fitted_prompt
    from saelign.sails.generate import encode_chat

    long = "How do I bake a loaf of bread with a crisp crust and an open crumb at home? " * 3
    top, bottom = [PromptExample(long, 2.0)] * 5, [PromptExample(long, 0.0)] * 5
    reading = Reading("prompt", "", [], top, bottom, [], [])
    full = fitted_prompt(tokenizer, reading, None, "--explainer")
    assert full == explain_prompt(reading) and len(encode_chat(tokenizer, [full])[0]) > 256
    fitted = fitted_prompt(tokenizer, reading, 252, "--explainer")
    assert len(encode_chat(tokenizer, [fitted])[0]) <= 252 and "- How do I bake" in fitted
    assert explain_latents(tiny_llama, tokenizer, {0: reading}, max_new_tokens=4)  # 256 positions: fits
    with pytest.raises(SaelignError, match="--explainer: even one example"):
        fitted_prompt(tokenizer, reading, 20, "--explainer")


class _Recording:
    """The keyword detector, remembering every text it was asked about."""

    def __init__(self):
        from saelign.label.detect import KeywordDetector

        self.inner, self.seen = KeywordDetector(), set()

    def scores(self, label, texts):
        self.seen.update(texts)
        return self.inner.scores(label, texts)


def test_the_chosen_label_tells_the_explainers_own_examples_apart():
    from saelign.label.explain import choose_label

    reading = _reading()
    detector = _Recording()
    chosen = choose_label(["", "python sort code", "bake bread recipes"], reading, detector)
    assert chosen == "bake bread recipes"
    assert detector.seen == {"How do I bake bread?", "Sort a list in Python"}  # never the held-out ones
    assert choose_label(["", "python sort code", "bake bread"], reading, None) == "python sort code"
    assert choose_label(["", ""], reading, detector) == ""


def test_candidates_ask_the_question_in_several_ways(tiny_llama, tokenizer):
    from saelign.label.explain import VARIANTS, label_candidates

    prompts = {explain_prompt(_reading(), measured=m, question=q) for q, m in VARIANTS}
    assert len(prompts) == len(VARIANTS) == 6
    assert sum("Measured:" in p for p in prompts) == 3
    out = label_candidates(tiny_llama, tokenizer, {3: _reading(), 4: _reading()}, n=3, max_new_tokens=4)
    assert set(out) == {3, 4} and all(len(v) == 3 for v in out.values()) and out[3] == out[4]
    for bad in (0, 7):
        with pytest.raises(SaelignError, match="label candidates must be 1 to 6"):
            label_candidates(tiny_llama, tokenizer, {3: _reading()}, n=bad)
