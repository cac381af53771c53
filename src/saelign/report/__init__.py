"""Report toolkit shared by every stage: a Markdown + HTML document builder and small plot helpers."""

from saelign.report.document import Link, Report, markdown_table, md_escape
from saelign.report.plots import bar_chart, heatmap, histogram, line_plot, save_figure

__all__ = ["Link", "Report", "bar_chart", "heatmap", "histogram", "line_plot", "markdown_table", "md_escape",
           "save_figure"]
