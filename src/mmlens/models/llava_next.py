"""LLaVA-NeXT and LLaVA-OneVision: anyres tiling, unpadding and ``image_newline``.

Each image fills one stretch of ``<image>`` tokens:

1. the *base* view: the whole image squashed to one tile, ``g x g`` features;
2. the *high-resolution* view: the image resized (aspect kept) onto the best
   grid pinpoint and padded to it, cut into tiles, the tiles' features
   stitched into one ``(tiles_h * g) x (tiles_w * g)`` grid, then *unpadded*:
   whole feature rows (or columns) removed symmetrically to undo the padding.
   OneVision then shrinks grids above ``anyres_max_N`` tiles' worth of
   features with bilinear interpolation.
3. after every row of the high-resolution grid, the learned
   ``image_newline`` vector, which occupies an ``<image>`` slot but comes
   from no pixel: those positions are :attr:`Modality.SPECIAL`.

OneVision prompts with several images skip tiling: each image is padded to a
square and becomes one ``g x g`` grid followed by a single newline.

The geometry mirrors ``LlavaNextProcessor._get_number_of_features`` (which
sets the token count), ``unpad_image`` and the image processors' resize, pad
and crop steps, so each view's box is exact in original pixels.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava-next")
    >>> batch = model.prepare("<image> what is this ?", [Image.new("RGB", (200, 120))])
    >>> [(v["kind"], v["grid"]) for v in batch.layout.describe()["images"][0]["views"]]
    [('global', [4, 4]), ('tile', [4, 8])]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.models.adapter import Adapter, grid_tokens, layout_from_images, runs, tokenizer_of
from mmlens.models.llava import LLAVA_STYLE_PATHS, _size_pair, processed_box

@dataclass(frozen=True)
class ImagePlan:
    """The token plan of one image: its views, then ``newlines`` rows of view 1, each closed by a newline.

    An untiled image (OneVision, several images in a prompt) is one view and
    one newline. Unpadding can leave a grid with rows but no columns (extreme
    aspect ratios): transformers still emits one newline per row, so
    ``newlines`` may exceed zero while view 1 is absent.
    """

    views: list[View]
    newlines: int = 0

    @property
    def n_tokens(self) -> int:
        return sum(v.rows * v.cols for v in self.views) + self.newlines


# ---- geometry ------------------------------------------------------------------
def _tile_side(image_processor: Any) -> int:
    """Side of the square tiles the image processor cuts, as ``_preprocess`` picks it."""
    shortest, height, _ = _size_pair(image_processor.size)
    _, crop_h, _ = _size_pair(image_processor.crop_size) if getattr(image_processor, "crop_size", None) else (None,) * 3
    return int(crop_h or height or shortest)


def _per_tile_steps(image_processor: Any) -> SimpleNamespace:
    """The resize/crop every tile goes through, without the batch-level ``do_pad`` (which pads tile counts)."""
    return SimpleNamespace(
        do_pad=False,
        do_resize=getattr(image_processor, "do_resize", True),
        size=image_processor.size,
        do_center_crop=bool(getattr(image_processor, "do_center_crop", False)),
        crop_size=getattr(image_processor, "crop_size", None),
    )


def base_box(image_size: tuple[int, int], image_processor: Any) -> Box:
    """Region of the original image the base tile covers: the image squashed to the tile size, then cropped.

    Example:
        >>> from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
        >>> base_box((120, 200), LlavaNextImageProcessorPil(size={"shortest_edge": 32},
        ...          crop_size={"height": 32, "width": 32}))
        Box(x0=0.0, y0=0.0, x1=200.0, y1=120.0)
    """
    shortest, height, width = _size_pair(image_processor.size)
    squashed = (height, width) if height and width else (shortest, shortest)
    x0, y0, x1, y1 = processed_box(squashed, _per_tile_steps(image_processor))
    sy, sx = image_size[0] / squashed[0], image_size[1] / squashed[1]
    return Box(x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def _check_tiles_uncropped(image_processor: Any) -> None:
    """Stitched tiles form one uniform grid only if each tile is resized whole, never cropped."""
    side = _tile_side(image_processor)
    if processed_box((side, side), _per_tile_steps(image_processor)) != Box(0.0, 0.0, float(side), float(side)):
        raise MmlensError(
            f"this image processor crops its {side}px anyres tiles (size={image_processor.size}, "
            f"crop_size={getattr(image_processor, 'crop_size', None)}); mmlens cannot lay out such tiles"
        )


def select_best_resolution(size: tuple[int, int], pinpoints: list[list[int]]) -> tuple[int, int]:
    """The pinpoint ``(height, width)`` transformers picks: most effective pixels, then least waste.

    Example:
        >>> select_best_resolution((60, 200), [[32, 32], [32, 64], [64, 32], [64, 64]])
        (32, 64)
    """
    height, width = size
    best, best_effective, best_waste = None, 0, float("inf")
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (pin_h, pin_w), effective, waste
    return best


def _pasted(size: tuple[int, int], best: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the resized image inside the padded canvas (``get_patch_output_size``)."""
    height, width = size
    scale_h, scale_w = best[0] / height, best[1] / width
    if scale_w < scale_h:
        new_h, new_w = min(math.ceil(height * scale_w), best[0]), best[1]
    else:
        new_h, new_w = best[0], min(math.ceil(width * scale_h), best[1])
    return (best[0] - new_h) // 2, (best[1] - new_w) // 2, new_h, new_w


def unpadded_rows_cols(size: tuple[int, int], rows: int, cols: int) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of the stitched feature grid that ``unpad_image`` keeps.

    Example:
        >>> unpadded_rows_cols((120, 200), 4, 8)  # one padded column removed on each side
        (0, 4, 1, 7)
    """
    height, width = size
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return pad, rows - pad, 0, cols
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - pad


def hires_view(
    size: tuple[int, int], image_processor: Any, grid: tuple[int, int], pixel_side: tuple[int, int],
    max_tiles: int | None = None,
) -> View:
    """The unpadded (and, for OneVision, downsampled) stitched tile grid with its box in original pixels.

    ``grid`` is the feature grid of one tile, ``pixel_side`` the processed tile
    size (the processor derives tile counts from it), ``max_tiles`` the ``N``
    of ``anyres_max_N``.

    Example:
        >>> from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
        >>> ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        ...                                 image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]])
        >>> view = hires_view((120, 200), ip, (4, 4), (32, 32))  # 2x2 tiles, 8x8 features, 2 rows cut each side
        >>> view.rows, view.cols, [round(x, 2) for x in view.box]
        (4, 8, [0.0, 12.31, 200.0, 110.77])
    """
    best = select_best_resolution(size, image_processor.image_grid_pinpoints)
    rows, cols = grid[0] * (best[0] // pixel_side[0]), grid[1] * (best[1] // pixel_side[1])
    row0, row1, col0, col1 = unpadded_rows_cols(size, rows, cols)
    # One feature covers tile/grid canvas pixels; the canvas holds the resized image pasted at (top, left).
    tile = _tile_side(image_processor)
    cell_h, cell_w = tile / grid[0], tile / grid[1]
    top, left, new_h, new_w = _pasted(size, best)
    sy, sx = size[0] / new_h, size[1] / new_w
    box = Box(
        (col0 * cell_w - left) * sx, (row0 * cell_h - top) * sy,
        (col1 * cell_w - left) * sx, (row1 * cell_h - top) * sy,
    )
    rows, cols = row1 - row0, col1 - col0
    if max_tiles is not None:
        # OneVision: bilinear shrink of the whole unpadded grid; the box stays the same.
        ratio = math.sqrt(rows * cols / (max_tiles * grid[0] ** 2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return View(rows=rows, cols=cols, box=box, kind="tile")


def square_padded_box(size: tuple[int, int]) -> Box:
    """Region an untiled OneVision image of ``size`` (height, width) covers after ``pad_to_square`` (it reaches past the image).

    Example:
        >>> square_padded_box((120, 200))  # 40 rows of padding above and below
        Box(x0=0.0, y0=-40.0, x1=200.0, y1=160.0)
    """
    height, width = size
    side = max(height, width)
    top = (side - height) // 2 if width > height else 0
    left = (side - width) // 2 if height > width else 0
    return Box(float(-left), float(-top), float(side - left), float(side - top))


# ---- adapter -------------------------------------------------------------------
@dataclass(frozen=True)
class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT / OneVision: a global view, then the unpadded tile grid with a newline after each row."""

    def plan(self, size: tuple[int, int], processor: Any, pixel_side: tuple[int, int], tiled: bool = True) -> ImagePlan:
        """The views of one image of original ``size`` (height, width).

        Example:
            >>> from mmlens.zoo.tiny.llava_next import build_processor
            >>> plan = LLAVA_NEXT.plan((120, 200), build_processor(), (32, 32))
            >>> [(v.kind, v.rows, v.cols) for v in plan.views], plan.n_tokens
            ([('global', 4, 4), ('tile', 4, 8)], 52)
        """
        image_processor = processor.image_processor
        grid = _feature_grid(processor, pixel_side)
        if not tiled:
            # OneVision multi-image prompts: each image padded to a square, one grid and one newline.
            square = View(grid[0], grid[1], square_padded_box(size), kind="image")
            return ImagePlan(views=[square], newlines=1)
        _check_tiles_uncropped(image_processor)
        base = View(grid[0], grid[1], base_box(size, image_processor), kind="global")
        aspect = getattr(processor, "vision_aspect_ratio", None)  # only OneVision has anyres_max_N
        max_tiles = int(aspect.strip("anyres_max_")) if aspect else None  # strip() as transformers does
        hires = hires_view(size, image_processor, grid, pixel_side, max_tiles)
        # Extreme aspect ratios can unpad a grid to zero columns (rows of newlines only) or zero rows.
        return ImagePlan(views=[base, hires] if hires.rows and hires.cols else [base], newlines=hires.rows)

    def layout(self, inputs: dict[str, Any], image_sizes: list[list[tuple[int, int]]], processor: Any) -> TokenLayout:
        token_id = tokenizer_of(processor).convert_tokens_to_ids(self.image_token)
        pixel_side = tuple(inputs["pixel_values"].shape[-2:]) if "pixel_values" in inputs else (0, 0)
        tiled = _tiled_flags(inputs, sum(len(s) for s in image_sizes))
        images, tokens, newlines, flat = [], [], [], 0
        for row, sizes in enumerate(image_sizes):
            plans = [self.plan(size, processor, pixel_side, tiled[flat + i]) for i, size in enumerate(sizes)]
            flat += len(sizes)
            positions = (inputs["input_ids"][row] == token_id).nonzero().flatten().tolist()
            _check_counts(row, positions, [p.n_tokens for p in plans], inputs["input_ids"][row] == token_id)
            row_tokens, row_newlines, cursor = [], [], 0
            for index, plan in enumerate(plans):
                cursor = _place(plan, index, positions, cursor, row_tokens, row_newlines)
            images.append([ImageInfo(size=size, views=plan.views) for size, plan in zip(sizes, plans)])
            tokens.append(row_tokens)
            newlines.append(row_newlines)
        return layout_from_images(inputs, processor, self.image_token, images, tokens, extra_special=newlines)


def _feature_grid(processor: Any, pixel_side: tuple[int, int]) -> tuple[int, int]:
    """Features per tile side: OneVision states its count, NeXT divides the tile by the vision patch."""
    count = getattr(processor, "num_image_tokens", None)
    if count:
        side = math.isqrt(int(count))
        return side, side
    if not getattr(processor, "patch_size", None) or not pixel_side[0]:
        raise MmlensError("the LLaVA-NeXT processor has no patch_size set; cannot lay out image tokens")
    return pixel_side[0] // processor.patch_size, pixel_side[1] // processor.patch_size


def _tiled_flags(inputs: dict[str, Any], n_images: int) -> list[bool]:
    """Per image in batch order, whether it was tiled: OneVision tiles only prompts with one image."""
    counts = inputs.get("batch_num_images")
    if counts is None:
        return [True] * n_images
    counts = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    return [n == 1 for n in counts for _ in range(n)]


def _check_counts(row: int, positions: list[int], expected: list[int], mask: torch.Tensor) -> None:
    """The layout must explain every ``<image>`` token, per image where images are separated by text."""
    if len(positions) != sum(expected):
        raise MmlensError(
            f"batch row {row}: the input has {len(positions)} <image> tokens but the LLaVA-NeXT layout explains "
            f"{sum(expected)} ({expected} per image); processor and adapter disagree on the anyres geometry"
        )
    spans = runs(mask)
    if len(spans) == len(expected):
        for index, ((start, end), want) in enumerate(zip(spans, expected)):
            if end - start != want:
                raise MmlensError(
                    f"batch row {row}, image {index}: {end - start} <image> tokens, layout explains {want}"
                )


def _place(
    plan: ImagePlan, image: int, positions: list[int], cursor: int,
    tokens: list[tuple[int, int, int, int, int]], newlines: list[int],
) -> int:
    """Assign the next positions to ``plan``'s grids and newlines; return the new cursor."""
    base = plan.views[0]
    n = base.rows * base.cols
    tokens += grid_tokens(positions[cursor:cursor + n], image, 0, base.rows, base.cols)
    cursor += n
    cols = plan.views[1].cols if len(plan.views) > 1 else 0
    for r in range(plan.newlines):  # each row of the stitched grid ends with the newline vector
        tokens += [(positions[cursor + c], image, 1, r, c) for c in range(cols)]
        cursor += cols
        newlines.append(positions[cursor])
        cursor += 1
    return cursor


LLAVA_NEXT = LlavaNextAdapter(family="llava_next", model_types=("llava_next",), **LLAVA_STYLE_PATHS)
LLAVA_ONEVISION = LlavaNextAdapter(family="llava_onevision", model_types=("llava_onevision",), **LLAVA_STYLE_PATHS)
