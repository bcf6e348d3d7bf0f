"""Qwen2-VL and Qwen2.5-VL layouts, proven by pixel perturbation on tiny random models."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.vision_utils import get_vision_window_index

import mmlens
from mmlens.box import Box
from mmlens.hooks import capture
from mmlens.layout import Modality, TokenLayout
from mmlens.models.qwen2_vl import QWEN2_5_VL, QWEN2_VL, QwenVLAdapter
from mmlens.models.verify import verify_layout
from tests.conftest import noise_image

FAMILIES = {"tiny-qwen2-vl": QWEN2_VL, "tiny-qwen2.5-vl": QWEN2_5_VL}
# (height, width): square, wide and tall; the tiny processor maps them to 2x2, 3x5 and 5x3 merged grids.
SHAPES = {"square": ((64, 64), (2, 2)), "wide": ((120, 200), (3, 5)), "tall": ((200, 120), (5, 3))}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request: pytest.FixtureRequest) -> mmlens.Model:
    return mmlens.load(request.param)


def test_registry_picks_the_adapters(model: mmlens.Model) -> None:
    assert model.adapter is FAMILIES[model.name]
    assert model.n_vision_layers == 2 and model.n_layers == 2
    assert model.adapter.format_prompt("<image> hi", 1) == "<|vision_start|><|image_pad|><|vision_end|> hi"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_layout_verified_by_perturbation(model: mmlens.Model, shape: str) -> None:
    (height, width), grid = SHAPES[shape]
    image = noise_image(height, width, seed=1)
    view = model.prepare("<image> what is this ?", [image]).layout.images[0][0].views[0]
    assert (view.rows, view.cols) == grid and view.box == Box(0.0, 0.0, float(width), float(height))
    report = verify_layout(model, image)
    assert report.ok, report.failures()


def _transposed(layout: TokenLayout) -> None:
    """Read each image's tokens column-major instead of row-major (a plausible mistake)."""
    for b, infos in enumerate(layout.images):
        for i, info in enumerate(infos):
            positions = layout.image_positions(b, image=i)
            rows = info.views[0].rows
            k = torch.arange(positions.numel(), dtype=torch.int32)
            layout.row[b, positions], layout.col[b, positions] = k % rows, k // rows


def _window_order(layout: TokenLayout) -> None:
    """Take the vision tower's windowed order (Qwen2.5) for the language model's order."""
    info = layout.images[0][0].views[0]
    grid = torch.tensor([[1, info.rows * 2, info.cols * 2]])
    window_index, _ = get_vision_window_index(grid, spatial_merge_size=2, window_size=56, patch_size=14)
    positions = layout.image_positions(0)
    assert not torch.equal(window_index, torch.arange(len(window_index)))  # the wide image spans several windows
    layout.row[0, positions] = (window_index // info.cols).to(torch.int32)
    layout.col[0, positions] = (window_index % info.cols).to(torch.int32)


def _corrupted(adapter: QwenVLAdapter, corrupt: Callable[[TokenLayout], None]) -> QwenVLAdapter:
    @dataclass(frozen=True)
    class Corrupted(QwenVLAdapter):
        def layout(self, *args: Any) -> TokenLayout:
            layout = super().layout(*args)
            corrupt(layout)
            return layout

    return Corrupted(**{f.name: getattr(adapter, f.name) for f in fields(adapter)})


@pytest.mark.parametrize("corrupt", [_transposed, _window_order], ids=["transposed", "window-order"])
def test_verification_rejects_a_wrong_layout(
    model: mmlens.Model, corrupt: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    if corrupt is _window_order and model.adapter is QWEN2_VL:
        pytest.skip("Qwen2-VL has no windows")
    monkeypatch.setattr(model, "adapter", _corrupted(model.adapter, corrupt))
    assert not verify_layout(model, noise_image(120, 200, seed=1)).ok


def _embeddings(model: mmlens.Model, prompts: Any, images: Any, padding_side: str = "left") -> tuple[Any, torch.Tensor]:
    batch = model.prepare(prompts, images, padding_side=padding_side)
    with torch.no_grad(), capture(model, "lm.embed") as captured:
        model.forward(batch)
    return batch, captured["lm.embed"]


def test_two_images_in_prompt_order(model: mmlens.Model) -> None:
    first, second = noise_image(64, 64, seed=2), noise_image(120, 200, seed=3)
    batch, before = _embeddings(model, "<image> and <image> ?", [first, second])
    layout = batch.layout
    assert [info.size for info in layout.images[0]] == [(64, 64), (120, 200)]
    assert [layout.image_positions(0, image=i).numel() for i in (0, 1)] == [4, 15]
    assert layout.image_positions(0, image=0).max() < layout.image_positions(0, image=1).min()
    # Vision start/end around each image are special, not text.
    for i in (0, 1):
        positions = layout.image_positions(0, image=i)
        assert layout.modality[0, positions.min() - 1] == Modality.SPECIAL == layout.modality[0, positions.max() + 1]
    # Each image's pixels reach exactly that image's tokens (images never attend to each other).
    inverted = Image.fromarray(255 - np.asarray(second))
    _, after = _embeddings(model, "<image> and <image> ?", [first, inverted])
    changed = ((after - before).abs().amax(-1)[0] > 1e-5).nonzero().flatten()
    assert torch.equal(changed, layout.image_positions(0, image=1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_rows_match_single_prompts(model: mmlens.Model, side: str) -> None:
    prompts = ["<image> what colour is the big circle on the left ?", "a <image> and <image> ?"]
    images = [[noise_image(120, 200, seed=4)], [noise_image(200, 120, seed=5), noise_image(64, 64, seed=6)]]
    batch, embedded = _embeddings(model, prompts, images, side)
    layout = batch.layout
    assert [[info.size for info in row] for row in layout.images] == [[(120, 200)], [(200, 120), (64, 64)]]
    for b in range(2):
        single, alone = _embeddings(model, prompts[b], images[b])
        real = (batch.inputs["attention_mask"][b] == 1).nonzero().flatten()
        pad = layout.mask(Modality.PAD)[b]
        assert pad.sum() == layout.seq_len - single.layout.seq_len and not pad[real].any()
        assert (real[0] == 0) == (side == "right" or pad.sum() == 0)
        for name in ("modality", "image", "view", "row", "col"):
            assert torch.equal(getattr(layout, name)[b, real], getattr(single.layout, name)[0]), name
        # The right image features sit at the right positions of each row.
        torch.testing.assert_close(embedded[b, real], alone[0], atol=1e-4, rtol=1e-4)


def test_heatmaps_at_original_size(model: mmlens.Model) -> None:
    sizes = [(64, 64), (120, 200), (200, 120)]
    batch = model.prepare("<image> <image> <image> ?", [noise_image(h, w) for h, w in sizes])
    layout = batch.layout
    maps = layout.to_heatmaps(torch.arange(layout.seq_len, dtype=torch.float32))[0]
    assert [m.shape for m in maps] == sizes
    for i, heat in enumerate(maps):
        positions = layout.image_positions(0, image=i)
        assert heat[0, 0] == positions.min() and heat[-1, -1] == positions.max()  # row-major corners
        assert not np.isnan(heat).any()
    # A wide image's second token lies to the right of the first, not below it.
    wide = layout.image_positions(0, image=1)
    assert maps[1][0, 200 // 5 + 1] == wide[1]
