"""Idefics3 / SmolVLM adapter: tiles + global view, proven by pixel perturbation on the tiny model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch

import mmlens
from mmlens.box import Box
from mmlens.layout import Modality, TokenLayout
from mmlens.model import Model
from mmlens.models.idefics3 import IDEFICS3, Idefics3Adapter, tile_grid
from mmlens.models.registry import adapter_for_model_type
from mmlens.models.verify import verify_layout
from tests.conftest import noise_image

PROMPT = "<image> what is this ?"
# (width, height) -> (tile rows, tile cols) with the tiny processor (longest edge 96, tiles of 32).
SIZES = {"square": ((64, 64), (3, 3)), "wide": ((200, 120), (2, 3)), "tall": ((120, 200), (3, 2))}



@pytest.fixture(scope="module")
def model() -> Model:
    return mmlens.load("tiny-idefics3")


@dataclass(frozen=True)
class _Corrupted(Idefics3Adapter):
    """The real layout, then one deliberate mistake, to show verify_layout notices."""

    mistake: str = "swap_tiles"

    def layout(self, inputs: dict[str, Any], image_sizes: list, processor: Any) -> TokenLayout:
        layout = super().layout(inputs, image_sizes, processor)
        info = layout.images[0][0]
        views = list(info.views)
        if self.mistake == "swap_tiles":  # tiles (1,1) and (1,2) trade boxes
            views[0], views[1] = views[1], views[0]
        else:  # the global grid read column-major
            g = len(views) - 1
            keep = layout.view[0] == g
            layout.row[0, keep], layout.col[0, keep] = layout.col[0, keep].clone(), layout.row[0, keep].clone()
        layout.images[0][0] = replace(info, views=views)
        return layout


def test_registered_for_idefics3_and_smolvlm() -> None:
    assert adapter_for_model_type("idefics3") is IDEFICS3
    assert adapter_for_model_type("smolvlm") is IDEFICS3


def test_module_paths_resolve(model: Model) -> None:
    assert model.n_layers == 2 and model.n_vision_layers == 2
    for path in (IDEFICS3.final_norm, IDEFICS3.projector, IDEFICS3.embed_tokens):
        model.module(path)


@pytest.mark.parametrize("name", list(SIZES))
def test_views_match_processor_geometry(model: Model, name: str) -> None:
    (width, height), grid = SIZES[name]
    assert tile_grid((height, width), model.processor.image_processor) == grid
    layout = model.prepare(PROMPT, [noise_image(height, width)]).layout
    views = layout.images[0][0].views
    assert [v.kind for v in views] == ["tile"] * (grid[0] * grid[1]) + ["global"]
    assert all((v.rows, v.cols) == (2, 2) for v in views)
    assert views[-1].box == Box(0.0, 0.0, float(width), float(height))
    last = views[-2].box  # the bottom-right tile ends at the image corner
    assert (last.x1, last.y1) == pytest.approx((width, height))
    assert (last.x0, last.y0) == pytest.approx((width * (grid[1] - 1) / grid[1], height * (grid[0] - 1) / grid[0]))
    # Markers are special; only <image> positions are image tokens.
    ids = layout.modality[0]
    assert int((ids == int(Modality.IMAGE)).sum()) == 4 * len(views)
    assert int((ids == int(Modality.SPECIAL)).sum()) == 1 + 2 * (len(views) - 1) + 3  # BOS, tile pairs, global triple


@pytest.mark.parametrize("longest", [96, 100])  # 100: not a multiple of the 32-pixel tile
def test_tile_grid_follows_the_processor(model: Model, longest: int) -> None:
    image_processor = type(model.processor.image_processor)(
        size={"longest_edge": longest}, max_image_size={"longest_edge": 32}
    )
    rng = np.random.default_rng(0)
    for height, width in rng.integers(5, 200, size=(40, 2)).tolist():
        out = image_processor(images=[np.zeros((height, width, 3), np.uint8)], return_row_col_info=True)
        assert tile_grid((height, width), image_processor) == (out["rows"][0][0], out["cols"][0][0])


def test_two_images_in_one_prompt(model: Model) -> None:
    layout = model.prepare("<image> and <image> : which is wider ?", [noise_image(120, 200), noise_image(64, 64)]).layout
    assert [len(info.views) for info in layout.images[0]] == [7, 10]
    assert [info.size for info in layout.images[0]] == [(120, 200), (64, 64)]
    first, second = layout.image_positions(0, image=0), layout.image_positions(0, image=1)
    assert first.numel() == 4 * 7 and second.numel() == 4 * 10 and first.max() < second.min()


@pytest.mark.parametrize("name", list(SIZES))
def test_verify_layout_tiles_and_global(model: Model, name: str) -> None:
    (width, height), _ = SIZES[name]
    report = verify_layout(model, noise_image(height, width, seed=1), regions=5)
    assert report.ok, report.failures()
    layout = model.prepare(PROMPT, [noise_image(height, width)]).layout
    kinds = {layout.images[0][0].views[int(layout.view[0, p])].kind for c in report.checks for p in c.required}
    assert kinds == {"tile", "global"}  # both views were held to account


@pytest.mark.parametrize("mistake", ["swap_tiles", "transpose_global"])
def test_verify_layout_catches_a_corrupted_layout(model: Model, mistake: str) -> None:
    corrupted = Model(model.hf, model.processor, _Corrupted(**{**vars(IDEFICS3), "mistake": mistake}), "corrupted")
    # Regions in the top-left tiles and off the global diagonal are drawn often enough at seed 0.
    assert not verify_layout(corrupted, noise_image(120, 200, seed=1), regions=6).ok


def test_unsplit_image_has_only_the_global_view(model: Model) -> None:
    image_processor = model.processor.image_processor
    image_processor.do_image_splitting = False
    try:
        assert tile_grid((120, 200), image_processor) == (0, 0)
        layout = model.prepare(PROMPT, [noise_image(120, 200)]).layout
        assert [(v.kind, v.box) for v in layout.images[0][0].views] == [("global", Box(0.0, 0.0, 200.0, 120.0))]
        assert verify_layout(model, noise_image(120, 200, seed=2), regions=3).ok
    finally:
        image_processor.do_image_splitting = True


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_has_the_right_layout_per_row(model: Model, side: str) -> None:
    images = [noise_image(120, 200), noise_image(200, 120, seed=3)]
    prompts = [PROMPT, "a longer question : <image> what colour is the circle ?"]
    batch = model.prepare(prompts, [[images[0]], [images[1]]], padding_side=side)
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        alone = model.prepare(prompt, [image]).layout
        mask = batch.inputs["attention_mask"][row].bool()
        assert batch.layout.images[row] == alone.images[0]
        for field in ("modality", "image", "view", "row", "col"):
            assert torch.equal(getattr(batch.layout, field)[row][mask], getattr(alone, field)[0])
        pads = (~mask).nonzero().flatten().tolist()
        n = len(mask)
        assert pads == (list(range(len(pads))) if side == "left" else list(range(n - len(pads), n)))
        assert (batch.layout.modality[row][~mask] == int(Modality.PAD)).all()
    assert not batch.inputs["attention_mask"][0].all()  # the shorter prompt was padded


def test_heatmap_blends_one_tile_with_the_global_view(model: Model) -> None:
    batch = model.prepare([PROMPT, PROMPT], [[noise_image(120, 200)], [noise_image(200, 120)]])
    layout = batch.layout
    scores = torch.zeros(layout.modality.shape)
    scores[0, layout.image_positions(0, image=0, view=0)] = 1.0  # tile (1,1) of the wide image
    maps = layout.to_heatmaps(scores)
    assert [[m.shape for m in row] for row in maps] == [[(120, 200)], [(200, 120)]]
    wide = maps[0][0]
    inside = np.zeros((120, 200), dtype=bool)
    inside[:60, :67] = True  # pixel centres inside (0, 0, 60, 66.7)
    # Every pixel is seen by one tile and the global view: the mean of 1 and 0 inside, 0 outside.
    assert np.allclose(wide[inside], 0.5) and np.allclose(wide[~inside], 0.0)
    assert np.allclose(layout.to_heatmaps(scores, views="tile")[0][0][inside], 1.0)
    scores[0, layout.image_positions(0, image=0, view=6)] = 2.0  # the global view
    assert np.allclose(layout.to_heatmaps(scores, views="global")[0][0], 2.0)
    assert np.allclose(layout.to_heatmaps(scores)[0][0][~inside], 1.0)
