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

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
    figure = Figure(figsize=(6.0, 0.45 * len(rows) + 1.2), layout="constrained")
    ax = figure.add_subplot(1, 1, 1)
    colours = {"derivative": "tab:blue", "unrelated": "tab:red"}
    for y, row in enumerate(rows):
        low, high = row["interval"]
        colour = colours.get(row.get("group") or "", "tab:grey")
        ax.plot([low, high], [y, y], color=colour, linewidth=3, alpha=0.6)
        ax.plot([row["score"]], [y], "o", color=colour)
    ax.set_yticks(range(len(rows)), [suspect_label(r) for r in rows], fontsize=8)
    ax.set_xlabel("fingerprint score (95% bootstrap interval)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    groups = sorted({r.get("group") or "" for r in rows} - {""})
    if groups:  # the colours mean something only when groups were given
        ax.legend(handles=[Line2D([], [], color=colours.get(g, "tab:grey"), marker="o", linewidth=3, label=g)
                           for g in groups], fontsize=7, loc="best")
    return figure


def suspect_label(row: Mapping[str, Any]) -> str:
    """A suspect's name, with its group in parentheses only when it has one.

    Example:
        >>> suspect_label({"suspect": "a", "group": "derivative"}), suspect_label({"suspect": "b", "group": ""})
        ('a (derivative)', 'b')
    """
    group = row.get("group") or ""
    return f"{row['suspect']} ({group})" if group else str(row["suspect"])


R2_FLOOR = -2.0  # R² below this is drawn at the floor, with its value written beside it


def probe_accuracy_figure(curves: Mapping[str, Mapping[str, Any]], title: str = "probe accuracy by layer",
                          layers: Sequence[str] | None = None) -> Figure:
    """Score (solid) and control-task score (dashed) by layer, one colour per probe; accuracy and R² apart.

    ``curves[probe]`` holds ``accuracy`` (one value per layer), optionally
    ``control``, and optionally ``metric``: ``"r2"`` for regression probes
    (also recognised by an ``R^2``/``R²`` in the name). Classifiers share a
    "held-out accuracy" panel; regressions get their own "held-out R²" panel,
    whose axis goes below zero (a probe worse than predicting the mean) down to
    -2, lower values sitting on that floor with their value written.

    Example:
        >>> probe_accuracy_figure({"colour": {"accuracy": [0.5, 0.9], "control": [0.2, 0.3]}}).axes[0].get_ylabel()
        'held-out accuracy'
    """
    regress = {name for name, curve in curves.items() if _is_r2(name, curve)}
    panels = [(kind, names) for kind, names in (("accuracy", [n for n in curves if n not in regress]),
                                                ("R²", [n for n in curves if n in regress])) if names]
    figure = Figure(figsize=(8.4, 0.6 + 3.2 * len(panels)), layout="constrained")
    n = max(len(c["accuracy"]) for c in curves.values())
    for row, (kind, names) in enumerate(panels):
        ax = figure.add_subplot(len(panels), 1, row + 1)
        for name in names:
            k = list(curves).index(name)  # one colour per probe, whichever panel it is in
            label = _plain_name(name) if kind == "R²" else name
            for key, style, alpha, suffix in (("accuracy", "o-", 1.0, ""), ("control", "x--", 0.6, " (control task)")):
                values = curves[name].get(key)
                if values is not None:
                    _plot_scores(ax, np.asarray(values, dtype=float), style, f"C{k % 10}", alpha,
                                 label + suffix, floor=R2_FLOOR if kind == "R²" else None)
        ax.set_xticks(range(n), list(layers) if layers else [str(i) for i in range(n)], fontsize=8)
        ax.set_xlabel("site")
        ax.set_ylabel(f"held-out {kind}")
        ax.set_ylim(*_score_limits([curves[name] for name in names], kind))
        if kind == "R²":
            ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":", label="R² = 0: as good as the mean")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(title, fontsize=10)
    return figure


def _is_r2(name: str, curve: Mapping[str, Any]) -> bool:
    return curve.get("metric") == "r2" or "R^2" in name or "R²" in name


def _plain_name(name: str) -> str:
    """The probe's name without an ``(R^2)`` tag (its panel already says R²)."""
    return name.replace(" (R^2)", "").replace(" (R²)", "")


def _plot_scores(ax: Any, values: np.ndarray, style: str, colour: str, alpha: float, label: str,
                 floor: float | None) -> None:
    """One line; points below ``floor`` sit on it, marked with a down triangle and their value."""
    shown = values if floor is None else np.maximum(values, floor)
    ax.plot(range(len(values)), shown, style, color=colour, alpha=alpha, label=label)
    if floor is None:
        return
    for x, value in enumerate(values):
        if value < floor:
            ax.plot([x], [floor], "v", color=colour, alpha=alpha, markersize=8)
            ax.annotate(f"{value:.3g}", (x, floor), textcoords="offset points", xytext=(6, 2), fontsize=7,
                        color=colour)


def _score_limits(curves: Sequence[Mapping[str, Any]], kind: str) -> tuple[float, float]:
    """About 0 to 1 for accuracy; for R², from its lowest value (not below the floor) to 1, with a margin."""
    if kind != "R²":
        return -0.03, 1.03  # points at 0 and 1 stay whole
    values = [v for curve in curves for key in ("accuracy", "control") for v in (curve.get(key) or [])]
    low = max(min(values, default=0.0), R2_FLOOR)
    return (min(low, 0.0) - 0.08, 1.02)


def fingerprint_page(victim: str, rows: Sequence[Mapping[str, Any]], figures: Sequence[str],
                     folder: str | Path | None = None) -> str:
    """A small HTML page: the score table and the figures.

    With ``folder`` (where the ``figures`` were saved) every figure is
    embedded as a data URI, so the page stands alone; without it, figures are
    linked by relative path.

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
    images = "".join(f'<p><img src="{html.escape(_source(f, folder))}" alt="{html.escape(f)}"></p>' for f in figures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fingerprint of {html.escape(victim)}</title>"
            f"</head><body><h1>CKA fingerprint, victim {html.escape(victim)}</h1>"
            f"<p>Score: debiased linear CKA of last-token hidden states, mean over depth-matched layer pairs; "
            f"interval: 2.5-97.5 percentile of bootstrap resamples of the probe samples.</p>"
            f"<table border='1' cellpadding='4'>{head}{body}</table>{images}</body></html>")


def _source(name: str, folder: str | Path | None) -> str:
    """A figure's ``src``: its PNG as a data URI when it can be read from ``folder``, else its relative path."""
    path = None if folder is None else Path(folder) / name
    if path is None or not path.is_file():
        return name
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
