"""Figures and a page for CKA fingerprints and linear probes.

Everything draws on a bare :class:`matplotlib.figure.Figure` (Agg, never
pyplot), as the rest of :mod:`mmlens.report` does.

Example:
    >>> import torch
    >>> figure = cka_matrix_figure({"linear": torch.eye(3)}, "a", "b")
    >>> len(figure.axes) >= 1
    True
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

KIND_TITLES = {"linear": "linear CKA", "rbf": "RBF CKA", "unbiased": "debiased linear CKA"}


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG at ``path``.

    Example:
        >>> save_figure(Figure(), "/tmp/mmlens-empty.png").suffix
        '.png'
    """
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def cka_matrix_figure(matrices: Mapping[str, torch.Tensor], victim: str, suspect: str) -> Figure:
    """One victim-layer x suspect-layer heatmap per CKA kind, side by side.

    Example:
        >>> cka_matrix_figure({"rbf": torch.rand(4, 2)}, "v", "s").axes[0].get_xlabel()
        's layer'
    """
    figure = Figure(figsize=(3.9 * len(matrices) + 0.6, 3.4), layout="constrained")
    for k, (kind, matrix) in enumerate(matrices.items()):
        ax = figure.add_subplot(1, len(matrices), k + 1)
        values = np.asarray(matrix, dtype=float)
        image = ax.imshow(values, vmin=min(0.0, values.min()), vmax=1.0, cmap="viridis", origin="lower")
        for (i, j), value in np.ndenumerate(values):
            if values.size <= 64:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
        step = max(1, values.shape[1] // 12), max(1, values.shape[0] // 12)  # at most ~12 labels an axis
        ax.set_xticks(range(0, values.shape[1], step[0]))
        ax.set_yticks(range(0, values.shape[0], step[1]))
        ax.set_title(KIND_TITLES.get(kind, kind), fontsize=9)
        ax.set_xlabel(f"{suspect} layer")
        ax.set_ylabel(f"{victim} layer")
        figure.colorbar(image, ax=ax, fraction=0.046)
    return figure


def score_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Each suspect's score with its interval (a bar from low to high), one row per suspect.

    ``rows`` carry ``suspect``, ``score``, ``interval`` and optionally ``group``
    (derivative, unrelated, ...), which sets the colour.

    Example:
        >>> score_figure([{"suspect": "b", "score": 0.5, "interval": [0.4, 0.6]}], "t").axes[0].get_title()
        't'
    """
    figure = Figure(figsize=(6.0, 0.45 * len(rows) + 1.2))
    ax = figure.add_subplot(1, 1, 1)
    colours = {"derivative": "tab:blue", "unrelated": "tab:red"}
    for y, row in enumerate(rows):
        low, high = row["interval"]
        colour = colours.get(row.get("group", ""), "tab:grey")
        ax.plot([low, high], [y, y], color=colour, linewidth=3, alpha=0.6)
        ax.plot([row["score"]], [y], "o", color=colour)
    ax.set_yticks(range(len(rows)), [f"{r['suspect']} ({r.get('group', '?')})" for r in rows], fontsize=8)
    ax.set_xlabel("fingerprint score (95% bootstrap interval)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    return figure


def probe_accuracy_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], title: str = "probe accuracy by layer",
                          layers: Sequence[str] | None = None) -> Figure:
    """Accuracy (solid) and control-task accuracy (dashed) by layer, one colour per probe.

    ``curves[probe]`` holds ``accuracy`` and optionally ``control``, one value per layer.

    Example:
        >>> probe_accuracy_figure({"colour": {"accuracy": [0.5, 0.9], "control": [0.2, 0.3]}}).axes[0].get_ylabel()
        'held-out accuracy'
    """
    figure = Figure(figsize=(8.4, 3.8), layout="constrained")
    ax = figure.add_subplot(1, 1, 1)
    for k, (name, curve) in enumerate(curves.items()):
        colour = f"C{k % 10}"
        xs = range(len(curve["accuracy"]))
        ax.plot(xs, curve["accuracy"], "o-", color=colour, label=name)
        if curve.get("control") is not None:
            ax.plot(xs, curve["control"], "x--", color=colour, alpha=0.6, label=f"{name} (control task)")
    n = max(len(c["accuracy"]) for c in curves.values())
    ax.set_xticks(range(n), list(layers) if layers else [str(i) for i in range(n)], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("site")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def fingerprint_page(victim: str, rows: Sequence[Mapping[str, Any]], figures: Sequence[str]) -> str:
    """A small HTML page: the score table and the saved figures (by relative path).

    Example:
        >>> "<table" in fingerprint_page("v", [{"suspect": "s", "probe_set": "off-task", "score": 1.0,
        ...     "interval": [1.0, 1.0], "samples": 4, "dropped": 0}], [])
        True
    """
    head = ("<tr><th>suspect</th><th>probe set</th><th>score</th><th>95% interval</th>"
            "<th>samples</th><th>dropped</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(str(r['suspect']))}</td><td>{html.escape(str(r['probe_set']))}</td>"
        f"<td>{r['score']:.3f}</td><td>{r['interval'][0]:.3f} - {r['interval'][1]:.3f}</td>"
        f"<td>{r['samples']}</td><td>{r['dropped']}</td></tr>" for r in rows)
    images = "".join(f'<p><img src="{html.escape(f)}" alt="{html.escape(f)}"></p>' for f in figures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fingerprint of {html.escape(victim)}</title>"
            f"</head><body><h1>CKA fingerprint, victim {html.escape(victim)}</h1>"
            f"<p>Score: debiased linear CKA of last-token hidden states, mean over depth-matched layer pairs; "
            f"interval: 2.5-97.5 percentile of bootstrap resamples of the probe samples.</p>"
            f"<table border='1' cellpadding='4'>{head}{body}</table>{images}</body></html>")
