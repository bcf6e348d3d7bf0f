"""Tower sequences -> layout views at patch resolution, for every mapped family."""

from __future__ import annotations

import pytest
import torch

import mmlens
from mmlens.models.tower import (TowerView, area_weights, fine_order, merge_factor, stream_order, tower_views,
                                 view_indices)
from tests.conftest import noise_image


def test_fine_order_folds_merge_blocks_the_way_the_merger_reads_them():
    assert fine_order(2, 3, 2, "blocks")[:2, :2].flatten().tolist() == [0, 1, 2, 3]  # one merged token
    assert fine_order(2, 3, 2, "blocks")[2, 0].item() == 12  # first patch of the second token row
    assert fine_order(2, 3, 1, "rows").flatten().tolist() == list(range(6))


@pytest.mark.parametrize("name, merge", [("tiny-llava", 1), ("tiny-paligemma", 1), ("tiny-qwen2-vl", 2),
                                         ("tiny-qwen2.5-vl", 2), ("tiny-idefics3", 2)])
def test_every_view_of_every_image_is_one_tower_sequence_in_batch_order(name, merge):
    model = mmlens.load(name)
    batch = model.prepare(["<image> a ?", "<image> <image> b ?"],
                          [[noise_image(64, 64)], [noise_image(120, 200, 1), noise_image(64, 64, 2)]])
    views = tower_views(model, batch)
    expected = [(b, i, v) for b, images in enumerate(batch.layout.images) for i, info in enumerate(images)
                for v in range(len(info.views))]
    assert [(v.row, v.image, v.view) for v in views] == expected
    assert [v.sequence for v in views] == list(range(len(views)))
    assert merge_factor(model) == merge and all(v.merge == merge for v in views)
    for view in views:
        grid = batch.layout.images[view.row][view.image].views[view.view]
        assert tuple(view.tokens.shape) == (grid.rows * merge, grid.cols * merge)
    assert (stream_order(model, batch) is None) == (name != "tiny-qwen2.5-vl")


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-llava-onevision"])
def test_anyres_views_span_the_tiles_and_skip_unpadded_patches(name):
    # 64x64: 2x2 tiles, nothing unpadded. 16x64: 1x2 tiles of 4x4 patches stitched to 4x8, rows 0 and 3 unpadded.
    model = mmlens.load(name)
    batch = model.prepare(["<image> a ?", "<image> b ?"], [[noise_image(64, 64)], [noise_image(16, 64, 1)]])
    views = tower_views(model, batch)
    assert [(v.row, v.view, v.sequence, v.sequences, v.per_sequence) for v in views] == [
        (0, 0, 0, 1, 16), (0, 1, 1, 4, 16), (1, 0, 5, 1, 16), (1, 1, 6, 2, 16)]
    square, wide = views[1].tokens, views[3].tokens
    assert square[4, 4].item() == 3 * 16  # first patch of the bottom-right tile (tiles are row-major)
    assert square[3, 5].item() == 16 + 3 * 4 + 1  # top-right tile, its patch (3, 1)
    assert tuple(wide.shape) == (2, 8) and wide[0, :5].tolist() == [4, 5, 6, 7, 20]  # stitched row 1, second tile
    # CLIP (NeXT) puts a CLS before each tile's patches, SigLIP (OneVision) none: the stream index skips it.
    lead = 1 if name == "tiny-llava-next" else 0
    index = view_indices(views, [16 + lead] * 8)
    assert index[1][4, 4].item() == 1 * (16 + lead) + 3 * (16 + lead) + lead
    assert index[3][0, 4].item() == 7 * (16 + lead) + lead + 4


def test_a_tall_image_unpads_columns():
    model = mmlens.load("tiny-llava-next")
    batch = model.prepare("<image> a ?", [noise_image(64, 16)])  # 2x1 tiles: 8x4 patches, columns 0 and 3 dropped
    hires = tower_views(model, batch)[1]
    assert tuple(hires.tokens.shape) == (8, 2) and hires.tokens[:, 0].tolist() == [1, 5, 9, 13, 17, 21, 25, 29]


def test_view_indices_check_each_sequence_holds_its_patches():
    view = TowerView(0, 0, 0, 0, torch.arange(4).view(2, 2), 1, sequences=2, patches=2)
    assert view_indices([view], [3, 3])[0].tolist() == [[1, 2], [4, 5]]
    with pytest.raises(mmlens.MmlensError, match="a tower sequence of 1 tokens for 2 patches"):
        view_indices([view], [3, 1])


def test_area_weights_sum_merge_blocks_and_share_cells_by_overlap():
    assert area_weights(4, 2).tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    shared = area_weights(5, 2)
    torch.testing.assert_close(shared.sum(0), torch.ones(5))  # every fine cell counted once
    assert shared[:, 2].tolist() == [0.5, 0.5]


def test_a_text_only_model_is_one_line(tiny_llama):
    batch = tiny_llama.prepare("a red circle", [])
    with pytest.raises(mmlens.MmlensError, match="has no vision tower") as error:
        tower_views(tiny_llama, batch)
    assert "\n" not in str(error.value)
