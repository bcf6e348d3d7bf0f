"""Idefics3 and SmolVLM: SigLIP-style tower on square tiles, pixel shuffle, LLaMA decoder.

The image processor (PIL and torchvision twins agree) works in three steps:

1. resize so the longest edge is ``size["longest_edge"]`` (up *or* down, the
   short edge rounded to even), capped at 4096;
2. stretch both sides up to multiples of the tile side
   ``M = max_image_size["longest_edge"]`` (``resize_for_vision_encoder``);
3. if a side exceeds ``M``, cut ``R x C`` tiles of ``M x M`` row-major and add
   the whole image resized to ``M x M`` as a last, global frame; otherwise
   (or with ``do_image_splitting=False``) keep one ``M x M`` frame.

Steps 1-2 compose to one axis-aligned scaling of the whole image onto
``R*M x C*M`` pixels, so tile ``(r, c)`` covers exactly the original box
``Box(c*W/C, r*H/R, (c+1)*W/C, (r+1)*H/R)`` whatever the rounding, and every
frame is ``M x M``: the batch padding (``do_pad``) never pads a real frame.

The prompt gets, per tile, ``<fake_token_around_image><row_r_col_c>`` +
``<image>`` x ``image_seq_len``, a newline after each tile row, then
``\\n<fake_token_around_image><global-img>`` + ``<image>`` x ``image_seq_len``
+ ``<fake_token_around_image>``; an unsplit image gets only the global form.
The connector's ``pixel_shuffle`` folds each ``s x s`` block of patches into
one token, row-major over the ``k x k`` block grid (``k = M / patch / s``).

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-idefics3")
    >>> batch = model.prepare("<image> what is this ?", [Image.new("RGB", (200, 120))])
    >>> [(v.kind, v.rows, v.cols) for v in batch.layout.images[0][0].views][-2:]
    [('tile', 2, 2), ('global', 2, 2)]
    >>> batch.layout.images[0][0].views[0].box
    Box(x0=0.0, y0=0.0, x1=66.66666666666667, y1=60.0)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.models.adapter import Adapter, grid_tokens, image_token_runs, layout_from_images, tokenizer_of

_TILE_TAG = re.compile(r"^<row_(\d+)_col_(\d+)>$")
_MAX_IMAGE_SIZE = 4096  # the processors' absolute cap on the resized image


def _edge(size: Any, key: str = "longest_edge") -> int | None:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def tile_grid(image_size: tuple[int, int], image_processor: Any) -> tuple[int, int]:
    """``(rows, cols)`` of tiles the processor cuts from an image, ``(0, 0)`` when it is not split.

    Mirrors the processor's actual resize path (``resize`` then
    ``resize_for_vision_encoder``), not ``get_number_of_image_patches``: that one
    ignores ``do_resize`` and, when ``size`` is no multiple of the tile side, can
    count one tile fewer on the short side (it ceils the short side before the
    stretch, the processor after).

    Example:
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(size={"longest_edge": 96}, max_image_size={"longest_edge": 32})
        >>> tile_grid((120, 200), p), tile_grid((200, 120), p)
        ((2, 3), (3, 2))
    """
    height, width = image_size
    tile = int(_edge(image_processor.max_image_size))
    if not getattr(image_processor, "do_image_splitting", True):
        return (0, 0)
    longest = _edge(image_processor.size)
    if getattr(image_processor, "do_resize", True) and longest:
        height, width = _rescale_to_max_len(height, width, int(longest))
        height, width = _scale_below(height, width, _MAX_IMAGE_SIZE)
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    if height > tile or width > tile:
        return (height // tile, width // tile)
    return (0, 0)


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width, height = max_len, int(max_len / aspect)
        height += height % 2
    else:
        height, width = max_len, int(max_len * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _scale_below(height: int, width: int, max_len: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > max_len:
        width, height = max_len, int(max_len / aspect)
    elif height > width and height > max_len:
        height, width = max_len, int(max_len * aspect)
    return max(height, 1), max(width, 1)


def tile_box(size: tuple[int, int], grid: tuple[int, int], tile: tuple[int, int]) -> Box:
    """Original-pixel :class:`~mmlens.box.Box` of tile ``(r, c)`` in an ``R x C`` split of an image of ``(height, width)``.

    Example:
        >>> tile_box((120, 200), (2, 3), (1, 2))
        Box(x0=133.33333333333334, y0=60.0, x1=200.0, y1=120.0)
    """
    (height, width), (rows, cols), (r, c) = size, grid, tile
    return Box(c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows)


@dataclass(frozen=True)
class Idefics3Adapter(Adapter):
    """Idefics3 / SmolVLM: tiles (row-major) then a global view per image, each a k x k grid."""

    def layout(self, inputs: dict[str, Any], image_sizes: list[list[tuple[int, int]]], processor: Any) -> TokenLayout:
        tokenizer = tokenizer_of(processor)
        image_token = getattr(processor, "image_token", None) or self.image_token
        # Idefics3Processor names it global_image_tag, SmolVLMProcessor global_image_token.
        global_tag = getattr(processor, "global_image_tag", None) or getattr(processor, "global_image_token", None)
        global_tag = global_tag or "<global-img>"
        fake_id = tokenizer.convert_tokens_to_ids(getattr(processor, "fake_image_token", "<fake_token_around_image>"))
        input_ids = inputs["input_ids"]
        all_runs = image_token_runs(input_ids, tokenizer.convert_tokens_to_ids(image_token))
        images, tokens, extra = [], [], []
        for b, (sizes, row_runs) in enumerate(zip(image_sizes, all_runs)):
            groups = _group_runs(input_ids[b], row_runs, tokenizer, global_tag)
            if len(groups) != len(sizes):
                raise MmlensError(f"row {b}: found {len(groups)} image(s) in the tokens but {len(sizes)} were given")
            row_images, row_tokens = [], []
            for index, (size, views) in enumerate(zip(sizes, groups)):
                info, image_tokens = _image_layout(index, size, views)
                row_images.append(info)
                row_tokens += image_tokens
            images.append(row_images)
            tokens.append(row_tokens)
            extra.append(_marker_positions(input_ids[b], row_runs, fake_id))
        return layout_from_images(inputs, processor, image_token, images, tokens, extra_special=extra)


# One run of image tokens: (tile (r, c) or None for the global view, start, end).
_Run = tuple[tuple[int, int] | None, int, int]


def _group_runs(
    row_ids: torch.Tensor, runs: list[tuple[int, int]], tokenizer: Any, global_tag: str
) -> list[list[_Run]]:
    """Split one row's image-token runs into images: tiles accumulate until a global view closes the image."""
    groups: list[list[_Run]] = []
    current: list[_Run] = []
    for start, end in runs:
        marker = tokenizer.convert_ids_to_tokens(int(row_ids[start - 1])) if start > 0 else None
        match = _TILE_TAG.match(marker or "")
        if match:
            current.append(((int(match.group(1)) - 1, int(match.group(2)) - 1), start, end))
        elif marker == global_tag:
            groups.append(current + [(None, start, end)])
            current = []
        else:
            raise MmlensError(f"image tokens at {start} follow {marker!r}, not a tile tag or {global_tag}")
    if current:
        raise MmlensError("image tiles without a closing global view; is the processor an Idefics3 one?")
    return groups


def _image_layout(
    index: int, size: tuple[int, int], runs: list[_Run]
) -> tuple[ImageInfo, list[tuple[int, int, int, int, int]]]:
    """Views (tiles in prompt order, then global) and their token tuples for one image."""
    tiles = [tile for tile, _, _ in runs if tile is not None]
    grid = (max(r for r, _ in tiles) + 1, max(c for _, c in tiles) + 1) if tiles else (1, 1)
    height, width = size
    views, tokens = [], []
    for view, (tile, start, end) in enumerate(runs):
        side = math.isqrt(end - start)
        if side * side != end - start:
            raise MmlensError(f"{end - start} image tokens in one view: not a square grid")
        if tile is None:
            views.append(View(side, side, Box(0.0, 0.0, float(width), float(height)), kind="global"))
        else:
            views.append(View(side, side, tile_box(size, grid, tile), kind="tile"))
        # pixel_shuffle keeps the k x k token grid row-major (see the module docstring).
        tokens += grid_tokens(range(start, end), index, view, side, side)
    return ImageInfo(size=size, views=views), tokens


def _marker_positions(row_ids: torch.Tensor, runs: list[tuple[int, int]], fake_id: int) -> list[int]:
    """Tile tags, ``<global-img>`` and the ``<fake_token_around_image>`` around each run: special, not text."""
    positions = [start - 1 for start, _ in runs]
    positions += (row_ids == fake_id).nonzero().flatten().tolist()
    return positions


IDEFICS3 = Idefics3Adapter(
    family="idefics3",
    # SmolVLM (transformers >= 4.50) has its own classes and model_type with the same module tree.
    model_types=("idefics3", "smolvlm"),
    decoder_layers="model.text_model.layers",
    final_norm="model.text_model.norm",
    embed_tokens="model.text_model.embed_tokens",
    vision_layers="model.vision_model.encoder.layers",
    vision_attn="self_attn",
    vision_mlp="mlp",
    projector="model.connector",
    image_token="<image>",
)
