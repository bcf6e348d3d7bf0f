"""Tower sequences -> layout views at patch resolution, for every mapped family."""

from __future__ import annotations

import pytest

import mmlens
from mmlens.models.tower import fine_order, merge_factor, stream_order, tower_views
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


def test_unmapped_families_are_one_line():
    model = mmlens.load("tiny-llava-next")
    batch = model.prepare("<image> a ?", [noise_image(64, 64)])
    with pytest.raises(mmlens.MmlensError, match="llava_next: tower patches cannot be placed"):
        tower_views(model, batch)
