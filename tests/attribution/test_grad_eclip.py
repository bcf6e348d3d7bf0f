"""Grad-ECLIP in the vision tower: placement of tower patches on pixels, the map's algebra, every family, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.attribution.grad_eclip import _contribution, _spatial, grad_eclip, patch_heatmaps, tower_maps
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.models.tower import stream_order, tower_views
from mmlens.readout import build_targets
from tests.conftest import noise_image

PATCH = 14  # Qwen2-VL's patch side in pixels


def _first_layer_values(model: mmlens.Model, image: Image.Image) -> torch.Tensor:
    """Layer 0's value vectors of every tower token, ``(tokens, heads * head_dim)``, in the tower's own order."""
    seen = []
    attention = model.vision_layers[0].get_submodule(model.adapter.vision_attn)
    with runtime.attention_inputs(model.hf, attention, lambda q, k, v, mask, scale: seen.append(v[0])), \
            torch.no_grad():
        model.forward(model.prepare("<image> what colour ?", [image]))
    return torch.cat([v.transpose(0, 1).flatten(1) for v in seen])


# Image sizes that need no resize: Qwen2-VL 4 x 6 patches folded 2 x 2 into 2 x 3 tokens; Qwen2.5-VL 6 x 8
# patches whose 3 x 4 tokens its first layer sees as 2 x 2-token windows, permuted. Inside the tower the patches
# are merge-block-major, so a row-major placement would put (1, 2) at (0, 5)'s pixels.
@pytest.mark.parametrize("name, size, patch", [
    ("tiny-qwen2-vl", (56, 84), (1, 2)), ("tiny-qwen2-vl", (56, 84), (3, 5)), ("tiny-qwen2-vl", (56, 84), (0, 3)),
    ("tiny-qwen2.5-vl", (84, 112), (1, 2)), ("tiny-qwen2.5-vl", (84, 112), (4, 7)),
])
def test_qwen_patch_map_moves_only_where_the_perturbed_patch_is(name, size, patch):
    model = mmlens.load(name)
    clean = noise_image(*size, seed=3)
    pixels = np.array(clean)
    r, c = patch
    rows, cols = slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH)
    pixels[rows, cols] = 255 - pixels[rows, cols]
    moved = (_first_layer_values(model, Image.fromarray(pixels)) - _first_layer_values(model, clean)).norm(dim=-1)
    assert int((moved > 1e-6).sum()) == 1  # one patch in, one tower token out
    batch = model.prepare("<image> what colour ?", [clean])
    order = stream_order(model, batch)
    if order is not None:  # back to image order
        moved = torch.empty_like(moved).index_copy_(0, order, moved)
    (view,) = tower_views(model, batch)
    grid = moved[view.tokens]  # the vision-patch map of the change
    assert grid.shape == (size[0] // PATCH, size[1] // PATCH) and int((grid > 1e-6).sum()) == 1
    assert divmod(int(grid.argmax()), grid.shape[1]) == patch
    painted = patch_heatmaps(batch.layout, grid[None], view.merge)[0]
    expected = np.zeros(size, dtype=bool)
    expected[rows, cols] = True
    np.testing.assert_array_equal(painted > 1e-6, expected)  # the map lands exactly on the perturbed pixels


def test_with_softmax_weights_the_map_before_relu_sums_to_the_first_order_effect():
    torch.manual_seed(0)
    q, k, v, g = (torch.randn(3, 7, 5) for _ in range(4))
    weights = _spatial(q, k, None, 0.5, "softmax")
    total = _contribution(weights, g, v, "all").sum()
    output = weights @ v  # the heads' outputs
    torch.testing.assert_close(total, (g * output).sum())
    pooled = _contribution(weights, g, v, "pooled")
    assert pooled.shape == (7,)
    relu = _spatial(q, k, None, 0.5, "relu")
    assert bool((relu >= 0).all()) and torch.allclose(relu.sum(-1)[relu.sum(-1) > 0], torch.tensor(1.0))
    cosine = _spatial(q, k, None, 0.5, "cosine")
    assert float(cosine.amin()) == 0.0 and float(cosine.amax()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-idefics3", "tiny-paligemma"])
def test_every_family_scores_image_tokens_with_the_sum_of_their_patches(name):
    model = mmlens.load(name)
    batch = model.prepare(["<image> what colour ?", "<image> what ?"], [[noise_image(64, 64)], [noise_image(80, 48, 1)]])
    targets = build_targets(model, batch, answer=["red", "blue"])
    result = grad_eclip(model, targets)
    grids = result.extras["patch_grids"]
    assert result.scores.shape == targets.batch.input_ids.shape[:1] + (1, targets.batch.input_ids.shape[1])
    image = batch.layout.mask(Modality.IMAGE)
    assert bool((result.scores[:, 0][~image] == 0).all()) and bool((result.scores >= 0).all())
    assert float(result.scores.sum()) > 0
    merge = result.extras["merge"]
    views = tower_views(model, batch)
    for view in views:
        slot = [v for v in views if v.row == view.row].index(view)
        positions = batch.layout.image_positions(view.row, view.image, view.view)
        r, c = batch.layout.row[view.row, positions[0]], batch.layout.col[view.row, positions[0]]
        block = grids[view.row, 0, slot, r * merge:(r + 1) * merge, c * merge:(c + 1) * merge]
        assert float(result.scores[view.row, 0, positions[0]]) == pytest.approx(float(block.sum()), rel=1e-5)


def test_the_default_layer_is_the_last_that_reaches_the_answer(tiny_llava):
    # tiny-llava reads the tower's second-to-last layer: the last one's attention cannot move the answer.
    batch = tiny_llava.prepare("<image> what colour ?", [noise_image(64, 64)])
    targets = build_targets(tiny_llava, batch, answer="red")
    maps = tower_maps(tiny_llava, targets)
    assert maps.reached == [0] and grad_eclip(tiny_llava, targets).extras["layer"] == 0


def test_frozen_weights_still_give_a_map(tiny_llava):
    batch = tiny_llava.prepare("<image> what colour ?", [noise_image(64, 64)])
    targets = build_targets(tiny_llava, batch, answer="red")
    before = grad_eclip(tiny_llava, targets).scores
    flags = [p.requires_grad for p in tiny_llava.hf.parameters()]
    try:
        for p in tiny_llava.hf.parameters():
            p.requires_grad_(False)
        torch.testing.assert_close(grad_eclip(tiny_llava, targets).scores, before)
    finally:
        for p, flag in zip(tiny_llava.hf.parameters(), flags):
            p.requires_grad_(flag)


def test_explain_runs_it_by_name(tiny_llava):
    explanation = mmlens.explain(tiny_llava, "<image> what colour ?", [noise_image(64, 64)], methods=["grad_eclip"],
                                 answer="red")
    assert explanation.to_json()["methods"]["grad_eclip"]["extras"]["layer"] == 0


@pytest.mark.parametrize("name, message", [
    ("tiny-llama", "has no vision tower"),
    ("tiny-llava-next", "cannot be placed on the image yet"),
])
def test_families_without_a_mapped_tower_are_one_line(name, message):
    model = mmlens.load(name)
    images = [] if name == "tiny-llama" else [noise_image(64, 64)]
    prompt = "a red circle" if name == "tiny-llama" else "<image> what colour ?"
    targets = build_targets(model, model.prepare(prompt, images), answer="red")
    with pytest.raises(mmlens.MmlensError, match=message) as error:
        grad_eclip(model, targets)
    assert "\n" not in str(error.value)


def test_bad_options_are_one_line(tiny_llava):
    targets = build_targets(tiny_llava, tiny_llava.prepare("<image> what ?", [noise_image(64, 64)]), answer="red")
    with pytest.raises(mmlens.MmlensError, match="the tower has 2 layers"):
        grad_eclip(tiny_llava, targets, layer=5)
    with pytest.raises(mmlens.MmlensError, match="unknown spatial weighting"):
        grad_eclip(tiny_llava, targets, spatial="sigmoid")
    with pytest.raises(mmlens.MmlensError, match="unknown query pooling"):
        grad_eclip(tiny_llava, targets, queries="cls")
