"""Tiny models with released checkpoints' image geometry: the token counts users meet on large images."""

import numpy as np
import pytest
from PIL import Image

import mmlens

# (zoo name, (width, height), views as (kind, [rows, cols])), from the released processors' rules.
# LLaVA-v1.6: the 336 px base view (24 x 24 patches of 14 px), then the best grid pinpoint's tiles, unpadded,
# with a newline slot after each row. Qwen2-VL: 2 x 2 merged 14 px patches, one token per 28 px square.
CASES = [
    ("tiny-llava-next-real-geometry", (672, 672), [("global", [24, 24]), ("tile", [48, 48])]),
    ("tiny-llava-next-real-geometry", (1008, 336), [("global", [24, 24]), ("tile", [24, 72])]),
    ("tiny-qwen2-vl-real-geometry", (1512, 1512), [("image", [54, 54])]),
    ("tiny-qwen2-vl-real-geometry", (1400, 560), [("image", [20, 50])]),
]


@pytest.mark.parametrize("name, size, views", CASES)
def test_large_images_give_the_released_token_counts(name, size, views):
    width, height = size
    model = mmlens.load(name)
    batch = model.prepare("<image> what is this?", [Image.fromarray(np.zeros((height, width, 3), np.uint8))])
    described = batch.layout.describe(0)
    image = described["images"][0]
    assert image["size"] == [height, width]
    assert [(v["kind"], v["grid"]) for v in image["views"]] == views
    assert described["tokens"]["image"] == sum(rows * cols for _, (rows, cols) in views)
    if name.startswith("tiny-llava-next"):  # a newline slot closes each row of the tiles' grid
        assert described["tokens"]["special"] >= views[-1][1][0]
