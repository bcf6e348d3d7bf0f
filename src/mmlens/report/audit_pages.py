"""Figures and the page of ``mmlens audit backdoor``: per-layer entropy histograms with their mixtures drawn.

Example:
    >>> import numpy as np
    >>> from mmlens.audit import bye_filter
    >>> h = np.random.default_rng(0).normal(3, 0.1, (40, 2))
    >>> result = bye_filter(h, [str(i) for i in range(40)])
    >>> entropy_figure(result, h).axes[0].get_title().startswith("L0  gap")
    True
"""

from __future__ import annotations

import html
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mmlens.report.figures import png_data_uri

if TYPE_CHECKING:
    from mmlens.audit.backdoor import ByeResult, MixtureFit

MAX_PANELS = 48  # head-level audits of real models have thousands of units: draw the most separated


SENSITIVE, OTHER = "#e39a6b", "#8fb3d9"  # histogram colours: sensitive units, the rest
CUT = "#b03a2e"  # the removal cut


def _draw(ax, values: np.ndarray, fit: "MixtureFit", title: str, highlight: bool,
          xlabel: str = "entropy (nats)") -> None:
    counts, edges, _ = ax.hist(values, bins=40, color=SENSITIVE if highlight else OTHER)
    grid = np.linspace(edges[0], edges[-1], 200)
    width = edges[1] - edges[0]
    for m, s, w in zip(fit.means, fit.sigmas, fit.weights):  # each component, scaled to the histogram's counts
        pdf = w * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        ax.plot(grid, pdf * len(values) * width, color="black", linewidth=1)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel("samples", fontsize=7)
    ax.tick_params(labelsize=6)


def score_cut(fit: "MixtureFit", scores: np.ndarray, threshold: float = 0.0) -> float | None:
    """The score below which samples are removed (where the mixture's low cluster ends), None if none is.

    Example:
        >>> from mmlens.audit.backdoor_mixture import MixtureFit
        >>> round(score_cut(MixtureFit((1.0, 3.0), (0.5, 0.5), (0.5, 0.5)), np.array([0.0, 4.0])), 2)
        2.0
    """
    grid = np.linspace(float(np.min(scores)), max(float(np.max(scores)), fit.means[1]), 2001)
    low = fit.low_cluster(grid, threshold)
    if not low.any():
        return None
    return float(grid[np.flatnonzero(low)[-1]])


def entropy_figure(result: "ByeResult", matrix: np.ndarray) -> Figure:
    """One histogram per unit (the most separated first when there are many), then the scores' histogram.

    Units the rule found sensitive are orange (the legend says so); black
    curves are each unit's two-component mixture; the removal cut is marked on
    the score (or refined log-ratio) panel.

    Example:
        >>> entropy_figure(result, matrix).get_suptitle()[:10]  # doctest: +SKIP
        'BYE audit:'
    """
    order = list(range(len(result.fits)))
    if len(order) > MAX_PANELS:
        order = sorted(order, key=lambda j: -result.fits[j].gap())[:MAX_PANELS]
    panels = len(order) + (1 if result.scores is not None else 0) + (1 if result.refined is not None else 0)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    unit = {"layers": "layer", "heads": "head", "positions": "position"}.get(result.units, result.units)
    fig = Figure(figsize=(3 * cols, 2.2 * rows + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    threshold = float(result.extra.get("threshold", 0.0))
    for k, j in enumerate(order):
        fit = result.fits[j]
        _draw(fig.add_subplot(rows, cols, k + 1), matrix[:, j], fit, f"{result.names[j]}  gap {fit.gap():.1f}",
              j in result.sensitive)
    handles = [Patch(color=SENSITIVE, label=f"sensitive {unit} (gap > {result.separation:g})"),
               Patch(color=OTHER, label=f"other {unit}"),
               Line2D([], [], color="black", linewidth=1, label="2-component Gaussian mixture")]
    if result.scores is not None and result.score_fit is not None:
        ax = fig.add_subplot(rows, cols, len(order) + 1)
        _draw(ax, result.scores, result.score_fit, f"score: mean over sensitive {unit}s", True,
              "mean entropy (nats)")
        cut = score_cut(result.score_fit, result.scores, threshold) if result.refined is None else None
        if cut is not None:
            ax.axvline(cut, color=CUT, linestyle="--", linewidth=1.2)
            handles.append(Line2D([], [], color=CUT, linestyle="--",
                                  label=f"cut: scores below {cut:.2f} removed ({len(result.removed)})"))
    if result.refined is not None:  # the refined split: its log ratio, the cut drawn
        ax = fig.add_subplot(rows, cols, panels)
        ax.hist(np.clip(result.refined, -60, 60), bins=60, color=SENSITIVE)
        ax.axvline(threshold, color=CUT, linestyle="--", linewidth=1.2)
        ax.set_title(f"refined log ratio (removed {len(result.removed)})", fontsize=8)
        ax.set_xlabel("log ratio, low cluster against high", fontsize=7)
        ax.set_ylabel("samples", fontsize=7)
        ax.tick_params(labelsize=6)
        handles.append(Line2D([], [], color=CUT, linestyle="--",
                              label=f"cut: log ratio above {threshold:g} removed ({len(result.removed)})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)
    title = (f"BYE audit: entropy of the answer position's attention over the image, per {unit} "
             f"({len(result.ids)} samples; {result.note})")
    fig.suptitle(textwrap.fill(title, int(3 * cols * 13)), fontsize=10)  # long notes wrap, never clip
    return fig


def plain_value(value: Any) -> str:
    """A summary value as a reader writes it: lists joined by commas, floats to 4 significant digits, no quotes.

    Example:
        >>> plain_value(["L3"]), plain_value("layers"), plain_value({"means": [2.43835, 3.4]}), plain_value(False)
        ('L3', 'layers', 'means 2.438, 3.4', 'no')
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k} {plain_value(v)}" for k, v in value.items())
    return "none" if value is None else str(value)


def _table(values: dict) -> str:
    return "<table>" + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(plain_value(v))}</td></tr>"
                               for k, v in values.items()) + "</table>"


def write_audit_page(folder: Path, result: "ByeResult", matrix: np.ndarray, labels: dict | None) -> Path:
    """``entropy.png`` and a self-contained ``index.html`` (the decision, the rule, precision/recall when labels exist).

    The figure is embedded in the page as a data URI, so the page can be moved or mailed alone.

    Example:
        >>> write_audit_page(Path("/tmp/bye"), result, matrix, None).name  # doctest: +SKIP
        'index.html'
    """
    folder.mkdir(parents=True, exist_ok=True)
    figure = entropy_figure(result, matrix)
    figure.savefig(folder / "entropy.png", dpi=90)
    label_rows = "" if labels is None else "<h2>Against the poison labels</h2>" + _table(labels)
    unit = {"layers": "layer", "heads": "head", "positions": "position"}.get(result.units, result.units)
    page = (f"<!doctype html><meta charset='utf-8'><title>BYE audit</title><h1>BYE backdoor audit</h1>"
            f"<p>{html.escape(result.note)}</p>{_table(result.summary())}{label_rows}"
            f"<h2>Entropy per {unit} (sensitive in orange)</h2>"
            f"<img src='{png_data_uri(figure, dpi=90)}' alt='entropy histograms'>")
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
