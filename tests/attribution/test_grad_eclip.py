"""Grad-ECLIP in the vision tower: placement of tower patches on pixels, the map's algebra, every family, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
import mmlens.attribution.grad_eclip as grad_eclip_module
from mmlens.attribution.grad_eclip import _contributions, _spatial, grad_eclip, patch_heatmaps, tower_maps
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.models.tower import stream_order, tower_views, view_indices
from mmlens.readout import build_targets
from tests.conftest import noise_image

PATCH = 14  # Qwen2-VL's patch side in pixels


def _first_layer_values(model: mmlens.Model, image: Image.Image) -> tuple[torch.Tensor, list[int]]:
    """Layer 0's value vectors of every tower token, ``(tokens, heads * head_dim)``, in the tower's own order.

    Also the length of each attention sequence (an image, a window, a tile), in that order.
    """
    seen = []
    attention = model.vision_layers[0].get_submodule(model.adapter.vision_attn)
    with runtime.attention_inputs(model.hf, attention, lambda q, k, v, mask, scale: seen.extend(v)), torch.no_grad():
        model.forward(model.prepare("<image> what colour ?", [image]))
    return torch.cat([v.transpose(0, 1).flatten(1) for v in seen]), [v.shape[1] for v in seen]


def _inverted(image: Image.Image, rows: slice, cols: slice) -> Image.Image:
    pixels = np.array(image)
    pixels[rows, cols] = 255 - pixels[rows, cols]
    return Image.fromarray(pixels)


def _stacked(*grids: torch.Tensor) -> torch.Tensor:
    """Grids of different shapes as one ``(views, R, C)`` tensor, NaN-padded as ``patch_grids`` are."""
    out = torch.full((len(grids), max(g.shape[0] for g in grids), max(g.shape[1] for g in grids)), float("nan"))
    for k, grid in enumerate(grids):
        out[k, : grid.shape[0], : grid.shape[1]] = grid
    return out


def _region(size: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    region = np.zeros(size, dtype=bool)
    region[rows, cols] = True
    return region


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
    r, c = patch
    rows, cols = slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH)
    moved = (_first_layer_values(model, _inverted(clean, rows, cols))[0] - _first_layer_values(model, clean)[0])
    moved = moved.norm(dim=-1)
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
    np.testing.assert_array_equal(painted > 1e-6, _region(size, rows, cols))  # exactly on the perturbed pixels


# LLaVA-NeXT / OneVision tiles are 32 px of 8 px patches, and these sizes need no resize onto their pinpoint:
# 64x64 is 2x2 tiles; 16x64 is pasted 8 rows down a 32x64 canvas (1x2 tiles) and unpadded to stitched rows
# 1..2; 64x16 the same in columns. ``patch`` is the inverted 8 px patch of the image, ``cell`` where it sits in
# the unpadded tile grid: the bottom-right tile (64x64), the second tile (16x64), the second tile row (64x16).
ANYRES = [((64, 64), (5, 6), (5, 6)), ((16, 64), (1, 5), (1, 5)), ((64, 16), (5, 1), (5, 1))]


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-llava-onevision"])
@pytest.mark.parametrize("size, patch, cell", ANYRES)
def test_anyres_tile_patch_map_moves_where_the_perturbed_patch_is(name, size, patch, cell):
    model = mmlens.load(name)
    clean = noise_image(*size, seed=3)
    rows, cols = slice(patch[0] * 8, patch[0] * 8 + 8), slice(patch[1] * 8, patch[1] * 8 + 8)
    perturbed, lengths = _first_layer_values(model, _inverted(clean, rows, cols))
    moved = (perturbed - _first_layer_values(model, clean)[0]).norm(dim=-1)
    batch = model.prepare("<image> what colour ?", [clean])
    views = tower_views(model, batch)
    base, tiles = (moved[index] for index in view_indices(views, lengths))
    # One patch in, one tile token out (a CLS, if any, and every other tile untouched), at the right cell.
    assert int((moved > 1e-6).sum()) == int((tiles > 1e-6).sum()) + int((base > 1e-6).sum())
    assert int((tiles > 1e-6).sum()) == 1 and divmod(int(tiles.argmax()), tiles.shape[1]) == cell
    region = _region(size, rows, cols)
    only_tiles = patch_heatmaps(batch.layout, _stacked(torch.zeros_like(base), tiles), 1)[0]
    np.testing.assert_array_equal(only_tiles > 1e-6, region)  # the tile view lands exactly on those pixels
    # The base view sees the image squashed to one tile: the resize spreads the change over a few base
    # patches. Both views averaged, the change is still largest on the perturbed pixels.
    both = patch_heatmaps(batch.layout, _stacked(base, tiles), 1)[0]
    assert both.shape == size and bool(np.isfinite(both).all()) and bool(region.flat[both.argmax()])


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-llava-onevision"])
def test_anyres_grad_eclip_map_covers_the_image_and_responds_near_the_perturbed_patch(name):
    model = mmlens.load(name)
    size, rows, cols = (16, 64), slice(8, 16), slice(40, 48)
    clean = noise_image(*size, seed=3)
    heat = []
    for image in (clean, _inverted(clean, rows, cols)):
        batch = model.prepare("<image> what colour ?", [image])
        extras = grad_eclip(model, build_targets(model, batch, answer="red")).extras
        heat.append(patch_heatmaps(batch.layout, extras["patch_grids"][0, 0], 1, 0, extras["patch_shapes"][0])[0])
        assert heat[-1].shape == size and bool(np.isfinite(heat[-1]).all()) and float(heat[-1].max()) > 0
    # Observed on these fixed tiny weights, not a theorem: attention spreads the change over every patch, yet
    # per pixel the perturbed patch's region moves more on average than the rest of the image.
    change, region = np.abs(heat[1] - heat[0]), _region(size, rows, cols)
    assert change[region].mean() > change[~region].mean()


def test_onevision_shrunk_tile_view_keeps_patch_resolution_and_the_scores_total():
    model = mmlens.load("tiny-llava-onevision")
    model.hf.config.vision_aspect_ratio = model.processor.vision_aspect_ratio = "anyres_max_1"
    try:
        batch = model.prepare("<image> what colour ?", [noise_image(64, 64)])
        result = grad_eclip(model, build_targets(model, batch, answer="red"))
    finally:
        model.hf.config.vision_aspect_ratio = model.processor.vision_aspect_ratio = "anyres_max_9"
    assert batch.layout.images[0][0].views[1].rows == 4  # the decoder sees 8x8 tile patches shrunk to 4x4
    assert result.extras["patch_shapes"] == [[[4, 4], [8, 8]]]
    grids, scores = result.extras["patch_grids"][0, 0], result.scores[0, 0]
    tiles = batch.layout.image_positions(0, 0, 1)
    assert float(scores[tiles].sum()) == pytest.approx(float(grids[1].sum()), rel=1e-5)  # shared, not dropped
    first = grids[1, :2, :2].sum()  # bilinear at exactly 2x reads each 2x2 block: the fold is the block sum
    assert float(scores[tiles[0]]) == pytest.approx(float(first), rel=1e-5)
    heat = patch_heatmaps(batch.layout, grids, 1, 0, result.extras["patch_shapes"][0])[0]
    assert heat.shape == (64, 64) and bool(np.isfinite(heat).all())


def test_with_softmax_weights_the_map_before_relu_sums_to_the_first_order_effect():
    torch.manual_seed(0)
    q, k, v, g = (torch.randn(3, 7, 5) for _ in range(4))
    weights = _spatial(q, k, None, 0.5, "softmax")
    total = _contributions(q, k, v, None, 0.5, "softmax", "all", [g]).sum()
    output = weights @ v  # the heads' outputs
    torch.testing.assert_close(total, (g * output).sum())
    pooled = _contributions(q, k, v, None, 0.5, "softmax", "pooled", [g, None])
    assert pooled.shape == (2, 7) and not pooled[1].any()
    relu = _spatial(q, k, None, 0.5, "relu")
    assert bool((relu >= 0).all()) and torch.allclose(relu.sum(-1)[relu.sum(-1) > 0], torch.tensor(1.0))
    cosine = _spatial(q, k, None, 0.5, "cosine")
    assert float(cosine.amin()) == 0.0 and float(cosine.amax()) == pytest.approx(1.0)


@pytest.mark.parametrize("spatial", ["relu", "cosine", "softmax"])
def test_query_rows_taken_a_block_at_a_time_give_the_whole_sums(spatial, monkeypatch):
    torch.manual_seed(1)
    q, k, v, g = (torch.randn(3, 9, 4) for _ in range(4))
    mask = torch.rand(1, 9, 9) > 0.3  # a bool mask per query row, as a padded tower's
    mask[..., 0] = True
    weights = _spatial(q, k, mask, 0.5, spatial)  # the whole (heads, queries, keys) tensor, for reference
    whole = (weights * (g @ v.transpose(1, 2))).sum((0, 1))
    pooled = (weights.mean(1) * (v @ g.sum(1)[..., None])[..., 0]).sum(0)
    monkeypatch.setattr(grad_eclip_module, "_CHUNK_ELEMENTS", 3 * 9 * 2)  # two query rows a block
    torch.testing.assert_close(_contributions(q, k, v, mask, 0.5, spatial, "all", [g])[0], whole)
    torch.testing.assert_close(_contributions(q, k, v, mask, 0.5, spatial, "pooled", [g])[0], pooled)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-idefics3", "tiny-paligemma",
                                  "tiny-llava-next", "tiny-llava-onevision"])
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


def test_a_text_only_model_is_one_line(tiny_llama):
    targets = build_targets(tiny_llama, tiny_llama.prepare("a red circle", []), answer="red")
    with pytest.raises(mmlens.MmlensError, match="has no vision tower") as error:
        grad_eclip(tiny_llama, targets)
    assert "\n" not in str(error.value)


def test_bad_options_are_one_line(tiny_llava):
    targets = build_targets(tiny_llava, tiny_llava.prepare("<image> what ?", [noise_image(64, 64)]), answer="red")
    with pytest.raises(mmlens.MmlensError, match="the tower has 2 layers"):
        grad_eclip(tiny_llava, targets, layer=5)
    with pytest.raises(mmlens.MmlensError, match="unknown spatial weighting"):
        grad_eclip(tiny_llava, targets, spatial="sigmoid")
    with pytest.raises(mmlens.MmlensError, match="unknown query pooling"):
        grad_eclip(tiny_llava, targets, queries="cls")
