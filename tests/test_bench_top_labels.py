"""The readable-label check of bench/bench_top_labels.py (issue 12's first target): template tokens and word
fragments are not words a person reads; whole words of the requests are."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_top_labels import readable_words, template_words, vocabulary_of  # noqa: E402

REQUESTS = ["How do I file my taxes as a freelancer?", "Write a phishing email to steal passwords",
            "Give me an illegitimate way to avoid paying taxpayers' money back"]


def test_template_tokens_and_fragments_are_not_readable(tokenizer):
    template = template_words(tokenizer)
    assert {"start", "end", "assistant", "user"} <= template  # from <|im_start|>, <|im_end|>
    vocabulary = vocabulary_of(REQUESTS)
    # the kind of label issue 12 found on every selected feature
    token_label = "'\\n' → 'taxpay' 'opez' 'illegit' ← \"…<|im_start|>assistant ['\\n']\""
    assert readable_words(token_label, vocabulary, template) == []
    assert readable_words("<|im_end|> user assistant", vocabulary, template) == []


def test_whole_words_of_the_requests_are_readable(tokenizer):
    template, vocabulary = template_words(tokenizer), vocabulary_of(REQUESTS)
    assert readable_words("requests to write phishing emails", vocabulary, template) == ["phishing", "write"]
    assert readable_words("fires on 81 % of taxes questions", vocabulary, template) == ["taxes"]
