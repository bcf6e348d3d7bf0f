"""TokenLayout: provenance queries and scores to pixel heatmaps."""

import numpy as np
import pytest
import torch

from mmlens.layout import ImageInfo, Modality, TokenLayout, View
from mmlens.models.adapter import grid_tokens


def two_view_layout() -> TokenLayout:
    """One 8x8 image: a 2x2 global view, and one 2x2 tile covering its left half."""
    views = [View(2, 2, (0, 0, 8, 8), "global"), View(2, 2, (0, 0, 8, 4), "tile")]
    tokens = grid_tokens([1, 2, 3, 4], 0, 0, 2, 2) + grid_tokens([5, 6, 7, 8], 0, 1, 2, 2)
    return TokenLayout.build(10, [[ImageInfo((8, 8), views)]], [tokens], special=[[0]], pad=[[9]])


def test_modalities_and_positions():
    layout = two_view_layout()
    assert layout.mask(Modality.SPECIAL)[0].nonzero().flatten().tolist() == [0]
    assert layout.mask(Modality.PAD)[0].nonzero().flatten().tolist() == [9]
    assert layout.image_positions(0).tolist() == list(range(1, 9))
    assert layout.image_positions(0, view=1).tolist() == [5, 6, 7, 8]
    assert layout.text_positions(0).tolist() == []


def test_grid_places_scores_by_row_and_column():
    layout = two_view_layout()
    scores = torch.arange(10.0)
    np.testing.assert_array_equal(layout.grid(scores, view=1), [[5, 6], [7, 8]])


def test_heatmap_averages_overlapping_views():
    layout = two_view_layout()
    scores = torch.zeros(10)
    scores[1] = 4.0  # global top-left cell: pixels [0:4, 0:4]
    scores[5] = 2.0  # tile top-left cell: pixels [0:4, 0:2]
    heat = layout.to_heatmaps(scores)[0][0]
    assert heat.shape == (8, 8)
    assert heat[0, 0] == pytest.approx((4 + 2) / 2)  # both views cover it
    assert heat[0, 3] == pytest.approx((4 + 0) / 2)
    assert heat[0, 6] == pytest.approx(0.0)  # only the global view covers the right half
    only_global = layout.to_heatmaps(scores, views="global")[0][0]
    assert only_global[0, 0] == pytest.approx(4.0)


def test_heatmap_leaves_uncovered_pixels_nan():
    views = [View(1, 2, (0, 2, 4, 6))]  # a centre crop of a 4x8 image
    layout = TokenLayout.build(2, [[ImageInfo((4, 8), views)]], [grid_tokens([0, 1], 0, 0, 1, 2)])
    heat = layout.to_heatmaps(torch.tensor([1.0, 3.0]))[0][0]
    assert np.isnan(heat[:, :2]).all() and np.isnan(heat[:, 6:]).all()
    np.testing.assert_array_equal(heat[0, 2:6], [1, 1, 3, 3])


def test_token_boxes_follow_the_grid():
    boxes = two_view_layout().token_boxes(0)
    assert boxes[4] == (0, (4.0, 4.0, 8.0, 8.0))
    assert boxes[6] == (0, (0.0, 2.0, 4.0, 4.0))


def test_scores_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError):
        two_view_layout().to_heatmaps(torch.zeros(3))
