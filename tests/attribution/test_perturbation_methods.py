"""Occlusion and RISE against a direct edit of the whole model."""

import torch

import mmlens
from mmlens.attribution.occlusion import occlusion, rise
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
