"""Figures and the page of steering and concept results: scale sweeps, per-layer curves, drift, before/after answers.

Figures draw on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no
pyplot); the page uses the section template of :mod:`mmlens.report.inside_html`.

Example:
    >>> rows = [{"layer": 0, "scale": s, "blue": s / 2} for s in (0.5, 1, 2)]
    >>> len(sweep_figure(rows, "answer").axes)
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmlens.report.inside_html import section_html, write_sections

#: Keys of a sweep row that name the setting rather than measure it.
SETTING_KEYS = ("layer", "layers", "min_cover", "scale")


def _figure(width: float, height: float, dpi: int = 100) -> Figure:
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def sweep_figure(rows: Sequence[Mapping[str, Any]], title: str, metrics: Sequence[str] | None = None) -> Figure:
    """One panel per measured key: the value against the scale, one line per setting (layer, patches).

    Example:
        >>> rows = [{"layer": l, "scale": s, "blue": s * l} for l in (0, 1) for s in (1, 2)]
        >>> len(sweep_figure(rows, "t").axes[0].lines)
        2
    """
    if not rows:
        raise ValueError("no sweep rows to draw")
    measured = list(metrics or [k for k, v in rows[0].items()
                                if k not in SETTING_KEYS and isinstance(v, (int, float)) and k != "mean_target"])
    figure = _figure(3.4 * len(measured), 3.0)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        label = ", ".join(f"{k} {row[k]}" for k in ("layer", "layers", "min_cover") if k in row)
        groups.setdefault(label, []).append(row)
    for i, key in enumerate(measured):
        axes = figure.add_subplot(1, len(measured), i + 1)
        for label, members in groups.items():
            members = sorted(members, key=lambda r: r["scale"])
            axes.plot([r["scale"] for r in members], [r[key] for r in members], marker="o", ms=3, label=label)
        axes.set_xlabel("scale", fontsize=9)
        axes.set_title(key, fontsize=9)
        axes.tick_params(labelsize=8)
        if i == 0:
            axes.legend(fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=10)
    return figure


def layer_figure(curves: Mapping[str, Sequence[float]], title: str, ylabel: str,
                 labels: Sequence[str] | None = None) -> Figure:
    """Lines by layer, one per named curve (e.g. the P(answer) drop for image and for text tokens).

    Example:
        >>> len(layer_figure({"image": [0.1, 0.2], "text": [0.3, 0.0]}, "t", "drop").axes[0].lines)
        2
    """
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot()
    for name, values in curves.items():
        axes.plot(range(len(values)), values, marker="o", label=name)
    n = max(len(v) for v in curves.values())
    axes.set_xticks(range(n), list(labels) if labels else [str(i) for i in range(n)], fontsize=8)
    axes.set_xlabel("layer", fontsize=9)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.axhline(0, color="#999", lw=0.5)
    axes.legend(fontsize=8, frameon=False)
    axes.set_title(title, fontsize=10)
    return figure


def drift_figure(steps: Sequence[int], distances: Mapping[str, Sequence[float]], title: str,
                 ylabel: str = "distance") -> Figure:
    """Per tracked concept, a distance along fine-tuning checkpoints.

    Example:
        >>> len(drift_figure([0, 5], {"red -> purple": [1.0, 0.2]}, "t").axes[0].lines)
        1
    """
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot()
    for name, values in distances.items():
        axes.plot(steps, values, marker="o", ms=3, label=name)
    axes.set_xlabel("fine-tuning step", fontsize=9)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.legend(fontsize=7, frameon=False)
    axes.set_title(title, fontsize=10)
    return figure


def tcav_figure(per_layer: Mapping[str, Sequence[Mapping[str, Any]]], title: str) -> Figure:
    """TCAV score by layer per concept (or per vector kind), significant layers filled.

    Example:
        >>> rows = [{"layer": 0, "score": 0.9, "significant": True}]
        >>> len(tcav_figure({"red": rows}, "t").axes[0].lines)
        1
    """
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot()
    for name, rows in per_layer.items():
        x = [r["layer"] for r in rows]
        y = [r["score"] for r in rows]
        (line,) = axes.plot(x, y, label=name)
        filled = [(a, b) for a, b, r in zip(x, y, rows) if r["significant"]]
        if filled:
            axes.scatter(*zip(*filled), color=line.get_color(), zorder=3)
        hollow = [(a, b) for a, b, r in zip(x, y, rows) if not r["significant"]]
        if hollow:
            axes.scatter(*zip(*hollow), facecolors="none", edgecolors=line.get_color(), zorder=3)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("layer (filled: significant)", fontsize=9)
    axes.set_ylabel("TCAV score", fontsize=9)
    axes.legend(fontsize=8, frameon=False)
    axes.set_title(title, fontsize=10)
    return figure


def steer_page(rows: Sequence[Mapping[str, Any]], facts: Mapping[str, Any], path: str | Path,
               figures: Sequence[tuple[str, Any]] = ()) -> Path:
    """An HTML page of before/after answers (one row per prompt) and the run's facts.

    Example:
        >>> steer_page([{"id": "a", "prompt": "p", "before": "red", "after": "blue"}], {"scale": 1},
        ...            "/tmp/steer.html").suffix
        '.html'
    """
    changed = sum(r["before"] != r["after"] for r in rows)
    table = {"title": f"answers before and after steering ({changed} of {len(rows)} changed)",
             "columns": ["id", "prompt", "before", "after"],
             "rows": [[r.get("id", i), r["prompt"], r["before"], r["after"]] for i, r in enumerate(rows)]}
    section = section_html("steering", facts=dict(facts), figures=list(figures), tables=[table])
    return write_sections([section], path, title="mmlens steer")


def top_samples(scores: np.ndarray, ids: Sequence[str], k: int = 5) -> list[str]:
    """The ids of the ``k`` highest scores (a concept's top samples).

    Example:
        >>> top_samples(np.array([0.1, 0.9, 0.5]), ["a", "b", "c"], k=2)
        ['b', 'c']
    """
    return [ids[i] for i in np.argsort(-np.asarray(scores))[:k]]
