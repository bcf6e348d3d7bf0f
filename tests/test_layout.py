"""TokenLayout: provenance queries and scores to pixel heatmaps."""

import numpy as np
import pytest
import torch

import mmlens
from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, Modality, TokenLayout, View
from mmlens.models.adapter import grid_tokens
from tests.conftest import noise_image


def two_view_layout() -> TokenLayout:
    """One 8x8 image: a 2x2 global view, and one 2x2 tile covering its left half."""
    views = [View(2, 2, Box(0, 0, 8, 8), "global"), View(2, 2, Box(0, 0, 4, 8), "tile")]
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
    views = [View(1, 2, Box(2, 0, 6, 4))]  # a centre crop of a 4x8 (height x width) image
    layout = TokenLayout.build(2, [[ImageInfo((4, 8), views)]], [grid_tokens([0, 1], 0, 0, 1, 2)])
    heat = layout.to_heatmaps(torch.tensor([1.0, 3.0]))[0][0]
    assert np.isnan(heat[:, :2]).all() and np.isnan(heat[:, 6:]).all()
    np.testing.assert_array_equal(heat[0, 2:6], [1, 1, 3, 3])


def test_token_boxes_follow_the_grid():
    boxes = two_view_layout().token_boxes(0)
    assert boxes[4] == (0, Box(4.0, 4.0, 8.0, 8.0))
    assert boxes[6] == (0, Box(2.0, 0.0, 4.0, 4.0))  # the tile's row 0, column 1: x from 2 to 4, y from 0 to 4
    assert all(isinstance(box, Box) for _, box in boxes.values())


def test_views_store_a_box():
    view = View(1, 1, (1, 2, 3, 4))
    assert isinstance(view.box, Box) and view.box == Box(1, 2, 3, 4)
    with pytest.raises(mmlens.MmlensError):
        View(1, 1, (8, 0, 0, 8))  # x1 < x0


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_boxes_run_x_along_the_width_of_a_non_square_image(name):
    """On a 64 high x 96 wide image, views span x over the width and y over the height; heatmaps are (H, W)."""
    height, width = 64, 96
    model = mmlens.load(name)
    layout = model.prepare("<image> what is this ?", [noise_image(height, width)]).layout
    views = layout.images[0][0].views
    assert all(isinstance(view.box, Box) for view in views)
    boxes = [box for _, box in layout.token_boxes(0).values()]
    assert all(isinstance(box, Box) for box in boxes)
    x0, y0 = min(box.x0 for box in boxes), min(box.y0 for box in boxes)
    x1, y1 = max(box.x1 for box in boxes), max(box.y1 for box in boxes)
    if name == "tiny-qwen2-vl":  # resized whole: the view is the image
        assert views[0].box == Box(0.0, 0.0, float(width), float(height))
        assert (x0, y0, x1, y1) == pytest.approx(Box(0, 0, width, height))
    else:  # LLaVA centre-crops the short side's square: all rows, the middle 64 columns
        assert views[0].box == pytest.approx(Box(16.0, 0.0, 80.0, 64.0))
        assert (x0, y0, x1, y1) == pytest.approx((16.0, 0.0, 80.0, 64.0))
    described = layout.describe(0)["images"][0]
    assert described["size"] == [height, width]
    assert described["views"][0]["box"] == [round(v, 2) for v in views[0].box]
    scores = torch.zeros(layout.seq_len)
    rightmost = max(layout.token_boxes(0).items(), key=lambda item: (item[1][1].x1, -item[1][1].y0))[0]
    scores[rightmost] = 1.0  # the top-right patch
    heat = layout.to_heatmaps(scores)[0][0]
    assert heat.shape == (height, width)
    box = layout.token_boxes(0)[rightmost][1]
    hot = np.argwhere(np.nan_to_num(heat) > 0)
    assert hot[:, 1].max() == int(np.ceil(box.x1)) - 1 and hot[:, 0].min() == int(box.y0)  # right edge, top rows
    assert np.array_equal(np.nan_to_num(heat) > 0, box.mask((height, width)))


def test_scores_of_the_wrong_shape_are_refused():
    with pytest.raises(MmlensError, match="one score per token"):
        two_view_layout().to_heatmaps(torch.zeros(3))


def test_bad_views_rows_and_modalities_are_one_line():
    layout = two_view_layout()
    with pytest.raises(MmlensError, match="unknown views 'base'; choose one of all, global, tile"):
        layout.to_heatmaps(torch.zeros(layout.seq_len), views="base")
    for read in (layout.describe, layout.image_positions, layout.text_positions, layout.cells):
        with pytest.raises(MmlensError, match="row 5 is out of range for a batch of 1 row"):
            read(5)
    assert torch.equal(layout.mask("image"), layout.mask(Modality.IMAGE))
    with pytest.raises(MmlensError, match="unknown modality 'images'; choose one of pad, text, image, special"):
        layout.mask("images")


def test_patch_cells_place_every_image_token_of_a_tiled_layout_once():
    model = mmlens.load("tiny-llava-next")
    layout = model.prepare("<image> hi", [noise_image(60, 90)]).layout
    cells = layout.cells(0)
    scores = np.random.default_rng(0).normal(size=layout.seq_len)
    seen = []
    for i, views in enumerate(cells.views):
        for v in range(len(views)):
            positions, grid = cells.positions(i, v), cells.grid(scores, i, v)
            placed = positions[positions >= 0]
            seen += placed.tolist()
            assert np.array_equal(grid[positions >= 0], scores[placed].astype(np.float32))
            assert np.isnan(grid[positions < 0]).all()
    assert sorted(seen) == layout.image_positions(0).tolist()
    image = layout.image_positions(0).numpy()
    assert cells.top(scores)["position"] == int(image[scores[image].argmax()])
    assert cells.top(np.full(layout.seq_len, np.nan)) is None
