"""Figures for the model perspective: logit-lens word grids, answer emergence, attention flow, knockout, tracing.

Like :mod:`mmlens.report.figures`, everything draws on bare Agg figures. The
functions only read result objects (``LogitLens``, ``AttentionFlow``,
``Knockout``, ``CausalTrace``); no model is imported.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> from mmlens.causal import trace
    >>> figures = trace_figures(trace(mmlens.load("tiny-llava"), make_sample("test", 0, "colour")))
    >>> sorted(figures)
    ['attn', 'mlp', 'resid']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter
from PIL import Image

from mmlens.report.figures import display_token, layer_grid_figure

if TYPE_CHECKING:
    from mmlens.causal.tracing import CausalTrace
    from mmlens.lens.attention_flow import AttentionFlow, Knockout
    from mmlens.lens.logit_lens import LogitLens

COMPONENT_TITLES = {"resid": "hidden state", "attn": "attention output", "mlp": "MLP output"}


def lens_word_grid_figure(
    lens: "LogitLens",
    image: Image.Image,
    row: int = 0,
    image_index: int = 0,
    view: int = 0,
    layers: Sequence[int] | None = None,
    columns: int = 4,
    dpi: int = 100,
) -> Figure:
    """One panel per layer: the image under its patch grid, each cell labelled with its top-1 word.

    Cells are shaded by the word's probability (darker = surer), so confident
    and diffuse patches stand apart.

    Example:
        >>> figure = lens_word_grid_figure(lens, image, layers=[0, -1])
        >>> len(figure.axes)
        2
    """
    chosen = list(range(len(lens.layer_names))) if layers is None else [i % len(lens.layer_names) for i in layers]
    info = lens.layout.images[row][image_index]
    grid_view = info.views[view]
    view_x0, view_y0, view_x1, view_y1 = grid_view.box
    pixels = np.asarray(image.convert("RGB"))
    cols = min(columns, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    cell_in = 3.2 if grid_view.cols <= 8 else 4.2
    figure = Figure(figsize=(cols * cell_in, rows * (cell_in + 0.3)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    font = max(4.0, min(8.0, 56.0 / max(grid_view.rows, grid_view.cols)))
    shade = matplotlib.colormaps["Greys"]
    for k, layer in enumerate(chosen):
        axes = figure.add_subplot(rows, cols, k + 1)
        axes.imshow(pixels, extent=(0, info.size[1], info.size[0], 0))
        words, probs = lens.word_grid(layer, row, image_index, view)
        height, width = (view_y1 - view_y0) / grid_view.rows, (view_x1 - view_x0) / grid_view.cols
        for (r, c), word in np.ndenumerate(words):
            if not word:
                continue
            y0, x0 = view_y0 + r * height, view_x0 + c * width
            p = float(probs[r, c])
            axes.add_patch(Rectangle((x0, y0), width, height, facecolor=shade(0.15 + 0.6 * p),
                                                         alpha=0.55, edgecolor="white", linewidth=0.4))
            axes.text(x0 + width / 2, y0 + height / 2, display_token(word).strip()[:8], ha="center", va="center",
                      fontsize=font, color="white" if p > 0.5 else "black")
        axes.set_xlim(0, info.size[1])
        axes.set_ylim(info.size[0], 0)
        axes.set_axis_off()
        axes.set_title(f"{lens.layer_names[layer]}", fontsize=9)
    figure.suptitle("logit lens: top-1 word per image patch", fontsize=10)
    return figure


def answer_emergence_figure(lens: "LogitLens", rows: Sequence[int] | None = None, dpi: int = 100) -> Figure:
    """Rank (log scale) and probability of the answer token at the answer position, per layer.

    Example:
        >>> len(answer_emergence_figure(lens).axes)
        2
    """
    chosen = list(range(lens.answer_rank.shape[1])) if rows is None else list(rows)
    figure = Figure(figsize=(7.5, 3.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    rank_axes, prob_axes = figure.subplots(1, 2)
    x = np.arange(len(lens.layer_names))
    for b in chosen:
        label = display_token(lens.vocabulary[int(lens.answer_ids[b])]).strip()
        rank_axes.plot(x, lens.answer_rank[:, b].numpy(), marker="o", label=label)
        prob_axes.plot(x, lens.answer_prob[:, b].numpy(), marker="o", label=label)
    rank_axes.set_yscale("log")
    rank_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    rank_axes.yaxis.set_minor_formatter(NullFormatter())
    rank_axes.invert_yaxis()
    rank_axes.set_ylabel("rank of the answer (1 = top)", fontsize=8)
    prob_axes.set_ylabel("probability of the answer", fontsize=8)
    prob_axes.set_ylim(0, 1)
    for axes in (rank_axes, prob_axes):
        axes.set_xticks(x, lens.layer_names, fontsize=7, rotation=45 if len(x) > 12 else 0)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    if len(chosen) <= 8:
        prob_axes.legend(fontsize=7)
    figure.suptitle("when does the answer emerge?", fontsize=10)
    return figure


def flow_figures(flow: "AttentionFlow", row: int = 0, dpi: int = 100) -> dict[str, Figure]:
    """Attention from the answer position: share per modality per layer, and image share per layer and head.

    Example:
        >>> sorted(flow_figures(flow))
        ['flow_heads', 'flow_modalities']
    """
    layers = [f"L{i}" for i in range(flow.fractions.shape[0])]
    heads = [f"h{h}" for h in range(flow.fractions.shape[2])]
    by_modality = layer_grid_figure(flow.by_layer(row).numpy(), layers, list(flow.modalities),
                                    "attention from the answer position", "share of attention", dpi=dpi)
    image_heads = layer_grid_figure(flow.fractions[:, row, :, 0].numpy(), layers, heads,
                                    "share of attention on image tokens, per head", "share", dpi=dpi)
    return {"flow_modalities": by_modality, "flow_heads": image_heads}


def knockout_figure(knockout: "Knockout", dpi: int = 100) -> Figure:
    """Change of the answer probability (mean over rows) when attention to each key group is blocked per window.

    Example:
        >>> knockout_figure(result).axes[0].get_title()
        'attention knockout from the answer position'
    """
    change = knockout.change.mean(-1).numpy()  # (windows, groups)
    w = knockout.window
    labels = [f"L{s}" if w == 1 else f"L{s}-L{s + w - 1}" for s in knockout.window_starts]
    signed = bool((change < 0).any() and (change > 0).any())
    return layer_grid_figure(change, labels, knockout.groups, "attention knockout from the answer position",
                             "change of P(answer)", cmap="RdBu_r" if signed else None, dpi=dpi)


def trace_figures(trace: "CausalTrace", dpi: int = 100) -> dict[str, Figure]:
    """One layer-by-group recovery-rate heatmap per traced component.

    When the corruption barely moves the answer (``trace.weak``) the cells are
    grey (no value) and the title says why.

    Example:
        >>> trace_figures(result)["resid"].axes[0].get_title()[:12]
        'hidden state'
    """
    layers = [f"L{i}" for i in range(trace.n_layers)]
    figures = {}
    for component, matrix in trace.meaningful_recovery.items():
        title = f"{COMPONENT_TITLES.get(component, component)} restored · {trace.corruption.get('kind', '')}"
        if trace.weak:
            title += "\nno recovery rates: the corruption barely moves the answer"
        labels = [group.replace(" ", "\n") for group in trace.groups]  # two-line labels stay apart
        figures[component] = layer_grid_figure(matrix.numpy(), layers, labels, title, "recovery rate", dpi=dpi)
    return figures
