"""Occlusion and RISE against a direct edit of the whole model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmlens
from mmlens.attribution import occlusion as occlusion_module
from mmlens.attribution.occlusion import occlusion, rise, smooth_masks_at
from mmlens.budget import row_bytes
from mmlens.errors import MmlensError
from mmlens.readout import image_baseline


def test_occlusion_equals_hiding_that_token_in_the_full_model(tiny_llava, targets):
    scores = occlusion(tiny_llava, targets).scores
    layout = targets.batch.layout
    position = int(layout.image_positions(0)[5])
    with torch.no_grad(), mmlens.capture(tiny_llava, "lm.embed") as captured:
        clean = tiny_llava.forward(targets.batch).logits
    baseline = image_baseline(layout, 0, captured["lm.embed"][:1])

    def hide(x):
        x = x.clone()
        x[0, position] = baseline[0, position]
        return x

    with torch.no_grad(), mmlens.intervene(tiny_llava, {"lm.embed": hide}):
        hidden = tiny_llava.forward(targets.batch).logits
    for j in range(2):
        drop = targets.scores(clean[:, targets.positions[j]], j) - targets.scores(hidden[:, targets.positions[j]], j)
        torch.testing.assert_close(scores[0, j, position], drop[0], rtol=1e-4, atol=1e-6)
    assert scores[0][:, layout.text_positions(0)].abs().sum() == 0


def test_occlusion_windows_share_a_score(tiny_llava, targets):
    scores = occlusion(tiny_llava, targets, window=2).scores[0, 0]
    layout = targets.batch.layout
    grid = layout.grid(scores, 0, 0, 0)
    assert (grid[0::2, 0::2] == grid[1::2, 1::2]).all()


def test_rise_is_seeded_and_covers_image_tokens(tiny_llava, targets):
    first = rise(tiny_llava, targets, masks=64, seed=3).scores
    again = rise(tiny_llava, targets, masks=64, seed=3).scores
    other = rise(tiny_llava, targets, masks=64, seed=4).scores
    assert torch.equal(first, again) and not torch.equal(first, other)
    image = targets.batch.layout.image_positions(0)
    assert first[0, 0, image].abs().sum() > 0
    assert first[0, 0, targets.batch.layout.text_positions(0)].abs().sum() == 0


def _one_variant(model, targets):
    """A budget of one masked variant per pass."""
    return row_bytes(model, targets.batch.input_ids.shape[1], positions=targets.count)


def test_occlusion_does_not_depend_on_the_memory_budget(tiny_llava, targets):
    small = occlusion(tiny_llava, targets, window=2, memory_budget=_one_variant(tiny_llava, targets)).scores
    large = occlusion(tiny_llava, targets, window=2, memory_budget="unlimited").scores
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-6)


def test_rise_does_not_depend_on_the_memory_budget(tiny_llava, targets):
    small = rise(tiny_llava, targets, masks=16, memory_budget=2 * _one_variant(tiny_llava, targets)).scores
    large = rise(tiny_llava, targets, masks=16, memory_budget="unlimited").scores
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-6)


def test_occlusion_windows_cut_the_passes(tiny_llava, targets, monkeypatch):
    seen = []
    original = occlusion_module._masked_scores

    def spy(call, targets_, row, x, base, hide, *rest):
        seen.append(hide.shape[0])
        return original(call, targets_, row, x, base, hide, *rest)

    monkeypatch.setattr(occlusion_module, "_masked_scores", spy)
    occlusion(tiny_llava, targets, window=1)
    first = len(seen)
    occlusion(tiny_llava, targets, window=2)
    image = len(targets.batch.layout.image_positions(0))
    assert seen[0] == image and seen[first] == image // 4  # 2 x 2 patches a variant


def test_too_small_a_budget_fails_before_any_work(tiny_llava, targets, monkeypatch):
    monkeypatch.setattr(occlusion_module, "record_decoder_call", lambda *a: pytest.fail("work was done"))
    for method in (occlusion, rise):
        with pytest.raises(MmlensError, match="too small for one row of .*needs at least"):
            method(tiny_llava, targets, memory_budget=100)
    with pytest.raises(MmlensError, match="window"):
        occlusion(tiny_llava, targets, window=0)


@pytest.mark.parametrize("size", [(64, 64), (50, 130), (672, 672), (37, 11)])
def test_rise_masks_read_at_points_equal_the_upsampled_masks_there(size):
    count, grid, keep = 16, 4, 0.5
    height, width = size
    # The masks whole, as RISE defines them: a random grid upsampled to grid + 1 cells, shifted, cropped.
    generator = torch.Generator().manual_seed(3)
    cell_h, cell_w = int(np.ceil(height / grid)), int(np.ceil(width / grid))
    coarse = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float()
    up = F.interpolate(coarse, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear", align_corners=False)
    shifts_y = torch.randint(0, cell_h, (count,), generator=generator)
    shifts_x = torch.randint(0, cell_w, (count,), generator=generator)
    whole = torch.stack([up[i, 0, sy:sy + height, sx:sx + width] for i, (sy, sx) in enumerate(zip(shifts_y, shifts_x))])
    points = torch.stack([torch.randint(0, height, (40,)), torch.randint(0, width, (40,))], 1)
    points[0], points[1] = torch.tensor([0, 0]), torch.tensor([height - 1, width - 1])
    read = smooth_masks_at(count, grid, keep, size, points, torch.Generator().manual_seed(3))
    torch.testing.assert_close(read, whole[:, points[:, 0], points[:, 1]], rtol=0, atol=2e-6)
