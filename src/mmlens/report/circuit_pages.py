"""Figures and the HTML page of ``mmlens circuit``: CD-T shares, the EAP circuit as a graph, the faithfulness curve.

The circuit graph puts layers in rows (embeddings at the bottom, logits at the
top), one node per head and one per MLP in each row, and draws the kept edges
with a width that grows with the edge's absolute score. An edge's score
estimates how the metric moves when that edge is corrupted: red edges
(negative scores) carry the clean answer, blue ones work against it.

Example:
    >>> from mmlens.report.circuit_pages import circuit_figure
    >>> figure = circuit_figure(4, 4, scores, k=20)  # doctest: +SKIP
    >>> figure.savefig("circuit.png")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmlens.report.figures import layer_grid_figure
from mmlens.report.inside_html import section_html

if TYPE_CHECKING:
    from mmlens.circuits.cdt import Decomposition
    from mmlens.circuits.eap import EdgeScores, FaithfulnessCurve


def node_position(name: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Where a node sits: ``(x, y)`` with the layer as the row (``embed`` below layer 0, ``logits`` above the last).

    Example:
        >>> node_position("L1.MLP", 4, 4), node_position("embed", 4, 4)
        ((4.5, 1.5), (2.0, -1.0))
    """
    if name == "embed":
        return n_heads / 2, -1.0
    if name == "logits":
        return n_heads / 2, float(n_layers)
    layer, part = name.split(".")
    row = float(layer[1:])
    if part == "MLP":
        return n_heads + 0.5, row + 0.5  # the MLP reads the same layer's heads: half a row up
    return float(part[1:]), row


def circuit_figure(n_layers: int, n_heads: int, scores: "EdgeScores", k: int,
                   node_scores: Mapping[str, float] | None = None, dpi: int = 100) -> Figure:
    """The top ``k`` edges of ``scores`` as a graph; nodes coloured by ``node_scores`` when given (e.g. CD-T).

    Example:
        >>> circuit_figure(4, 4, scores, 20).axes[0].get_title()  # doctest: +SKIP
        'circuit: top 20 of 207 edges'
    """
    figure = Figure(figsize=(min(3 + 0.9 * n_heads, 14), min(2.5 + 0.9 * n_layers, 16)), dpi=dpi,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    chosen = scores.top(k)
    strongest = float(scores.scores.abs().max()) or 1.0
    used = {"embed", "logits"}
    for e in chosen:
        u, r = scores.edges[e]
        a, b = scores.nodes[u], scores.readers[r]
        used |= {a, b}
        (x0, y0), (x1, y1) = node_position(a, n_layers, n_heads), node_position(b, n_layers, n_heads)
        value = float(scores.scores[e])
        axes.plot([x0, x1], [y0, y1], color="#c0392b" if value < 0 else "#2e6fb7", alpha=0.75,
                  linewidth=0.5 + 4.0 * abs(value) / strongest, zorder=1)
    names = ["embed", "logits"] + [f"L{i}.{p}" for i in range(n_layers)
                                   for p in [f"H{j}" for j in range(n_heads)] + ["MLP"]]
    bound = max((abs(v) for v in (node_scores or {}).values()), default=0.0) or 1.0
    for name in names:
        x, y = node_position(name, n_layers, n_heads)
        if node_scores and name in node_scores:
            colour = _signed_colour(node_scores[name] / bound)
        else:
            colour = "#f4d35e" if name in used else "#e6e6e6"
        marker = "s" if name.endswith("MLP") else ("D" if name in ("embed", "logits") else "o")
        axes.scatter([x], [y], s=260, marker=marker, color=colour, edgecolors="black" if name in used else "#aaaaaa",
                     linewidths=1.0, zorder=2)
        axes.annotate(name.split(".")[-1], (x, y), ha="center", va="center", fontsize=6, zorder=3)
    axes.set_yticks(range(-1, n_layers + 1), ["embed"] + [f"L{i}" for i in range(n_layers)] + ["logits"], fontsize=8)
    axes.set_xticks([])
    axes.set_xlim(-0.8, n_heads + 1.3)
    axes.set_title(f"circuit: top {len(chosen)} of {len(scores.edges)} edges", fontsize=10)
    for side in ("top", "right", "bottom"):
        axes.spines[side].set_visible(False)
    return figure


def _signed_colour(value: float) -> tuple[float, float, float]:
    """White at 0, red towards +1, blue towards -1."""
    v = float(np.clip(value, -1.0, 1.0))
    return (1.0, 1.0 - v, 1.0 - v) if v >= 0 else (1.0 + v, 1.0 + v, 1.0)


def curve_figure(curves: Mapping[str, "FaithfulnessCurve"], n_edges: int, dpi: int = 100) -> Figure:
    """Edges kept (share of all edges) against the share of the clean-corrupt gap recovered, one line per ablation.

    Example:
        >>> curve_figure({"mean": curve}, 207).axes[0].get_xlabel()  # doctest: +SKIP
        'edges kept (% of all)'
    """
    figure = Figure(figsize=(5.2, 3.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        axes.plot([100 * k / n_edges for k in curve.kept], curve.recovered.numpy(), marker=".", label=f"{name}-ablated")
    axes.axhline(0.8, color="grey", linestyle=":", linewidth=1)
    axes.axvline(20, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("edges kept (% of all)")
    axes.set_ylabel("clean-corrupt gap recovered")
    axes.legend(fontsize=8)
    return figure


def cdt_figure(result: "Decomposition", n_layers: int, n_heads: int, by: str = "total") -> Figure:
    """The source's share of the answer logit per component, as a layer x (heads, MLP) grid."""
    scores = result.total_source if by == "total" else result.direct_source
    grid = scores.numpy().reshape(n_layers, n_heads + 1)
    return layer_grid_figure(grid, [f"L{i}" for i in range(n_layers)], [f"H{j}" for j in range(n_heads)] + ["MLP"],
                             f"CD-T: source share of the answer logit ({by})", "logit")


def circuit_section(facts: dict[str, Any], result: "Decomposition | None", scores: "EdgeScores | None",
                    curve: "FaithfulnessCurve | None", figures: Mapping[str, Figure]) -> str:
    """The HTML section of one ``mmlens circuit`` run (figures already drawn, by name)."""
    shown, tables = [], []
    if result is not None:
        shown.append(("CD-T: the source's share of the answer logit through each head and MLP (total: "
                      "propagated to the logit).", figures["cdt"]))
        order = result.total_source.argsort(descending=True)[:10].tolist()
        tables.append({"title": "CD-T ranking (source share, logits)",
                       "columns": ["component", "total", "direct", "direct, rest"],
                       "rows": [[result.components[i], f"{float(result.total_source[i]):.3f}",
                                 f"{float(result.direct_source[i]):.3f}", f"{float(result.direct_rest[i]):.3f}"]
                                for i in order]})
    if scores is not None:
        shown.append(("The circuit: the top edges by |EAP score| (layers in rows; red edges carry the clean "
                      "answer, blue ones work against it).", figures["graph"]))
        tables.append({"title": "top edges (EAP)", "columns": ["edge", "score"],
                       "rows": [[scores.edge_names()[e], f"{float(scores.scores[e]):.3f}"] for e in scores.top(15)]})
    if curve is not None:
        shown.append(("Edges kept against the share of the clean-corrupt gap recovered (other edges ablated).",
                      figures["curve"]))
    return section_html("circuit", facts, shown, tables)

