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

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from mmlens.report.figures import display_token, layer_grid_figure
from mmlens.report.word_grid import lens_word_grid_figure as lens_word_grid_figure  # re-exported for the CLI

if TYPE_CHECKING:
    from mmlens.causal.tracing import CausalTrace
    from mmlens.lens.attention_flow import AttentionFlow, Knockout
    from mmlens.lens.logit_lens import LogitLens

COMPONENT_TITLES = {"resid": "hidden state", "attn": "attention output", "mlp": "MLP output"}


def answer_emergence_figure(lens: "LogitLens", rows: Sequence[int] | None = None, dpi: int = 100) -> Figure:
    """Rank (log scale, whole-number ticks) and probability of the answer token at the answer position, per layer.

    The legend (one line per row's answer) sits outside the panels, so it never hides a point.

    Example:
        >>> len(answer_emergence_figure(lens).axes)
        2
    """
    chosen = list(range(lens.answer_rank.shape[1])) if rows is None else list(rows)
    figure = Figure(figsize=(8.5, 3.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    rank_axes, prob_axes = figure.subplots(1, 2)
    x = np.arange(len(lens.layer_names))
    for b in chosen:
        label = display_token(lens.vocabulary[int(lens.answer_ids[b])]).strip()
        rank_axes.plot(x, lens.answer_rank[:, b].numpy(), marker="o", label=label)
        prob_axes.plot(x, lens.answer_prob[:, b].numpy(), marker="o", label=label)
    ranks = lens.answer_rank[:, chosen].flatten().tolist() or [1]
    rank_axes.set_yscale("log")
    rank_axes.yaxis.set_major_locator(FixedLocator(rank_ticks(ranks)))
    rank_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))
    rank_axes.yaxis.set_minor_locator(NullLocator())
    rank_axes.set_ylim(max(ranks) * 1.4 if max(ranks) > 1 else 2.0, 0.8)  # ranks start at 1: nothing above it
    rank_axes.set_ylabel("rank of the answer (1 = top)", fontsize=8)
    prob_axes.set_ylabel("probability of the answer", fontsize=8)
    prob_axes.set_ylim(-0.03, 1.05)  # points at 0 and 1 stay whole
    for axes in (rank_axes, prob_axes):
        axes.set_xticks(x, lens.layer_names, fontsize=7, rotation=45 if len(x) > 12 else 0)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    if len(chosen) <= 8:
        figure.legend(*prob_axes.get_legend_handles_labels(), loc="outside right upper", fontsize=7,
                      title="answer", title_fontsize=7)
    figure.suptitle("when does the answer emerge?", fontsize=10)
    return figure


def rank_ticks(ranks: Sequence[float], most: int = 8) -> list[int]:
    """Whole-number ticks for a log rank axis: 1, 2, 5, 10, 20, ... up to the largest rank, plus the ranks seen.

    The ranks seen are kept when there are few, so every point has a tick beside it.

    Example:
        >>> rank_ticks([4, 1, 1]), rank_ticks([1])
        ([1, 2, 4], [1])
    """
    top = max(1, int(max(ranks, default=1)))
    ticks = {m * 10 ** e for e in range(len(str(top)) + 1) for m in (1, 2, 5) if m * 10 ** e <= top}
    if len(ticks) > most:  # a long axis: powers of ten only
        ticks = {t for t in ticks if str(t).rstrip("0") == "1"}
    seen = {int(r) for r in ranks if r >= 1}
    if len(ticks | seen) <= most:
        ticks |= seen
    return sorted(ticks)


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

    Always on a diverging map centred on zero (the colour-bar label says so).

    Example:
        >>> knockout_figure(result).axes[0].get_title()
        'attention knockout from the answer position'
    """
    change = knockout.change.mean(-1).numpy()  # (windows, groups)
    w = knockout.window
    labels = [f"L{s}" if w == 1 else f"L{s}-L{s + w - 1}" for s in knockout.window_starts]
    # One rule for every input: diverging and centred on zero, whether the changes have one sign or both.
    return layer_grid_figure(change, labels, knockout.groups, "attention knockout from the answer position",
                             "change of P(answer)\n(red: rises, blue: falls, white: 0)", centred=True, dpi=dpi)


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
