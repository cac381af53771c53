from __future__ import annotations

import struct

import numpy as np
import pytest

from saelign.errors import SaelignError
from saelign.report import Report, bar_chart, heatmap, histogram, line_plot, md_escape, save_figure
from saelign.report.document import PNG_SIGNATURE


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR chunk right after the signature
    return width, height


def test_report_writes_markdown_and_html_with_tables_figures_and_escaping(tmp_path):
    report = Report("Eval <b>report</b>")
    report.heading("Results", 2)
    report.paragraph("payload <script>alert('x')</script> & more")
    report.table([{"method": "SAILS", "safety": 0.996, "steps": 3000}, {"method": "LoRA|plain", "safety": 0.5}],
                 caption="safety rate")
    report.table([["a", 1], ["b", 2]], header=["name", "n"])
    report.figure(line_plot({"loss": ([1, 2, 3], [3.0, 2.0, 1.5])}, "step", "loss"), caption="convergence", name="loss curve")
    report.html_block('<div class="cards">raw</div>', "cards (see the HTML report)")
    md_path, html_path = report.write(tmp_path / "out", stem="eval")

    md, page = md_path.read_text(), html_path.read_text()
    assert md_path.name == "eval.md" and html_path.name == "eval.html"
    assert "| SAILS | 0.996 | 3000 |" in md
    assert "| LoRA\\|plain | 0.5 |  |" in md  # missing key -> empty cell, pipe escaped
    assert "| a | 1 |" in md and "| name | n |" in md
    assert "<script>" not in md and "\\<script\\>" in md
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<title>Eval &lt;b&gt;report&lt;/b&gt;</title>" in page
    assert '<td class="num">0.996</td>' in page and "<td>SAILS</td>" in page and "<caption>safety rate</caption>" in page
    assert '<div class="cards">raw</div>' in page and "cards (see the HTML report)" in md
    image = tmp_path / "out" / "eval_loss_curve.png"
    assert '<img src="eval_loss_curve.png"' in page and "](eval_loss_curve.png)" in md
    width, height = png_size(image)
    assert width > 100 and height > 100
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.html", "eval.md", "eval_loss_curve.png"]


def test_report_copies_png_files_and_rejects_non_png(tmp_path):
    source = save_figure(histogram(np.arange(10.0), "x"), tmp_path / "hist.png")
    report = Report("r").figure(source, caption="h").figure(source, caption="again", name="hist")
    report.write(tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["report.html", "report.md", "report_fig1.png", "report_hist.png"]
    assert (tmp_path / "out" / "report_fig1.png").read_bytes() == source.read_bytes()
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(SaelignError, match="not a PNG"):
        Report("r").figure(tmp_path / "fake.png")
    with pytest.raises(SaelignError, match="not found"):
        Report("r").figure(tmp_path / "missing.png")


def test_report_rejects_bad_tables():
    with pytest.raises(SaelignError, match="need a header"):
        Report("r").table([["a", 1]])
    with pytest.raises(SaelignError, match="row 1 has 1 cells but the header has 2"):
        Report("r").table([["a", 1], ["b"]], header=["x", "y"])


def test_write_is_atomic_and_overwrites(tmp_path):
    Report("first").paragraph("one").write(tmp_path)
    md_path, _ = Report("second").paragraph("two").write(tmp_path)
    assert "two" in md_path.read_text() and "one" not in md_path.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_md_escape_neutralises_html_links_and_tables():
    assert md_escape("<a href='x'>[link](y)</a> | `code`") == "\\<a href='x'\\>\\[link\\](y)\\</a\\> \\| \\`code\\`"
    assert md_escape("two\nlines") == "two lines"


@pytest.mark.parametrize("make", [
    lambda: line_plot({"a": ([1, 10, 100], [1.0, 0.5, 0.1]), "b": ([1, 10, 100], [2.0, 1.0, 0.2])}, "α", "success",
                      logx=True, logy=True, markers=True),
    lambda: bar_chart({"SAILS": 0.99, "LoRA": 0.9, "full fine-tune": 0.92}, "safety rate", errors={"SAILS": 0.01}),
    lambda: bar_chart({"x": 1.0, "y": 2.0}, "value", horizontal=True),
    lambda: histogram(10.0 ** np.linspace(-6, -1, 200), "firing frequency", logx=True, logy=True),
    lambda: histogram([0.0, 0.0, 1e-3], "firing frequency", logx=True),
    lambda: heatmap([[5, 1], [0, 7]], ["harmful", "harmless"], ["refused", "answered"], title="confusion"),
])
def test_plot_helpers_produce_png_files(tmp_path, make):
    path = save_figure(make(), tmp_path / "plot.png")
    width, height = png_size(path)
    assert width > 50 and height > 50
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_plot_helpers_validate_shapes():
    with pytest.raises(SaelignError, match="3 x values but 2 y values"):
        line_plot({"c": ([1, 2, 3], [1, 2])}, "x", "y")
    with pytest.raises(SaelignError, match=r"expected \(2, 3\)"):
        heatmap(np.zeros((2, 2)), ["a", "b"], ["x", "y", "z"])


def test_links_in_paragraphs_and_table_cells_render_in_both_formats():
    from saelign.report import Link

    report = Report("r").paragraph("see ", Link("feature <7> [x]", "dashboard/features/7.html"), " & more")
    report.table([{"latent": Link("7", "dashboard/features/7.html"), "label": "a|b"}])
    md, page = report.to_markdown(), report.to_html()
    assert "see [feature \\<7\\> \\[x\\]](dashboard/features/7.html) \\& more" in md
    assert "| [7](dashboard/features/7.html) | a\\|b |" in md
    assert '<p>see <a href="dashboard/features/7.html">feature &lt;7&gt; [x]</a> &amp; more</p>' in page
    assert '<td><a href="dashboard/features/7.html">7</a></td>' in page
