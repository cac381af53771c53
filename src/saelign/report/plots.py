"""Small plot helpers for reports: curves, bars, histograms and labelled heatmaps.

Each helper returns a `matplotlib.figure.Figure` built without pyplot (no global figure state, no GUI backend),
ready for `Report.figure(fig, caption)` or `save_figure(fig, path)`."""

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from saelign.errors import SaelignError, require
from saelign.io import atomic_path

ArrayLike = Sequence[float] | np.ndarray


def _new_figure(size: tuple[float, float] = (6.4, 4.0)) -> tuple[Figure, object]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure as a PNG atomically."""
    path = Path(path)
    data = png_bytes(fig, dpi)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def line_plot(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], xlabel: str, ylabel: str, title: str = "",
              logx: bool = False, logy: bool = False, markers: bool = False) -> Figure:
    """One line per named (x, y) curve: convergence curves, α sweeps, metric-vs-width plots."""
    require(curves, "line_plot needs at least one curve")
    fig, ax = _new_figure()
    for name, (x, y) in curves.items():
        require(len(x) == len(y), f"curve {name!r} has {len(x)} x values but {len(y)} y values")
        ax.plot(np.asarray(x), np.asarray(y), label=name, marker="o" if markers else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def bar_chart(values: Mapping[str, float], ylabel: str, title: str = "", errors: Mapping[str, float] | None = None,
              horizontal: bool = False) -> Figure:
    """Bars for named values (e.g. safety rate per method), optional symmetric error bars."""
    require(values, "bar_chart needs at least one value")
    names = list(values)
    heights = [values[n] for n in names]
    err = [errors.get(n, 0.0) for n in names] if errors else None
    fig, ax = _new_figure((6.4, max(2.5, 0.35 * len(names) + 1)) if horizontal else (max(4.0, 0.6 * len(names) + 2), 4.0))
    positions = np.arange(len(names))
    if horizontal:
        ax.barh(positions, heights, xerr=err, color="#4c72b0")
        ax.set_yticks(positions, names)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.bar(positions, heights, yerr=err, color="#4c72b0")
        ax.set_xticks(positions, names, rotation=30 if max(map(len, names)) > 6 else 0, ha="right" if max(map(len, names)) > 6 else "center")
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return fig


def histogram(values: ArrayLike, xlabel: str, title: str = "", bins: int = 50, logx: bool = False,
              logy: bool = False) -> Figure:
    """Histogram; `logx` uses log-spaced bins over the positive values (e.g. latent firing frequencies)."""
    data = np.asarray(values, dtype=float).ravel()
    data = data[np.isfinite(data)]
    fig, ax = _new_figure()
    if logx:
        positive = data[data > 0]
        dropped = data.size - positive.size
        if positive.size:
            edges = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, bins + 1)
            ax.hist(positive, bins=edges, color="#4c72b0")
        ax.set_xscale("log")
        if dropped:
            ax.text(0.98, 0.95, f"{dropped} values ≤ 0 not shown", transform=ax.transAxes, ha="right", va="top", fontsize="small")
    elif data.size:
        ax.hist(data, bins=bins, color="#4c72b0")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    return fig


def heatmap(matrix: ArrayLike | Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str],
            title: str = "", xlabel: str = "", ylabel: str = "", annotate: bool = True, fmt: str = ".2f",
            cmap: str = "viridis") -> Figure:
    """A labelled matrix (confusion matrix, slot-by-concept activations) with the values written in the cells."""
    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2 or data.shape != (len(row_labels), len(col_labels)):
        raise SaelignError(f"heatmap matrix has shape {data.shape}, expected ({len(row_labels)}, {len(col_labels)}) from the labels")
    fig, ax = _new_figure((max(4.0, 0.55 * len(col_labels) + 2.5), max(3.0, 0.45 * len(row_labels) + 1.5)))
    image = ax.imshow(data, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(np.arange(len(col_labels)), col_labels, rotation=45 if max(map(len, col_labels), default=0) > 3 else 0, ha="right")
    ax.set_yticks(np.arange(len(row_labels)), row_labels)
    if annotate and data.size <= 900:
        finite = data[np.isfinite(data)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize="x-small",
                    color="black" if value > middle else "white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig
