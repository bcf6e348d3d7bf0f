"""Circuit figures explain themselves: legends for edges and nodes, readable labels, a titled, labelled curve."""

from __future__ import annotations

import torch
from matplotlib.colors import to_rgb

from mmlens.circuits.eap import EdgeScores, FaithfulnessCurve
from mmlens.report.circuit_pages import circuit_figure, curve_figure, label_colour

NODES = ["embed", "L0.H0", "L0.H1", "L0.MLP"]
READERS = ["L0.H0", "L0.H1", "L0.MLP", "logits"]


def _scores() -> EdgeScores:
    edges = [(0, 0), (0, 1), (1, 3), (2, 3), (3, 3)]
    return EdgeScores(nodes=NODES, readers=READERS, edges=edges, scores=torch.tensor([-2.0, 1.0, -0.5, 0.4, 3.0]),
                      clean=torch.ones(1), corrupt=torch.zeros(1), seconds=0.0)


def _legend_texts(figure) -> list[str]:
    return [t.get_text() for legend in figure.legends for t in legend.get_texts()]


def test_graph_explains_edge_colour_and_width_and_node_colour():
    figure = circuit_figure(1, 2, _scores(), k=5, node_scores={"L0.H0": -4.0, "L0.H1": 1.0, "L0.MLP": 0.0})
    texts = " | ".join(_legend_texts(figure))
    assert "carries the clean answer" in texts and "works against" in texts and "|score| 3 (strongest)" in texts
    bars = [axes for axes in figure.axes if "CD-T" in axes.get_ylabel()]
    assert len(bars) == 1


def test_graph_without_node_scores_says_which_nodes_are_in_the_circuit():
    texts = _legend_texts(circuit_figure(1, 2, _scores(), k=2))
    assert "node in the circuit" in texts and "node outside it" in texts


def test_node_labels_are_white_on_dark_nodes():
    figure = circuit_figure(1, 2, _scores(), k=5, node_scores={"L0.H0": -4.0, "L0.H1": 1.0, "L0.MLP": 0.0})
    labels = {t.get_text(): to_rgb(t.get_color()) for t in figure.axes[0].texts}
    assert labels["H0"] == (1.0, 1.0, 1.0)  # the strongest negative share: dark blue
    assert labels["MLP0"] == (0.0, 0.0, 0.0)  # zero share: white node; the MLP names its layer
    assert label_colour("#000080") == "white" and label_colour("#f4d35e") == "black"


def test_curve_has_a_title_and_named_guides():
    curve = FaithfulnessCurve(kept=[0, 1, 5], metric=torch.tensor([0.0, 0.5, 1.0]), clean=1.0, corrupt=0.0,
                              empty=0.0, n_edges=5)
    axes = curve_figure({"corrupt": curve}, 5, target=0.7).axes[0]
    assert axes.get_title()
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert "target: 70% of the gap" in labels and "20% of the edges" in labels
