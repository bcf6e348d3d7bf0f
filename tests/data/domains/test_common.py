"""Shared pieces of the multi-domain world: splits, boxes, patch labels, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.data.domains import NAMES, make_sample
from mmlens.data.domains.common import box_mask, check_split, cover_labels, free
from mmlens.errors import MmlensError


def test_split_seeds_and_bad_input() -> None:
    assert check_split("train", 5) == 5 and check_split("test", 5) == 200_000_005
    with pytest.raises(MmlensError, match="unknown split"):
        check_split("dev", 0)
    with pytest.raises(MmlensError, match="index"):
        check_split("train", -1)
    with pytest.raises(MmlensError, match="unknown question type"):
        make_sample("cells", "test", 0, "colour")


def test_cover_labels_picks_the_region_covering_most() -> None:
    # region 1 covers the whole first patch, region 2 a quarter of it and all of the second
    labels = cover_labels([(box_mask(0, 0, 8, 8), 1), (box_mask(4, 0, 16, 8), 2)])
    assert labels[0, 0] == 1 and labels[0, 1] == 2 and labels[1, 0] == -1
    thin = cover_labels([(box_mask(0, 0, 8, 1), 0)])  # 8 of 64 pixels: under a quarter
    assert (thin == -1).all()


def test_free_keeps_the_gap() -> None:
    assert free((10, 10, 20, 20), [(0, 0, 8, 8)], 2)
    assert not free((10, 10, 20, 20), [(0, 0, 9, 9)], 2)


@pytest.mark.parametrize("domain", NAMES)
def test_every_domain_is_deterministic_and_held_out(domain: str) -> None:
    a, b = make_sample(domain, "test", 3), make_sample(domain, "test", 3)
    assert a.prompt == b.prompt and a.answer == b.answer and a.image.tobytes() == b.image.tobytes()
    train = [make_sample(domain, "train", i).image.tobytes() for i in range(20)]
    test = [make_sample(domain, "test", i).image.tobytes() for i in range(20)]
    assert not set(train) & set(test)


@pytest.mark.parametrize("domain", NAMES)
def test_boxes_masks_and_targets(domain: str) -> None:
    for i in range(40):
        s = make_sample(domain, "val", i)
        assert s.image.size == (64, 64) and s.image.mode == "RGB" and s.domain == domain
        assert s.prompt.startswith("<image> ") and s.answer
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(o.mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert all(0 <= t < len(s.objects) for t in s.target_objects)
        assert s.target_mask().sum() == sum(s.objects[t].area for t in s.target_objects) or domain == "maps"
