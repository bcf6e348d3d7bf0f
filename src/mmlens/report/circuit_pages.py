"""Figures and the HTML page of ``mmlens circuit``: CD-T shares, the EAP circuit as a graph, the faithfulness curve.

The circuit graph puts layers in rows (embeddings at the bottom, logits at the
top), one node per head and one per MLP in each row, and draws the kept edges
with a width that grows with the edge's absolute score. An edge's score
estimates how the metric moves when that edge is corrupted: red edges
(negative scores) carry the clean answer, blue ones work against it. Legends
under the graph and a colour bar for the nodes say so on the figure itself.

Example:
    >>> from mmlens.report.circuit_pages import circuit_figure
    >>> figure = circuit_figure(4, 4, scores, k=20)  # doctest: +SKIP
    >>> figure.savefig("circuit.png")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mmlens.report.figures import layer_grid_figure
from mmlens.report.inside_html import section_html

if TYPE_CHECKING:
    import torch

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

    A legend under the graph explains edge colour and width; a colour bar
    explains node colours (or, without ``node_scores``, a legend says which
    nodes are in the circuit). Node labels are white on dark nodes.

    Example:
        >>> circuit_figure(4, 4, scores, 20).axes[0].get_title()  # doctest: +SKIP
        'circuit: top 20 of 207 edges'
    """
    figure = Figure(figsize=(min(4.5 + 0.9 * n_heads, 15), min(3.3 + 0.9 * n_layers, 17)), dpi=dpi,
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
        axes.plot([x0, x1], [y0, y1], color=CARRIES if value < 0 else AGAINST, alpha=0.75,
                  linewidth=_edge_width(abs(value) / strongest), zorder=1)
    names = ["embed", "logits"] + [f"L{i}.{p}" for i in range(n_layers)
                                   for p in [f"H{j}" for j in range(n_heads)] + ["MLP"]]
    bound = max((abs(v) for v in (node_scores or {}).values()), default=0.0) or 1.0
    for name in names:
        x, y = node_position(name, n_layers, n_heads)
        if node_scores and name in node_scores:
            colour = _signed_colour(node_scores[name] / bound)
        else:
            colour = IN_CIRCUIT if name in used else OUTSIDE
        marker = "s" if name.endswith("MLP") else ("D" if name in ("embed", "logits") else "o")
        axes.scatter([x], [y], s=260, marker=marker, color=colour, edgecolors="black" if name in used else "#aaaaaa",
                     linewidths=1.0, zorder=2)
        label = name.split(".")[-1]
        if label == "MLP":  # between two rows of heads: name its layer
            label = f"MLP{name.split('.')[0][1:]}"
        axes.annotate(label, (x, y), ha="center", va="center", fontsize=6 if len(label) < 5 else 5, zorder=3,
                      color=label_colour(colour))
    axes.set_yticks(range(-1, n_layers + 1), ["embed"] + [f"L{i}" for i in range(n_layers)] + ["logits"], fontsize=8)
    axes.set_xticks([])
    axes.set_xlim(-0.8, n_heads + 1.3)
    axes.set_title(f"circuit: top {len(chosen)} of {len(scores.edges)} edges", fontsize=10)
    for side in ("top", "right", "bottom"):
        axes.spines[side].set_visible(False)
    _legends(figure, axes, strongest, bound if node_scores else None)
    return figure


CARRIES, AGAINST = "#c0392b", "#2e6fb7"  # edge colours: score < 0 (carries the clean answer), score > 0
IN_CIRCUIT, OUTSIDE = "#f4d35e", "#e6e6e6"  # node colours without CD-T scores


def _signed_colour(value: float) -> tuple[float, float, float]:
    """White at 0, red towards +1, blue towards -1."""
    v = float(np.clip(value, -1.0, 1.0))
    return (1.0, 1.0 - v, 1.0 - v) if v >= 0 else (1.0 + v, 1.0 + v, 1.0)


def _edge_width(share: float) -> float:
    """Line width of an edge whose |score| is ``share`` of the strongest edge's."""
    return 0.5 + 4.0 * share


def label_colour(colour: Any) -> str:
    """Black or white, whichever reads better on ``colour`` (by its relative luminance).

    Example:
        >>> label_colour((0.0, 0.0, 1.0)), label_colour("#f4d35e")
        ('white', 'black')
    """
    red, green, blue = (_linear(c) for c in to_rgb(colour))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return "white" if luminance < 0.18 else "black"  # 0.18: where black and white text contrast equally


def _linear(channel: float) -> float:
    """An sRGB channel in linear light (the WCAG formula)."""
    return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4


def _legends(figure: Figure, axes: Any, strongest: float, node_bound: float | None) -> None:
    """Edge colour and width under the graph; the node colour bar (CD-T) or the circuit membership key."""
    edges = [Line2D([], [], color=CARRIES, linewidth=2.5, label="edge carries the clean answer (score < 0)"),
             Line2D([], [], color=AGAINST, linewidth=2.5, label="edge works against it (score > 0)"),
             Line2D([], [], color="grey", linewidth=_edge_width(1.0), label=f"|score| {strongest:.3g} (strongest)"),
             Line2D([], [], color="grey", linewidth=_edge_width(0.25), label=f"|score| {strongest / 4:.3g}")]
    if node_bound is None:
        edges += [Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor=IN_CIRCUIT,
                         markeredgecolor="black", label="node in the circuit"),
                  Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor=OUTSIDE,
                         markeredgecolor="#aaaaaa", label="node outside it")]
    figure.legend(handles=edges, loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    if node_bound is not None:
        colours = LinearSegmentedColormap.from_list("cdt_nodes", [_signed_colour(-1.0), (1.0, 1.0, 1.0),
                                                                   _signed_colour(1.0)])
        bar = figure.colorbar(ScalarMappable(Normalize(-node_bound, node_bound), colours), ax=axes, shrink=0.6)
        bar.set_label("node: CD-T source share of the answer logit", fontsize=7)
        bar.ax.tick_params(labelsize=7)


def curve_figure(curves: Mapping[str, "FaithfulnessCurve"], n_edges: int, dpi: int = 100, *,
                 target: float = 0.8, sparse_share: float = 20.0) -> Figure:
    """Edges kept (share of all edges) against the share of the clean-corrupt gap recovered, one line per ablation.

    Dotted guides, named in the legend: the ``target`` share of the gap the
    circuit must recover, and ``sparse_share`` percent of the edges (a
    circuit left of it is small).

    Example:
        >>> curve_figure({"mean": curve}, 207).axes[0].get_xlabel()  # doctest: +SKIP
        'edges kept (% of all)'
    """
    figure = Figure(figsize=(5.6, 3.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        axes.plot([100 * k / n_edges for k in curve.kept], curve.recovered.numpy(), marker=".", label=f"{name}-ablated")
    axes.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target: {target:.0%} of the gap")
    axes.axvline(sparse_share, color="grey", linestyle="--", linewidth=1, alpha=0.7,
                 label=f"{sparse_share:g}% of the edges")
    axes.set_xlabel("edges kept (% of all)")
    axes.set_ylabel("clean-corrupt gap recovered")
    axes.set_title("faithfulness: the gap recovered by the top edges alone", fontsize=10)
    axes.legend(fontsize=7)
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
        order = [result.components.index(name) for name, _ in result.ranking()[:10]]  # by size: negatives count
        tables.append({"title": "CD-T ranking by |total| (source share, logits)",
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

