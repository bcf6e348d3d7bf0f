"""Pointing game and energy in box on synthetic heatmaps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.metrics import energy_in_box, pointing_game, region_mask

BOX = (20, 30, 40, 50)  # x0, y0, x1, y1: columns 20..39, rows 30..49


def peak(x: int, y: int, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    heatmap = np.zeros(shape)
    heatmap[y, x] = 1.0
    return heatmap


def test_pointing_inside_and_outside() -> None:
    assert pointing_game(peak(25, 35), [BOX], tolerance=0)
    assert not pointing_game(peak(70, 80), [BOX], tolerance=0)
    assert pointing_game(peak(70, 80), [(0, 0, 5, 5), (60, 70, 80, 90)], tolerance=0)  # any box


@pytest.mark.parametrize("tolerance", [0, 1, 15])
def test_pointing_tolerance_edges(tolerance: int) -> None:
    x0, y0, x1, y1 = BOX
    # x1 and y1 are exclusive: the last pixel inside is x1 - 1; tolerance adds that many pixels per side.
    xs = [(x0 - tolerance, True), (x0 - tolerance - 1, False), (x1 - 1 + tolerance, True), (x1 + tolerance, False)]
    ys = [(y0 - tolerance, True), (y0 - tolerance - 1, False), (y1 - 1 + tolerance, True), (y1 + tolerance, False)]
    for x, hit in xs:
        assert pointing_game(peak(x, 40), [BOX], tolerance) is hit, (x, tolerance)
    for y, hit in ys:
        assert pointing_game(peak(30, y), [BOX], tolerance) is hit, (y, tolerance)


def test_pointing_default_tolerance_is_15() -> None:
    assert pointing_game(peak(54, 40), [BOX])
    assert not pointing_game(peak(55, 40), [BOX])


def test_pointing_mask_agrees_with_box() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[30:50, 20:40] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y, tolerance = int(rng.integers(100)), int(rng.integers(100)), int(rng.integers(0, 20))
        assert pointing_game(peak(x, y), [BOX], tolerance) == pointing_game(peak(x, y), mask=mask, tolerance=tolerance)


def test_pointing_ignores_nan_and_handles_degenerate_maps() -> None:
    heatmap = peak(25, 35) * 0.5
    heatmap[:, 80:] = np.nan  # uncovered pixels (outside a centre crop)
    assert pointing_game(heatmap, [BOX], tolerance=0)
    assert not pointing_game(np.full((10, 10), np.nan), [(0, 0, 10, 10)])
    assert not pointing_game(np.ones((10, 10)), [(0, 0, 10, 10)])  # a constant map points nowhere


def test_pointing_tied_maxima_hit_when_any_is_inside() -> None:
    heatmap = np.zeros((100, 100))
    heatmap[30:34, 36:44] = 1.0  # one upsampled patch straddling the box's right edge
    assert pointing_game(heatmap, [BOX], tolerance=0)


def test_energy_known_shares() -> None:
    heatmap = np.zeros((100, 100))
    heatmap[35, 25] = 3.0  # inside
    heatmap[80, 80] = 1.0  # outside
    heatmap[36, 26] = -5.0  # negatives count as no mass
    heatmap[0, 0] = np.nan
    assert energy_in_box(heatmap, [BOX]) == pytest.approx(0.75)
    assert energy_in_box(heatmap, [BOX, BOX, (79, 79, 81, 81)]) == pytest.approx(1.0)  # a union, not a sum
    assert energy_in_box(np.ones((10, 10)), [(0, 0, 5, 10)]) == pytest.approx(0.5)


def test_energy_mask_and_empty_mass() -> None:
    heatmap = np.random.default_rng(1).random((40, 60))
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:15, 10:30] = True
    assert energy_in_box(heatmap, mask=mask) == pytest.approx(energy_in_box(heatmap, [(10, 5, 30, 15)]))
    assert np.isnan(energy_in_box(-np.ones((5, 5)), [(0, 0, 2, 2)]))


def test_region_mask_validates() -> None:
    with pytest.raises(MmlensError):
        region_mask((5, 5))
    with pytest.raises(MmlensError):
        region_mask((5, 5), [(0, 0, 1, 1)], mask=np.ones((5, 5), dtype=bool))
    with pytest.raises(MmlensError):
        region_mask((5, 5), mask=np.ones((4, 5), dtype=bool))
    with pytest.raises(MmlensError):
        region_mask((5, 5), [(3, 0, 1, 1)])


def test_pointing_on_layout_heatmap() -> None:
    # A 4x4 token grid over a centre crop of an 80-wide image; the peak token is (row 1, col 2).
    layout = TokenLayout.build(
        seq_len=17,
        images=[[ImageInfo(size=(64, 80), views=[View(rows=4, cols=4, box=Box(8.0, 0.0, 72.0, 64.0))])]],
        image_tokens=[[(1 + 4 * r + c, 0, 0, r, c) for r in range(4) for c in range(4)]],
    )
    scores = torch.zeros(17)
    scores[1 + 4 * 1 + 2] = 1.0
    heatmap = layout.to_heatmaps(scores)[0][0]
    assert np.isnan(heatmap[:, :8]).all()  # outside the crop
    box = layout.token_boxes(0)[7][1]  # row 1, column 2 of the crop: x from 40 to 56, y from 16 to 32
    assert box == Box(40.0, 16.0, 56.0, 32.0)
    assert pointing_game(heatmap, [box], tolerance=0)
    assert not pointing_game(heatmap, [box._replace(x0=box.x0 + 16, x1=box.x1 + 16)], tolerance=0)
    assert energy_in_box(heatmap, [box]) == pytest.approx(1.0)


def test_one_box_alone_counts_as_a_list_of_one() -> None:
    heatmap = np.zeros((20, 20))
    heatmap[5, 8] = 1.0
    box = Box(5, 2, 17, 14)
    assert pointing_game(heatmap, box, tolerance=0) == pointing_game(heatmap, [box], tolerance=0) is True
    assert energy_in_box(heatmap, (5, 2, 17, 14)) == energy_in_box(heatmap, [box]) == 1.0
    with pytest.raises(MmlensError, match="boxes are a list of Box"):
        pointing_game(heatmap, 5)
    with pytest.raises(MmlensError, match=r"a heatmap is \(height, width\)"):
        pointing_game(np.zeros((1, 20, 20)), [box])
