"""The logit-lens word grid covers the whole image, fits its words, balances its rows and explains its shading."""

from __future__ import annotations

import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.lens.logit_lens import LogitLens
from mmlens.report.word_grid import abbreviate, covering_views, lens_word_grid_figure

WORDS = {0: "triangle", 1: "red", 2: "squares", 3: "circle", 4: "top"}
TILES = [View(2, 2, (0, 0, 40, 40), "tile"), View(2, 2, (40, 0, 80, 40), "tile")]
GLOBAL = View(2, 4, (0, 0, 80, 40), "global")


def _lens(views: list[View], layers: int = 2) -> LogitLens:
    """A hand-made lens over one 80x40 image whose views are ``views`` (ids cycle through WORDS)."""
    tokens, position = [], 1
    for v, view in enumerate(views):
        for r in range(view.rows):
            for c in range(view.cols):
                tokens.append((position, 0, v, r, c))
                position += 1
    seq = position + 1
    layout = TokenLayout.build(seq, [[ImageInfo((40, 80), list(views))]], [tokens])
    ids = torch.arange(layers * seq).reshape(layers, 1, seq, 1) % len(WORDS)
    probs = torch.linspace(0.05, 0.95, layers * seq).reshape(layers, 1, seq, 1)
    return LogitLens(model="fake", prompts=["<image> ?"], layer_names=["embed"] + [f"L{i}" for i in range(layers - 1)],
                     top_ids=ids, top_probs=probs, entropy=torch.zeros(layers, 1, seq),
                     answer_ids=torch.tensor([1]), answer_rank=torch.ones(layers, 1, dtype=torch.long),
                     answer_prob=torch.ones(layers, 1), position=seq - 1, layout=layout,
                     tokens=[["x"] * seq], vocabulary=WORDS)


def _cells(axes) -> list[tuple[float, float, float, float]]:
    return [(p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height())
            for p in axes.patches if isinstance(p, Rectangle)]


def _span(cells: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    return (min(c[0] for c in cells), min(c[1] for c in cells), max(c[2] for c in cells), max(c[3] for c in cells))


IMAGE = Image.new("RGB", (80, 40), "grey")


def test_default_grid_is_the_global_view_over_the_whole_image():
    figure = lens_word_grid_figure(_lens(TILES + [GLOBAL]), IMAGE)
    cells = _cells(figure.axes[0])
    assert len(cells) == 8  # the 2x4 global grid, not the 2x2 of tile 0
    assert _span(cells) == pytest.approx((0, 0, 80, 40))
    assert "global view" in figure.get_suptitle()


def test_tiles_without_a_global_view_are_each_drawn_at_their_box():
    assert covering_views(ImageInfo((40, 80), TILES)) == [0, 1]
    cells = _cells(lens_word_grid_figure(_lens(TILES), IMAGE).axes[0])
    assert len(cells) == 8 and _span(cells) == pytest.approx((0, 0, 80, 40))


def test_an_explicit_view_draws_only_that_view():
    cells = _cells(lens_word_grid_figure(_lens(TILES + [GLOBAL]), IMAGE, view=1).axes[0])
    assert len(cells) == 4 and _span(cells) == pytest.approx((40, 0, 80, 40))


def test_five_panels_make_balanced_rows_and_the_shading_has_a_colour_bar():
    figure = lens_word_grid_figure(_lens([GLOBAL], layers=5), IMAGE, columns=4)
    panels, bar = figure.axes[:-1], figure.axes[-1]
    tops = sorted({round(axes.get_position().y1, 3) for axes in panels}, reverse=True)
    assert [sum(round(a.get_position().y1, 3) == t for a in panels) for t in tops] == [3, 2]
    assert bar.get_ylabel() == "probability of the top-1 word"
    assert bar.get_ylim() == pytest.approx((0.0, 1.0))


def test_words_fit_their_cells_and_abbreviations_are_spelled_out():
    fine = View(8, 16, (0, 0, 80, 40), "image")  # cells of 5x5 pixels: "triangle" cannot fit at any legible size
    figure = lens_word_grid_figure(_lens([fine]), IMAGE)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    cell_px = axes.transData.transform((5, 0))[0] - axes.transData.transform((0, 0))[0]
    labels = [t for t in axes.texts if t.get_text()]
    assert labels and all(t.get_window_extent(renderer).width <= cell_px for t in labels)
    shown = {t.get_text() for t in labels}
    assert "triangle" not in shown
    legend = " ".join(t.get_text() for t in figure.texts)
    assert "= triangle" in legend and "= squares" in legend


def test_abbreviations_stay_distinct():
    short = abbreviate(["triangle", "triangles", "red"], 4)
    assert set(short) == {"triangle", "triangles"} and len(set(short.values())) == 2
    assert all(len(s) <= 4 for s in short.values())
