"""Neuron figures and the ``mmlens neurons`` page: where each label's neurons sit, where one neuron fires most.

Figures draw on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no
pyplot); :func:`neurons_section` lays a run's summary out as an HTML section
(the template of :mod:`mmlens.report.inside_html`).

Example:
    >>> import numpy as np
    >>> figure = depth_figure(np.array([[5, 1, 0], [0, 2, 4]]), ["image", "text"], "where neurons sit")
    >>> len(figure.axes[0].patches)  # one bar per label and layer
    6
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mmlens.box import Box
from mmlens.report.figures import _limits
from mmlens.report.inside_html import section_html

if TYPE_CHECKING:  # report code reads results only
    from mmlens.neurons.top import TopActivations

#: The towers a domain neuron can sit in.
TOWERS = ("lm", "vision", "projector")


def depth_figure(counts: np.ndarray, labels: Sequence[str], title: str, normalise: bool = True,
                 layer_label: str = "decoder layer", dpi: int = 100) -> Figure:
    """Grouped bars: per label (row of ``counts``), the share (or count) of its neurons in each layer.

    ``counts`` is ``(labels, layers)``, as :meth:`NeuronSet.depth_counts` returns.

    Example:
        >>> figure = depth_figure(np.array([[3, 1]]), ["image"], "depth", normalise=False)
        >>> [float(bar.get_height()) for bar in figure.axes[0].patches]
        [3.0, 1.0]
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != len(labels):
        raise ValueError(f"counts of shape {counts.shape} for {len(labels)} labels")
    values = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalise else counts
    n_labels, n_layers = values.shape
    figure = Figure(figsize=(min(max(3.0 + 0.35 * n_layers * max(n_labels, 1) / 2, 4.5), 14.0), 3.2), dpi=dpi,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(n_labels, 1)
    colours = matplotlib.colormaps["tab10"]
    for row, label in enumerate(labels):
        x = np.arange(n_layers) + (row - (n_labels - 1) / 2) * width
        axes.bar(x, values[row], width=width, color=colours(row % 10), label=f"{label} ({int(counts[row].sum())})")
    step = max(1, n_layers // 32)
    axes.set_xticks(range(0, n_layers, step), [str(i) for i in range(0, n_layers, step)], fontsize=8)
    axes.set_xlabel(layer_label, fontsize=9)
    axes.set_ylabel("share of the label's neurons" if normalise else "neurons", fontsize=9)
    axes.tick_params(axis="y", labelsize=8)
    axes.set_title(title, fontsize=10)
    if n_labels:
        axes.legend(fontsize=8, frameon=False)
    return figure


def top_activations_figure(top: "TopActivations", title: str | None = None, columns: int = 4,
                           cmap: str = "magma", alpha: float = 0.55, dpi: int = 100) -> Figure:
    """The top-activating images for one neuron, its activation over each image, the strongest patch boxed.

    Every panel shares one colour scale, shown by the colour bar on the right.

    Example:
        >>> from types import SimpleNamespace
        >>> from PIL import Image
        >>> top = SimpleNamespace(site="lm.L0.neurons", index=3, values=np.array([2.0]), sample_ids=["a"],
        ...                       images=[Image.new("RGB", (8, 8))], heatmaps=[np.ones((8, 8))], patches=[(0, 1)],
        ...                       boxes=[(4, 0, 8, 4)])
        >>> [axes.get_ylabel() for axes in top_activations_figure(top).axes][-1]
        'activation of lm.L0.neurons[3]'
    """
    count = len(top.images)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    bar_in = 1.0  # the shared colour bar and its label
    width, height = 2.3 * columns + bar_in, 2.5 * rows + 0.5
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    figure.suptitle(title or f"{top.site}[{top.index}]: top-activating samples (cyan box: strongest patch)",
                    fontsize=10)
    colours = matplotlib.colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    values = [np.asarray(h, dtype=np.float32).ravel() for h in top.heatmaps]
    # One colour scale for all panels, whatever the images' sizes.
    low, high = _limits(np.ma.masked_invalid(np.concatenate(values))) if values else (0.0, 1.0)
    shown = None
    for j in range(count):
        axes = figure.add_subplot(rows, columns, j + 1)
        pixels = np.asarray(top.images[j].convert("RGB"))
        heat = np.ma.masked_invalid(np.asarray(top.heatmaps[j], dtype=np.float32))
        axes.imshow(pixels, interpolation="nearest")
        shown = axes.imshow(heat, cmap=colours, alpha=alpha, vmin=low, vmax=high, interpolation="nearest")
        _box_patch(axes, top.boxes[j])
        axes.set_title(f"{top.sample_ids[j]}\nmax {float(top.values[j]):.3g}", fontsize=7)
        axes.set_axis_off()
    top_frac = 1 - 0.75 / height
    figure.subplots_adjust(left=0.02, right=1 - bar_in / width, bottom=0.02, top=top_frac, hspace=0.35)
    bar_axes = figure.add_axes((1 - (bar_in - 0.15) / width, 0.06, 0.12 / width, top_frac - 0.1))
    if shown is None:
        shown = ScalarMappable(Normalize(low, high), colours)
    bar = figure.colorbar(shown, cax=bar_axes)
    bar.solids.set_alpha(1.0)  # the colours themselves, not blended with an image
    bar.set_label(f"activation of {top.site}[{top.index}]", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return figure


def _box_patch(axes, box: Box) -> None:
    """Outline an ``(x0, y0, x1, y1)`` pixel box."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.5))


def neurons_section(summary: Mapping[str, Any], figures: Mapping[str, Figure | str]) -> str:
    """The HTML section of one ``mmlens neurons`` run, from its ``neurons.json`` summary and figures.

    Example:
        >>> summary = {"model": "m", "budget": "modality", "ratio": 0.02, "samples": 4, "weights": {"mean": 1.0},
        ...            "selected": {"image": 3}, "depth": {"image": [2, 1]}}
        >>> "modality-specific neurons per decoder layer" in neurons_section(summary, {})
        True
    """
    facts = {"model": summary["model"], "budget": summary["budget"], "ratio": summary["ratio"],
             "samples per question type": summary["samples"],
             "score": " + ".join(f"{w:g}*{name}" for name, w in summary["weights"].items()),
             "selected": ", ".join(f"{label}: {n}" for label, n in summary["selected"].items())}
    if "top_image_neuron" in summary:
        top = summary["top_image_neuron"]
        facts["strongest image neuron"] = f"{top['site']}[{top['index']}]"
    captions = {"depth": "Where do modality-specific neurons sit? Share of each modality's neurons per decoder layer.",
                "top_image_neuron": "The strongest image neuron: its top-activating samples, its activation over "
                                    "each image, the strongest patch boxed."}
    shown = [(caption, figures[name]) for name, caption in captions.items() if name in figures]
    depth = summary["depth"]
    layers = len(next(iter(depth.values()), []))
    tables = [{"title": "modality-specific neurons per decoder layer",
               "columns": ["modality", "neurons", *[f"L{i}" for i in range(layers)]],
               "rows": [[label, summary["selected"][label], *row] for label, row in depth.items()]}]
    if "domains" in summary:
        tables.append(domain_table(summary["domains"], summary.get("domain_neurons", {})))
    return section_html("modality-specific neurons", facts, shown, tables)


def domain_table(counts: Mapping[str, Mapping[str, int]], most: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict:
    """Per domain: its neurons in each tower and its most specific ones (lowest entropy), as a table.

    Example:
        >>> table = domain_table({"count": {"lm": 2, "vision": 1, "projector": 0}},
        ...                      {"count": [{"site": "lm.L1.neurons", "index": 7, "entropy": 0.1}]})
        >>> table["rows"]
        [['count', '2', '1', '0', 'lm.L1.neurons[7]']]
    """
    rows = [[domain, *[str(per_tower.get(tower, 0)) for tower in TOWERS],
             " ".join(f"{n['site']}[{n['index']}]" for n in most.get(domain, []))]
            for domain, per_tower in counts.items()]
    return {"title": "domain-specific neurons (question types as domains)",
            "columns": ["domain", *TOWERS, "most specific (lowest entropy)"], "rows": rows}
