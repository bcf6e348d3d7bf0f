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
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from mmlens.audit.backdoor import ByeResult, MixtureFit

MAX_PANELS = 48  # head-level audits of real models have thousands of units: draw the most separated


def _draw(ax, values: np.ndarray, fit: "MixtureFit", title: str, highlight: bool) -> None:
    counts, edges, _ = ax.hist(values, bins=40, color="#8fb3d9" if not highlight else "#e39a6b")
    grid = np.linspace(edges[0], edges[-1], 200)
    width = edges[1] - edges[0]
    for m, s, w in zip(fit.means, fit.sigmas, fit.weights):  # each component, scaled to the histogram's counts
        pdf = w * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        ax.plot(grid, pdf * len(values) * width, color="black", linewidth=1)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)


def entropy_figure(result: "ByeResult", matrix: np.ndarray) -> Figure:
    """One histogram per unit (the most separated first when there are many), then the scores' histogram."""
    order = list(range(len(result.fits)))
    if len(order) > MAX_PANELS:
        order = sorted(order, key=lambda j: -result.fits[j].gap())[:MAX_PANELS]
    panels = len(order) + (1 if result.scores is not None else 0) + (1 if result.refined is not None else 0)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(3 * cols, 2.2 * rows))
    FigureCanvasAgg(fig)
    for k, j in enumerate(order):
        fit = result.fits[j]
        _draw(fig.add_subplot(rows, cols, k + 1), matrix[:, j], fit, f"{result.names[j]}  gap {fit.gap():.1f}",
              j in result.sensitive)
    if result.scores is not None and result.score_fit is not None:
        _draw(fig.add_subplot(rows, cols, len(order) + 1), result.scores, result.score_fit, "score (sensitive mean)",
              True)
    if result.refined is not None:  # the refined split: its log ratio, the cut drawn
        ax = fig.add_subplot(rows, cols, panels)
        ax.hist(np.clip(result.refined, -60, 60), bins=60, color="#e39a6b")
        ax.axvline(result.extra.get("threshold", 0.0), color="black", linewidth=1)
        ax.set_title(f"refined log ratio (removed {len(result.removed)})", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def write_audit_page(folder: Path, result: "ByeResult", matrix: np.ndarray, labels: dict | None) -> Path:
    """``entropy.png`` and ``index.html`` (the decision, the rule, and precision/recall when labels exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    entropy_figure(result, matrix).savefig(folder / "entropy.png", dpi=90)
    summary = result.summary()
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in summary.items())
    label_rows = ""
    if labels is not None:
        label_rows = "<h2>Against the poison labels</h2><table>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in labels.items()) \
            + "</table>"
    page = (f"<!doctype html><meta charset='utf-8'><title>BYE audit</title><h1>BYE backdoor audit</h1>"
            f"<p>{html.escape(result.note)}</p><table>{rows}</table>{label_rows}"
            f"<h2>Entropy per {'layer' if result.units == 'layers' else 'head'} (sensitive in orange)</h2>"
            f"<img src='entropy.png' alt='entropy histograms'>")
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
