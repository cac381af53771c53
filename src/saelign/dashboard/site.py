"""A self-contained static feature dashboard: `index.html` (searchable feature list) and one page per feature
under `features/`. No server, no external script or style sheet: it opens from file:// and survives being
copied.

The list filters as one types (vanilla JS over a `data-search` attribute of each row); `index.html#q=WORDS`
opens it pre-filtered, which is how reports link to a search and how the browser test drives it without a
WebDriver."""

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saelign.io import ensure_writable_dir, write_text_atomic
from saelign.label.contexts import ContextExample
from saelign.label.examples import PromptExample
from saelign.label.labels import LatentLabel, _context_html
from saelign.label.logit_lens import TokenScore
from saelign.label.reading import display_label, shown_score

# what `examples_html` needs wherever it is embedded (the SAILS report has a style sheet of its own)
EXAMPLE_STYLE = """.muted{color:#888}.prompt{white-space:pre-wrap;font-family:monospace;margin:3px 0}
.bar{display:inline-block;height:0.8em;background:#f80;vertical-align:middle;margin-right:6px}"""
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:70em;color:#222;padding:0 1em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#fafafa}a{color:#1558b0;text-decoration:none}
a:hover{text-decoration:underline}
.tag{display:inline-block;background:#eef3fb;border-radius:3px;padding:0 5px;margin:1px;font-size:85%}
.grounded{color:#333;font-style:italic}input#q{font-size:1.1em;width:100%;padding:6px;
box-sizing:border-box;margin:0.5em 0}code{background:#f2f2f2;padding:0 3px;margin:1px;white-space:pre}
""" + EXAMPLE_STYLE

_SEARCH_JS = """const q=document.getElementById('q');
const rows=Array.from(document.querySelectorAll('#features tbody tr'));
function filter(){const words=q.value.toLowerCase().split(/\\s+/).filter(Boolean);let n=0;
for(const r of rows){const show=words.every(w=>r.dataset.search.includes(w));r.hidden=!show;if(show)n++;}
document.getElementById('count').textContent=n+' of '+rows.length+' features';}
q.addEventListener('input',filter);
const m=location.hash.match(/^#q=(.*)$/);if(m){q.value=decodeURIComponent(m[1]);}
filter();"""


@dataclass
class FeatureInfo:
    """What the dashboard knows of a feature beyond its label: where it was selected or moved, its concept."""

    tags: list[str] = field(default_factory=list)
    concept: str = ""


def feature_file(latent: int) -> str:
    return f"features/{latent}.html"


def _page(title: str, body: str, script: str = "") -> str:
    tail = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}{tail}</body></html>")


def histogram_svg(edges: Sequence[float], counts: Sequence[int], width: int = 360, height: int = 120) -> str:
    """An inline SVG bar chart of a histogram (x: value, y: count), with the value range written under it."""
    if not counts or max(counts) == 0:
        return '<p class="muted">no values</p>'
    top, bar_w = max(counts), width / len(counts)
    bars = "".join(f'<rect x="{i * bar_w:.1f}" y="{height - c / top * height:.1f}" '
                   f'width="{max(bar_w - 1, 1):.1f}" height="{c / top * height:.1f}" fill="#f80">'
                   f"<title>{c}</title></rect>" for i, c in enumerate(counts))
    y = height + 14
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18}" role="img" '
            f'aria-label="activation histogram">{bars}'
            f'<text x="0" y="{y}" font-size="11">{edges[0]:.3g}</text>'
            f'<text x="{width}" y="{y}" font-size="11" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="{width / 2}" y="{y}" font-size="11" text-anchor="middle">max count {top}</text></svg>')


def _prompt_rows(examples: Sequence[PromptExample], scale: float) -> str:
    rows = (f'<div class="prompt"><span class="bar" style="width:{4 * max(e.activation, 0) / scale:.2f}em">'
            f'</span><span class="muted">{e.activation:.3g}</span> {html.escape(e.prompt)}</div>'
            for e in examples)
    return "".join(rows) or '<p class="muted">none</p>'


def _tokens(scores: Sequence[TokenScore]) -> str:
    tokens = " ".join(f"<code>{html.escape(t.token)}</code>" for t in scores)
    return tokens or '<span class="muted">none</span>'


def examples_html(label: LatentLabel, level: int = 2) -> str:
    """A feature's examples at its grain: whole requests, or token windows with the token highlighted."""
    reading, h = label.reading, f"h{level}"
    if reading is not None and (reading.grain == "prompt" or not label.top_contexts):
        scale = max([e.activation for e in reading.top_prompts] + [1e-9])
        prompts = (f"<{h}>Requests that drive it most</{h}>" + _prompt_rows(reading.top_prompts, scale)
                   + f"<{h}>Requests that drive it least</{h}>" + _prompt_rows(reading.bottom_prompts, scale))
        # token windows of a latent read at a template position are template text: shown last, folded away
        return prompts + ("<details><summary>Top activating tokens in the corpus</summary>"
                          f"{_contexts_html(label)}</details>" if label.top_contexts else "")
    return f"<{h}>Top activating tokens</{h}>" + _contexts_html(label)


def _contexts_html(label: LatentLabel) -> str:
    contexts: list[ContextExample] = label.top_contexts
    own_max = max((c.activation for c in contexts), default=0.0)
    shown = "".join(_context_html(c, own_max) for c in contexts)
    return shown or '<p class="muted">no activating context</p>'


def feature_page(label: LatentLabel, info: FeatureInfo) -> str:
    reading = label.reading
    title = display_label(label.short_label, reading)
    parts = ['<p><a href="../index.html">← all features</a></p>',
             f"<h1>Feature {label.latent}</h1>"]
    if reading is not None and reading.explanation:
        parts.append(f"<p><b>{html.escape(reading.explanation)}</b></p>")
    if reading is not None and reading.grounded:
        parts.append(f'<p class="grounded">{html.escape(reading.grounded)}</p>')
    parts.append(f'<p>token label: <code>{html.escape(label.short_label)}</code> · density '
                 f'{label.frequency:.3%} of tokens</p>')
    if reading is not None and reading.detection:
        rows = "".join(f"<tr><td>{html.escape(kind)}</td><td>{score:.2f}</td></tr>"
                       for kind, score in reading.detection.items())
        parts.append("<h2>Detection score (balanced accuracy)</h2><table><tr><th>label</th><th>score</th>"
                     f"</tr>{rows}</table>")
    if info.tags or info.concept:
        tags = "".join(f'<span class="tag">{html.escape(t)}</span>' for t in info.tags)
        concept = f" AlignSAE concept: <b>{html.escape(info.concept)}</b>" if info.concept else ""
        parts.append(f"<p>{tags}{concept}</p>")
    parts.append(examples_html(label))
    if reading is not None:
        parts.append("<h2>Activation over the labelled requests</h2>"
                     + histogram_svg(reading.hist_edges, reading.hist_counts))
    parts.append(f"<h2>Logit lens</h2><p>promotes {_tokens(label.logit_up)}</p>"
                 f"<p>suppresses {_tokens(label.logit_down)}</p>")
    return _page(f"Feature {label.latent}: {title}", "".join(parts))


def _shown_score(label: LatentLabel) -> str:
    value = shown_score(label.reading)
    return "—" if value is None else f"{value:.2f}"


def index_page(labels: Sequence[LatentLabel], infos: Mapping[int, FeatureInfo], title: str) -> str:
    rows = []
    for label in labels:
        info = infos.get(label.latent, FeatureInfo())
        text = display_label(label.short_label, label.reading)
        score = _shown_score(label)
        tags = info.tags + ([f"concept: {info.concept}"] if info.concept else [])
        search = " ".join([str(label.latent), text, label.short_label, *tags]).lower()
        page = feature_file(label.latent)
        rows.append(f'<tr data-search="{html.escape(search)}"><td><a href="{page}">{label.latent}</a></td>'
                    f'<td><a href="{page}">{html.escape(text)}</a></td>'
                    f"<td>{score}</td><td>{label.frequency:.3%}</td><td>"
                    + "".join(f'<span class="tag">{html.escape(t)}</span>' for t in tags) + "</td></tr>")
    body = (f"<h1>{html.escape(title)}</h1>"
            '<input id="q" type="search" placeholder="search labels, ids, tags…" autofocus>'
            '<p id="count" class="muted"></p><table id="features"><thead><tr><th>id</th><th>label</th>'
            "<th>detection</th><th>density</th><th>tags</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")
    return _page(title, body, _SEARCH_JS)


def write_site(labels: Mapping[int, LatentLabel], out_dir: str | Path, title: str = "SAE features",
               infos: Mapping[int, FeatureInfo] | None = None) -> Path:
    """Write index.html and features/<id>.html; returns the index path."""
    infos = infos or {}
    out = ensure_writable_dir(out_dir)
    ensure_writable_dir(out / "features")
    info = {i: infos.get(i, FeatureInfo()) for i in labels}
    ordered = sorted(labels.values(), key=lambda lab: (not info[lab.latent].tags, lab.latent))  # tagged first
    for label in ordered:
        write_text_atomic(out / feature_file(label.latent), feature_page(label, info[label.latent]))
    index = out / "index.html"
    write_text_atomic(index, index_page(ordered, infos, title))
    return index
