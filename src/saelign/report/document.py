"""A tiny report builder shared by every stage: one list of blocks rendered to Markdown and to standalone HTML.

Text given to the builder is always treated as plain text and escaped for both outputs (corpus snippets and
model outputs can contain `<script>` or Markdown syntax); only `html_block` passes raw HTML through, with a
Markdown fallback for the `.md` file. Figures are rendered to PNG bytes when added (the matplotlib figure can
be dropped at once) and written beside the report by `write`, so the HTML references them by relative path."""

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

from matplotlib.figure import Figure

from saelign.errors import SaelignError, require
from saelign.io import atomic_path, ensure_writable_dir, write_text_atomic
from saelign.report.plots import png_bytes

_MD_SPECIAL = re.compile(r"([\\`<>&\[\]|])")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3, h4 { line-height: 1.2; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
"""


def md_escape(text: str) -> str:
    """Backslash-escape what Markdown renderers would read as HTML, links, code or table syntax."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


class Link(NamedTuple):
    """A link in a paragraph or a table cell: `text` escaped like any text, `href` a relative path or URL."""

    text: str
    href: str

    def markdown(self) -> str:
        return f"[{md_escape(self.text)}]({self.href.replace(' ', '%20').replace(')', '%29')})"

    def to_html(self) -> str:
        return f'<a href="{html.escape(self.href)}">{html.escape(self.text)}</a>'


def format_cell(value: Any, floatfmt: str = ".4g") -> str:
    if value is None:
        return ""
    return format(value, floatfmt) if isinstance(value, float) else str(value)


def _table_cells(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
                 header: Sequence[str] | None) -> tuple[list[str], list[list[Any]]]:
    if header is None:
        if any(not isinstance(row, Mapping) for row in rows):
            raise SaelignError("table rows given as lists need a header=[...] with one name per column")
        header = list(dict.fromkeys(key for row in rows for key in row))  # type: ignore[union-attr]
    cells = [[row.get(key) for key in header] if isinstance(row, Mapping) else list(row) for row in rows]
    bad = [i for i, row in enumerate(cells) if len(row) != len(header)]
    if bad:
        raise SaelignError(f"table row {bad[0]} has {len(cells[bad[0]])} cells but the header has {len(header)}")
    return list(header), cells


def markdown_table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], header: Sequence[str] | None = None,
                   caption: str | None = None, floatfmt: str = ".4g") -> str:
    """A Markdown table (escaped cells); the same row/header conventions as `Report.table`."""
    header, cells = _table_cells(rows, header)
    lines = [f"*{md_escape(caption)}*", ""] if caption else []
    lines.append("| " + " | ".join(md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(_md_cell(v, floatfmt) for v in row) + " |" for row in cells)
    return "\n".join(lines)


def _md_cell(value: Any, floatfmt: str) -> str:
    return value.markdown() if isinstance(value, Link) else md_escape(format_cell(value, floatfmt))


def _html_cell(value: Any, text: str) -> str:
    if isinstance(value, Link):
        return f"<td>{value.to_html()}</td>"
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"


@dataclass
class _Block:
    md: str
    html_text: str

    def markdown(self, _prefix: str) -> str:
        return self.md

    def to_html(self, _prefix: str) -> str:
        return self.html_text


@dataclass
class _Figure:
    """A figure's file name is only final at write time (it carries the report stem), hence the prefix argument."""

    name: str
    data: bytes
    caption: str

    def markdown(self, prefix: str) -> str:
        return f"![{md_escape(self.caption)}]({prefix}{self.name})" + (f"\n\n*{md_escape(self.caption)}*" if self.caption else "")

    def to_html(self, prefix: str) -> str:
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return f'<figure><img src="{html.escape(prefix + self.name)}" alt="{html.escape(self.caption)}">{cap}</figure>'


class Report:
    """Build with heading/paragraph/table/figure/html_block calls, then `write(out_dir)` to get .md and .html."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[_Block | _Figure] = []

    def heading(self, text: str, level: int = 2) -> Self:
        require(1 <= level <= 6, f"heading level must be 1..6, got {level}")
        self.blocks.append(_Block(f"{'#' * level} {md_escape(text)}", f"<h{level}>{html.escape(text)}</h{level}>"))
        return self

    def paragraph(self, *parts: str | Link) -> Self:
        """Text pieces and links, joined as they are (give the spaces between them)."""
        md = "".join(p.markdown() if isinstance(p, Link) else md_escape(p) for p in parts)
        body = "".join(p.to_html() if isinstance(p, Link) else html.escape(p) for p in parts)
        self.blocks.append(_Block(md, f"<p>{body}</p>"))
        return self

    def bullets(self, items: Sequence[str]) -> Self:
        md = "\n".join(f"- {md_escape(item)}" for item in items)
        body = "".join(f"<li>{html.escape(item)}</li>" for item in items)
        self.blocks.append(_Block(md, f"<ul>{body}</ul>"))
        return self

    def table(self, rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], header: Sequence[str] | None = None,
              caption: str | None = None, floatfmt: str = ".4g") -> Self:
        """Rows as dicts (header = union of keys in first-seen order) or as sequences with an explicit header."""
        header, cells = _table_cells(rows, header)
        text = [[format_cell(v, floatfmt) for v in row] for row in cells]
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_html_cell(v, c) for v, c in zip(raw, row, strict=True)) + "</tr>"
                       for raw, row in zip(cells, text, strict=True))
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(_Block(markdown_table(rows, header, caption, floatfmt),
                                  f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"))
        return self

    def figure(self, fig: Figure | str | Path, caption: str = "", name: str | None = None) -> Self:
        """A matplotlib Figure (rendered to PNG now) or an existing PNG file (copied beside the report)."""
        if isinstance(fig, Figure):
            data = png_bytes(fig)
        else:
            path = Path(fig)
            require(path.is_file(), f"figure file not found: {path}")
            data = path.read_bytes()
            if not data.startswith(PNG_SIGNATURE):
                raise SaelignError(f"figure file {path} is not a PNG image; save figures as PNG")
        index = len(self.figures) + 1
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or f"fig{index}").strip("_.") or f"fig{index}"
        filename = f"{stem}.png"
        if any(figure.name == filename for figure in self.figures):
            filename = f"{stem}_{index}.png"
        self.blocks.append(_Figure(filename, data, caption))
        return self

    @property
    def figures(self) -> list[_Figure]:
        return [block for block in self.blocks if isinstance(block, _Figure)]

    def html_block(self, raw_html: str, markdown_fallback: str) -> Self:
        """Trusted HTML (built by saelign with escaped content) for the .html; `markdown_fallback` for the .md."""
        self.blocks.append(_Block(markdown_fallback, raw_html))
        return self

    def to_markdown(self, image_prefix: str = "") -> str:
        return "\n\n".join([f"# {md_escape(self.title)}"] + [block.markdown(image_prefix) for block in self.blocks]) + "\n"

    def to_html(self, image_prefix: str = "") -> str:
        body = "\n".join(block.to_html(image_prefix) for block in self.blocks)
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(self.title)}</title>\n'
                f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{html.escape(self.title)}</h1>\n{body}\n</body>\n</html>\n")

    def write(self, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write `<stem>.md`, `<stem>.html` and the figures (as `<stem>_<name>.png`) into out_dir, each atomically."""
        out_dir = ensure_writable_dir(out_dir)
        prefix = f"{stem}_"
        for figure in self.figures:
            with atomic_path(out_dir / f"{prefix}{figure.name}") as tmp:
                tmp.write_bytes(figure.data)
        md_path, html_path = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        write_text_atomic(md_path, self.to_markdown(prefix))
        write_text_atomic(html_path, self.to_html(prefix))
        return md_path, html_path
