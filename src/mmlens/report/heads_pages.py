"""Figures and the page of ``mmlens heads``: each layer x head grid as a heatmap, the strongest heads as a table.

Example:
    >>> import torch
    >>> from mmlens.causal.head_grid import HeadGrid
    >>> grid = HeadGrid("m", ["p"], ["red"], torch.tensor([3]), "knockout", {"ablation": "zero"}, "probability",
    ...                 torch.tensor([0.9]), None, torch.rand(1, 2, 4))
    >>> head_figure(grid).axes[0].images[0].get_array().shape
    (2, 4)
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from matplotlib.figure import Figure

from mmlens.report.figures import display_token, layer_grid_figure
from mmlens.report.files import save_json
from mmlens.report.inside_html import section_html, write_sections

if TYPE_CHECKING:
    from mmlens.causal.head_grid import HeadGrid

#: What each kind's grid measures, for titles and colour bars.
MEANINGS = {
    "knockout": "drop of the answer's {metric} when the head is ablated",
    "patching": "share of the clean-corrupt gap, head patched {direction}",
    "attribution": "estimated share of the gap (attribution patching, {direction})",
}


def describe(grid: "HeadGrid") -> str:
    """One line saying what the grid's cells are.

    Example:
        >>> describe(grid)
        "drop of the answer's probability when the head is ablated (zero)"
    """
    text = MEANINGS[grid.kind].format(metric=grid.metric, direction=grid.direction)
    where = "" if grid.tower == "lm" else " (vision tower)"
    where += "" if grid.positions == "all" else f" at {grid.positions}"
    if grid.kind == "knockout":
        return f"{text} ({grid.settings['ablation']}){where}"
    return f"{text}; metric: {grid.metric}{where}"


def head_figure(grid: "HeadGrid", dpi: int = 100) -> Figure:
    """The grid as a layer (rows) x head (columns) heatmap; grey cells: not computed, or a weak corruption.

    Example:
        >>> head_figure(grid).axes[0].get_ylabel() == ""
        True
    """
    effect = grid.effect.numpy()
    title = f"{grid.kind} · {describe(grid)}"
    if grid.weak:
        title += "\nno shares: the corruption barely moves the answer"
    layers = [f"{'vision ' if grid.tower == 'vision' else ''}L{i}" for i in range(effect.shape[0])]
    heads = [f"H{j}" for j in range(effect.shape[1])]
    unit = "metric drop" if grid.kind == "knockout" else "share of the gap"
    return layer_grid_figure(effect, layers, heads, _wrapped(title), unit, dpi=dpi)


def heads_section(grids: Mapping[str, "HeadGrid"], figures: Mapping[str, Figure]) -> str:
    """The HTML section of one ``mmlens heads`` run: facts, one heatmap per grid, the top heads of each.

    Example:
        >>> heads_section({"knockout": grid}, {"knockout": head_figure(grid)}).count("data:image/png")
        1
    """
    first = next(iter(grids.values()))
    facts = {"model": first.model, "prompt": first.prompts[0],
             "answer followed": display_token(first.answers[0]).strip(),
             f"{first.metric} clean": f"{float(first.clean[0]):.3f}",
             "heads": "vision tower" if first.tower == "vision" else "language model",
             "edited at": first.positions}
    for name, grid in grids.items():
        if grid.corrupt is not None:
            facts[f"{first.metric} corrupted"] = f"{float(grid.corrupt[0]):.3f}"
            facts["corruption"] = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in grid.settings["corruption"].items())
        if grid.warning:
            facts["warning"] = grid.warning
        facts[f"{name} seconds"] = f"{grid.seconds:.2f}"
    shown = [(describe(grid), figures[name]) for name, grid in grids.items()]
    rows = [[name, grid.head_name(layer, head), f"{value:+.3f}"] for name, grid in grids.items()
            for layer, head, value in grid.top(5)]
    rows += [[name, " + ".join(grid.head_name(l, h) for l, h in grid.group), f"{grid.group_effect:+.3f}"]
             for name, grid in grids.items() if grid.group]
    table = {"title": "strongest heads per grid (and the heads edited together, if any)",
             "columns": ["grid", "head", "effect"], "rows": rows}
    return section_html("attention heads", facts, shown, [table])


def write_heads_page(grids: Mapping[str, "HeadGrid"], folder: str | Path, title: str = "mmlens heads") -> Path:
    """Write ``heads.json``, ``heads_<grid>.png`` and ``heads.html`` into ``folder``; returns the page's path.

    Example:
        >>> write_heads_page({"knockout": grid}, "/tmp/heads").name
        'heads.html'
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {name: head_figure(grid) for name, grid in grids.items()}
    for name, figure in figures.items():
        figure.savefig(folder / f"heads_{name}.png", format="png")
    save_json({"grids": {name: grid.to_json() for name, grid in grids.items()}}, folder / "heads.json", "mmlens.Heads")
    return write_sections([heads_section(grids, figures)], folder / "heads.html", title=title)


def _wrapped(text: str, width: int = 42) -> str:
    """A long title over several lines at word boundaries: a 4-head grid is a narrow figure."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))
