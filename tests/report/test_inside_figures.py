"""Answer-emergence and knockout figures: whole-number rank ticks, a legend off the data, one colour rule."""

from __future__ import annotations

import pytest
import torch

from mmlens.lens.attention_flow import Knockout
from mmlens.report.inside import answer_emergence_figure, knockout_figure, rank_ticks
from tests.report.test_word_grid import GLOBAL, _lens


def _emergence(ranks: list[int], probs: list[float]):
    lens = _lens([GLOBAL], layers=len(ranks))
    lens.answer_rank = torch.tensor(ranks).reshape(-1, 1)
    lens.answer_prob = torch.tensor(probs).reshape(-1, 1)
    return answer_emergence_figure(lens)


@pytest.mark.parametrize("ranks", [[4, 1, 1, 1, 1], [1, 1, 1]])
def test_rank_axis_has_whole_number_ticks_including_every_rank_seen(ranks):
    figure = _emergence(ranks, [0.1] * (len(ranks) - 1) + [1.0])
    figure.canvas.draw()
    rank_axes = figure.axes[0]
    low, high = sorted(rank_axes.get_ylim())
    shown = [t.get_text() for t in rank_axes.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert all(text.isdigit() for text in shown) and "1" in shown
    assert str(max(ranks)) in shown  # the embed point at rank 4 has its own tick
    assert low >= 0.5  # nothing above rank 1


def test_legend_does_not_cover_the_probability_panel():
    figure = _emergence([4, 1, 1, 1, 1], [0.1, 0.5, 0.9, 0.99, 1.0])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    for axes in figure.axes:
        assert not legend.overlaps(axes.get_window_extent(renderer))


def test_rank_ticks():
    assert rank_ticks([4, 1]) == [1, 2, 4] and rank_ticks([1]) == [1]
    assert rank_ticks([30000, 1]) == [1, 10, 100, 1000, 10000, 30000]


@pytest.mark.parametrize("change", [[0.2, 0.1], [0.2, -0.1], [-3e-5, -1e-5]])
def test_knockout_uses_one_centred_diverging_map_and_no_offset_text(change):
    result = Knockout(model="fake", groups=["image", "object image"], window=1, window_starts=[0],
                      probability=torch.tensor(change).reshape(1, 2, 1) + 0.5, baseline=torch.tensor([0.5]),
                      answer_ids=torch.tensor([1]))
    figure = knockout_figure(result)
    figure.canvas.draw()
    grid, bar = figure.axes
    image = grid.images[0]
    assert image.get_cmap().name.startswith("RdBu_r")
    low, high = image.get_clim()
    assert low == pytest.approx(-high) and high > 0
    assert "white: 0" in bar.get_ylabel()
    assert bar.yaxis.get_offset_text().get_text() == ""
