"""LLaVA-NeXT and LLaVA-OneVision layouts: base view, unpadded tile grid, newline slots."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution as hf_best_resolution
from transformers.image_utils import PILImageResampling
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

import mmlens
from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import Modality, TokenLayout, View
from mmlens.models.llava_next import (
    LLAVA_NEXT, LLAVA_ONEVISION, LlavaNextAdapter, select_best_resolution, unpadded_rows_cols,
)
from mmlens.models.verify import verify_layout
from mmlens.zoo.tiny.llava_next import build_processor as build_next_processor
from mmlens.zoo.tiny.llava_onevision import TinyLlavaOnevisionProcessor
from tests.conftest import noise_image

FAMILIES = {"tiny-llava-next": LLAVA_NEXT, "tiny-llava-onevision": LLAVA_ONEVISION}
# (height, width) -> high-resolution grid after unpadding (tiles are 32px, 4x4 features each).
SHAPES = {"square": ((64, 64), (8, 8)), "wide": ((120, 200), (4, 8)), "tall": ((200, 90), (8, 4))}
PROMPT = "<image> what is this ?"


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request: pytest.FixtureRequest) -> mmlens.Model:
    return mmlens.load(request.param)


def _image_token_mask(model: mmlens.Model, input_ids: torch.Tensor) -> torch.Tensor:
    return input_ids == model.hf.config.image_token_id


def test_adapter_and_module_paths(model: mmlens.Model) -> None:
    assert model.adapter is FAMILIES[model.name]
    assert model.n_layers == 2 and model.n_vision_layers == 2
    for path in (model.adapter.final_norm, model.adapter.embed_tokens, model.adapter.projector):
        model.module(path)
    assert model.tokenizer.convert_tokens_to_ids(model.adapter.image_token) == model.hf.config.image_token_id


@pytest.mark.parametrize("shape", list(SHAPES))
def test_layout_verified_by_perturbation(model: mmlens.Model, shape: str) -> None:
    (height, width), grid = SHAPES[shape]
    image = noise_image(height, width)
    batch = model.prepare(PROMPT, [image])
    layout = batch.layout
    base, hires = layout.images[0][0].views
    assert (base.kind, base.rows, base.cols, base.box) == ("global", 4, 4, Box(0.0, 0.0, width, height))
    assert (hires.kind, hires.rows, hires.cols) == ("tile", *grid)
    # Every <image> slot is a patch or a newline; newlines end each high-resolution row.
    slots = _image_token_mask(model, batch.input_ids[0])
    newlines = slots & layout.mask(Modality.SPECIAL)[0]
    assert int(newlines.sum()) == hires.rows
    assert int(slots.sum()) == layout.image_positions(0).numel() + int(newlines.sum())
    assert (layout.mask(Modality.IMAGE)[0] <= slots).all()
    report = verify_layout(model, image)
    assert report.ok, report.failures()


def _corrupt(adapter: LlavaNextAdapter, corruption) -> LlavaNextAdapter:
    cls = type("Corrupted", (type(adapter),), {"layout": lambda self, *a: corruption(type(adapter).layout(self, *a))})
    return cls(**{f.name: getattr(adapter, f.name) for f in dataclasses.fields(adapter)})


def _transpose_hires(layout: TokenLayout) -> TokenLayout:
    """Read view 1 column-major: rows and columns swapped (a plausible mistake)."""
    info = layout.images[0][0]
    hires = info.views[1]
    transposed = View(hires.cols, hires.rows, hires.box, "tile")
    layout.images[0][0] = dataclasses.replace(info, views=[info.views[0], transposed])
    positions = layout.image_positions(0, view=1)
    rows, cols = layout.row[0, positions].clone(), layout.col[0, positions].clone()
    layout.row[0, positions], layout.col[0, positions] = cols, rows
    return layout


def _padded_hires_box(layout: TokenLayout) -> TokenLayout:
    """Forget the unpadding: claim view 1 covers exactly the whole image."""
    info = layout.images[0][0]
    hires = info.views[1]
    whole = dataclasses.replace(hires, box=Box(0, 0, info.size[1], info.size[0]))
    layout.images[0][0] = dataclasses.replace(info, views=[info.views[0], whole])
    return layout


@pytest.mark.parametrize("corruption", [_transpose_hires, _padded_hires_box])
def test_verification_catches_a_corrupted_layout(model: mmlens.Model, corruption) -> None:
    broken = mmlens.Model(model.hf, model.processor, _corrupt(model.adapter, corruption), model.name)
    assert not verify_layout(broken, noise_image(120, 200), regions=12).ok


def _coordinate_image(height: int, width: int) -> Image.Image:
    """Each pixel stores its own (x, y) in red and green; blue 255 tells image from padding."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x, y, np.full_like(x, 255)], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("size", [(64, 64), (120, 200), (200, 90), (45, 71), (33, 64), (100, 101)])
def test_view_boxes_match_the_processor_pixel_for_pixel(model: mmlens.Model, size: tuple[int, int]) -> None:
    """Run the processor with nearest resampling on a coordinate image: each feature cell must hold
    only pixels from its layout box (half a pixel of rounding allowed); dropped rows hold only pixels outside."""
    processor, adapter = model.processor, model.adapter
    out = processor.image_processor(_coordinate_image(*size), resample=PILImageResampling.NEAREST,
                                    do_rescale=False, do_normalize=False, return_tensors="np")
    tiles = np.asarray(out["pixel_values"])[0]  # (1 + tiles, 3, 32, 32)
    side = tiles.shape[-1]
    base, hires = adapter.plan(size, processor, (side, side)).views
    best = hf_best_resolution(size, processor.image_processor.image_grid_pinpoints)
    assert select_best_resolution(size, processor.image_processor.image_grid_pinpoints) == tuple(best)
    rows_t, cols_t = best[0] // side, best[1] // side
    canvas = tiles[1:1 + rows_t * cols_t].reshape(rows_t, cols_t, 3, side, side)
    canvas = canvas.transpose(2, 0, 3, 1, 4).reshape(3, rows_t * side, cols_t * side)
    cell = side // 4
    _assert_cells(tiles[0], base, {(r, c): (r, c) for r in range(4) for c in range(4)}, cell)
    row0, row1, col0, col1 = unpadded_rows_cols(size, rows_t * 4, cols_t * 4)
    assert (row1 - row0, col1 - col0) == (hires.rows, hires.cols)
    kept = {(r, c): (r - row0, c - col0) for r in range(row0, row1) for c in range(col0, col1)}
    _assert_cells(canvas, hires, kept, cell)


def _assert_cells(pixels: np.ndarray, view: View, kept: dict, cell: int) -> None:
    left, top, right, bottom = view.box  # x0, y0, x1, y1
    height, width = (bottom - top) / view.rows, (right - left) / view.cols
    for r in range(pixels.shape[1] // cell):
        for c in range(pixels.shape[2] // cell):
            block = pixels[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].reshape(3, -1)
            x, y = block[0][block[2] == 255] + 0.5, block[1][block[2] == 255] + 0.5  # source pixel centres
            if (r, c) in kept:
                vr, vc = kept[(r, c)]
                assert (y >= top + vr * height - 0.51).all() and (y <= top + (vr + 1) * height + 0.51).all()
                assert (x >= left + vc * width - 0.51).all() and (x <= left + (vc + 1) * width + 0.51).all()
            else:  # a row or column unpadding removed: nothing in it may lie inside the view's box
                inside = (y > top + 0.51) & (y < bottom - 0.51) & (x > left + 0.51) & (x < right - 0.51)
                assert not inside.any()


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_padding(model: mmlens.Model, side: str) -> None:
    prompts = [PROMPT, "describe the colour of the big shape in this picture <image> and the small one ?"]
    images = [[noise_image(120, 200, 1)], [noise_image(200, 90, 2)]]
    batch = model.prepare(prompts, images, padding_side=side)
    layout, mask = batch.layout, batch.inputs["attention_mask"]
    assert (layout.mask(Modality.PAD) == (mask == 0)).all() and (mask == 0).any()
    for b in range(2):
        single = model.prepare(prompts[b], images[b]).layout
        keep = mask[b].bool()
        offset = int((~keep).sum()) if side == "left" else 0
        for name in ("modality", "image", "view", "row", "col"):
            assert torch.equal(getattr(layout, name)[b, keep], getattr(single, name)[0]), name
        assert torch.equal(layout.image_positions(b), single.image_positions(0) + offset)
        assert layout.images[b] == single.images[0]


def test_heatmaps_at_original_size(model: mmlens.Model) -> None:
    images = [noise_image(120, 200, 1), noise_image(200, 90, 2)]
    batch = model.prepare("<image> and <image> same ?", images)
    layout = batch.layout
    maps = layout.to_heatmaps(torch.rand(batch.input_ids.shape[1]))[0]
    assert [m.shape for m in maps] == [(120, 200), (200, 90)]
    assert not any(np.isnan(m).any() for m in maps)  # the base view covers every pixel
    # Unpadding cut real rows of the wide image: its tile heatmap is NaN there.
    tile_map = layout.to_heatmaps(torch.rand(batch.input_ids.shape[1]), views="tile")[0][0]
    assert np.isnan(tile_map[:12]).all() and np.isnan(tile_map[111:]).all() and not np.isnan(tile_map[12:111]).any()


def test_count_mismatch_is_a_clear_error(model: mmlens.Model) -> None:
    batch = model.prepare(PROMPT, [noise_image(120, 200)])
    with pytest.raises(MmlensError, match="<image> tokens"):
        model.adapter.layout(batch.inputs, [[(64, 64)]], model.processor)  # claims the wrong image size


def test_onevision_multi_image_prompts_are_not_tiled(model: mmlens.Model) -> None:
    if model.name != "tiny-llava-onevision":
        pytest.skip("only OneVision skips tiling for several images")
    images = [[noise_image(64, 64, 1), noise_image(120, 200, 2)], [noise_image(200, 90, 3)]]
    batch = model.prepare(["<image> <image> same ?", PROMPT], images)
    infos = batch.layout.images
    assert [v.kind for info in infos[0] for v in info.views] == ["image", "image"]
    assert infos[0][1].views[0].box == Box(0.0, -40.0, 200.0, 160.0)  # 120x200 padded to a centred square
    assert [v.kind for v in infos[1][0].views] == ["global", "tile"]
    slots = _image_token_mask(model, batch.input_ids)
    assert int((slots[0] & batch.layout.mask(Modality.SPECIAL)[0]).sum()) == 2  # one newline per image
    with torch.no_grad():
        model.forward(batch)  # the model's own count check agrees


def test_onevision_anyres_max_downsampling(model: mmlens.Model) -> None:
    if model.name != "tiny-llava-onevision":
        pytest.skip("only OneVision shrinks large grids")
    model.hf.config.vision_aspect_ratio = model.processor.vision_aspect_ratio = "anyres_max_1"
    try:
        image = noise_image(64, 64)
        hires = model.prepare(PROMPT, [image]).layout.images[0][0].views[1]
        assert (hires.rows, hires.cols) == (4, 4)  # 8x8 halved: bilinear at exactly 2x stays local
        assert verify_layout(model, image).ok
    finally:
        model.hf.config.vision_aspect_ratio = model.processor.vision_aspect_ratio = "anyres_max_9"


def test_token_counts_match_real_checkpoint_processors() -> None:
    """Geometry of llava-v1.6 (336px tiles, patch 14, CLS) and OneVision (384px, 27x27, anyres_max_9)."""
    tokenizer = build_next_processor().tokenizer
    next_processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    ov_processor = TinyLlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(), tokenizer=tokenizer, num_image_tokens=729,
        vision_feature_select_strategy="full",
    )
    rng = np.random.default_rng(0)
    for height, width in rng.integers(20, 3000, size=(200, 2)).tolist():
        want = next_processor._get_number_of_features(height, width, 336, 336) - 1  # CLS dropped
        assert LLAVA_NEXT.plan((height, width), next_processor, (336, 336)).n_tokens == want
        want = ov_processor._get_number_of_features(height, width, 384, 384)
        assert LLAVA_ONEVISION.plan((height, width), ov_processor, (384, 384)).n_tokens == want
