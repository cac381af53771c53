"""Corpus sources, their parse errors, and packing into fixed-length token contexts."""

from __future__ import annotations

import json

import pytest
import torch

from saelign.datasets import corpus as corpus_mod
from saelign.datasets.corpus import iter_contexts, iter_texts, open_corpus
from saelign.errors import SaelignError


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_txt_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First paragraph\nstill first.\r\n\r\nSecond.\n\n\n\nThird.\n")
    assert list(iter_texts(open_corpus(str(path)))) == ["First paragraph\nstill first.", "Second.", "Third."]


def test_folder_order_is_seeded_and_deterministic(tmp_path):
    for i in range(8):
        (tmp_path / f"{i}.txt").write_text(f"doc {i}")
    (tmp_path / "skip.json").write_text("{}")
    plain = list(iter_texts(open_corpus(str(tmp_path), seed=-1)))
    assert plain == [f"doc {i}" for i in range(8)]
    shuffled = list(iter_texts(open_corpus(str(tmp_path), seed=0)))
    assert sorted(shuffled) == plain and shuffled != plain
    assert shuffled == list(iter_texts(open_corpus(str(tmp_path), seed=0)))
    assert shuffled != list(iter_texts(open_corpus(str(tmp_path), seed=1)))


def test_sotu_reads_the_fetched_folder(tmp_path, monkeypatch):
    for name in ("1790_a.txt", "1791_b.txt"):
        (tmp_path / name).write_text(name)
    monkeypatch.setattr("saelign.datasets.registry.fetch_sotu", lambda: tmp_path)
    assert sorted(iter_texts(open_corpus("sotu"))) == ["1790_a.txt", "1791_b.txt"]


def test_jsonl_text_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "one"}, "", {"body": "two", "x": 1}])
    assert list(iter_texts(open_corpus(str(path), text_field="body"))) == ["one", "two"]


@pytest.mark.parametrize("records, message", [
    ([{"text": "ok"}, "{not json"], r"d.jsonl:2: not valid JSON"),
    ([{"text": "ok"}, {"body": "x"}], r"d.jsonl:2: field 'text' is missing or not a string \(keys: body\); set --text-field"),
    ([[1, 2]], r"d.jsonl:1: expected a JSON object per line, got list"),
    ([{"text": 3}], r"d.jsonl:1: field 'text' is missing or not a string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, records, message):
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(SaelignError, match=message):
        list(iter_texts(open_corpus(str(path))))


def test_chat_records_use_the_template(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "bake bread?", "response": "Mix flour."},
        {"prompt": "only a prompt"},
    ])
    texts = list(iter_texts(open_corpus(str(path), chat=True), tokenizer))
    assert texts[0] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    assert texts[1] == "<|im_start|>user\nbake bread?<|im_end|>\n<|im_start|>assistant\nMix flour.<|im_end|>\n"
    assert texts[2] == "<|im_start|>user\nonly a prompt<|im_end|>\n<|im_start|>assistant\n"  # generation prompt


def test_chat_errors(tmp_path, tokenizer):
    bad = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "ok"}, {"messages": [{"role": "user"}]}])
    with pytest.raises(SaelignError, match=r"c.jsonl:2: field 'messages' must be"):
        list(iter_texts(open_corpus(str(bad), chat=True), tokenizer))
    neither = write_jsonl(tmp_path / "n.jsonl", [{"text": "x"}])
    with pytest.raises(SaelignError, match=r"n.jsonl:1: a chat record needs a 'messages' list or a 'prompt'"):
        list(iter_texts(open_corpus(str(neither), chat=True), tokenizer))
    with pytest.raises(SaelignError, match="needs a tokenizer with a chat template"):
        list(iter_texts(open_corpus(str(neither), chat=True), None))


def test_missing_and_empty_sources(tmp_path, tokenizer):
    with pytest.raises(SaelignError, match="corpus 'nope.txt' not found"):
        open_corpus("nope.txt")
    with pytest.raises(SaelignError, match="has no .txt files"):
        open_corpus(str(tmp_path))
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(SaelignError, match="has no text"):
        list(iter_contexts(open_corpus(str(empty)), tokenizer, 8))
    latin = tmp_path / "l.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SaelignError, match="not UTF-8"):
        list(iter_texts(open_corpus(str(latin))))


def test_packing_matches_naive_concatenation(tmp_path, tokenizer):
    docs = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hello world"]
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(docs))
    contexts = list(iter_contexts(open_corpus(str(path)), tokenizer, 7))
    stream = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert all(c.shape == (7,) and c.dtype == torch.long for c in contexts)
    flat = torch.cat(contexts).tolist()
    assert flat[: len(stream)] == stream
    assert set(flat[len(stream):]) <= {tokenizer.pad_token_id} and len(flat) - len(stream) < 7
    with pytest.raises(SaelignError, match="context_length must be at least 2"):
        next(iter_contexts(open_corpus(str(path)), tokenizer, 1))


def test_hash_tracks_content_and_options(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    first = open_corpus(str(path)).sha256()
    assert open_corpus(str(path), chat=True).sha256() != first
    path.write_text("two")
    assert open_corpus(str(path)).sha256() != first
    assert corpus_mod.Corpus(str(path), (path,), "paragraphs").sha256() == open_corpus(str(path)).sha256()
