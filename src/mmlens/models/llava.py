"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, MLP projector, LLaMA decoder.

Each image becomes one contiguous run of ``<image>`` tokens, the patch grid of
the (resized, centre-cropped) image in row-major order; the CLS feature is
dropped under the ``default`` feature-selection strategy. Under ``full`` the
run starts with the CLS feature (one more token per image): it belongs to no
patch, so the layout marks it special, as LLaVA-NeXT's newline tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.models.adapter import Adapter, grid_tokens, layout_from_images, tokenizer_of


def _size_pair(size: Any) -> tuple[int | None, int | None, int | None]:
    """``(shortest_edge, height, width)`` from a size dict or SizeDict."""
    get = size.get if isinstance(size, dict) else (lambda key, default=None: getattr(size, key, default))
    return get("shortest_edge", None), get("height", None), get("width", None)


def processed_box(image_size: tuple[int, int], image_processor: Any) -> Box:
    """The region of the original image that survives padding, resizing and centre-cropping, a :class:`~mmlens.box.Box`.

    ``image_size`` is ``(height, width)``; the box is ``(x0, y0, x1, y1)``.

    Example:
        >>> from types import SimpleNamespace
        >>> P = SimpleNamespace(do_pad=False, do_resize=True, size={"shortest_edge": 64},
        ...                     do_center_crop=True, crop_size={"height": 64, "width": 64})
        >>> [round(v, 1) for v in processed_box((120, 200), P)]  # 120 high, 200 wide: about the centre square
        [39.6, 0.0, 160.4, 120.0]
    """
    height, width = image_size
    top_pad = left_pad = 0.0
    if getattr(image_processor, "do_pad", False):  # pad to a square first, image centred
        side = max(height, width)
        top_pad, left_pad = (side - height) // 2, (side - width) // 2
        height = width = side
    scale_y = scale_x = 1.0
    resized = (height, width)
    if getattr(image_processor, "do_resize", True):
        shortest, target_h, target_w = _size_pair(image_processor.size)
        if shortest:
            short, long = min(height, width), max(height, width)
            new_short, new_long = shortest, int(shortest * long / short)
            resized = (new_short, new_long) if height <= width else (new_long, new_short)
        else:
            resized = (target_h, target_w)
        scale_y, scale_x = resized[0] / height, resized[1] / width
    x0, y0, x1, y1 = 0.0, 0.0, float(resized[1]), float(resized[0])
    if getattr(image_processor, "do_center_crop", False):
        _, crop_h, crop_w = _size_pair(image_processor.crop_size)
        x0, y0 = float(int((resized[1] - crop_w) / 2.0)), float(int((resized[0] - crop_h) / 2.0))
        x1, y1 = x0 + crop_w, y0 + crop_h
    return Box(x0 / scale_x - left_pad, y0 / scale_y - top_pad, x1 / scale_x - left_pad, y1 / scale_y - top_pad)


@dataclass(frozen=True)
class LlavaAdapter(Adapter):
    """LLaVA-1.5: one square patch grid per image, after the CLS token where the strategy keeps it."""

    def layout(self, inputs: dict[str, Any], image_sizes: list[list[tuple[int, int]]], processor: Any) -> TokenLayout:
        token_id = tokenizer_of(processor).convert_tokens_to_ids(self.image_token)
        side = _grid_side(processor)
        lead = leading_tokens(processor)
        per_image = side * side + lead
        images, tokens, leading = [], [], []
        for sizes, ids in zip(image_sizes, inputs["input_ids"]):
            # Slots may touch ("<image> <image>"), so split the image positions by count, not by runs.
            positions = (ids == token_id).nonzero().flatten().tolist()
            if len(positions) != per_image * len(sizes):
                cls = f" plus {lead} CLS token" if lead else ""
                raise MmlensError(
                    f"{len(positions)} image tokens for {len(sizes)} image(s) of {side}x{side} patches{cls}")
            row_images, row_tokens, row_leading = [], [], []
            for index, size in enumerate(sizes):
                box = processed_box(size, processor.image_processor)
                row_images.append(ImageInfo(size=size, views=[View(side, side, box)]))
                start = index * per_image
                row_leading += positions[start : start + lead]
                row_tokens += grid_tokens(positions[start + lead : start + per_image], index, 0, side, side)
            images.append(row_images)
            tokens.append(row_tokens)
            leading.append(row_leading)
        return layout_from_images(inputs, processor, self.image_token, images, tokens, extra_special=leading)


def leading_tokens(processor: Any) -> int:
    """Image tokens before each patch grid: the CLS token that ``vision_feature_select_strategy="full"`` keeps.

    The processor writes ``patches + num_additional_image_tokens`` tokens per
    image, less one under ``"default"`` (which drops CLS); what is left over
    the patches comes first, as the vision tower orders its outputs.

    Example:
        >>> from types import SimpleNamespace
        >>> leading_tokens(SimpleNamespace(vision_feature_select_strategy="full", num_additional_image_tokens=1))
        1
        >>> leading_tokens(SimpleNamespace(vision_feature_select_strategy="default", num_additional_image_tokens=1))
        0
    """
    strategy = getattr(processor, "vision_feature_select_strategy", None) or "default"
    if strategy not in ("default", "full"):
        raise MmlensError(f"vision_feature_select_strategy={strategy!r} is not supported; use 'default' or 'full'")
    extra = int(getattr(processor, "num_additional_image_tokens", 0) or 0)
    return max(0, extra - (1 if strategy == "default" else 0))


def _grid_side(processor: Any) -> int:
    """Patches per side of the processed image."""
    _, crop_h, _ = _size_pair(processor.image_processor.crop_size) if getattr(
        processor.image_processor, "do_center_crop", False) else _size_pair(processor.image_processor.size)
    return crop_h // processor.patch_size


#: Module paths shared by the LLaVA-style families (LLaVA, NeXT, OneVision, PaliGemma).
LLAVA_STYLE_PATHS = dict(
    decoder_layers="model.language_model.layers",
    final_norm="model.language_model.norm",
    embed_tokens="model.language_model.embed_tokens",
    # transformers 5 keeps CLIP/SigLIP's encoder at vision_tower.encoder; 4.x nested it under vision_model.
    vision_layers="model.vision_tower.encoder.layers|model.vision_tower.vision_model.encoder.layers",
    projector="model.multi_modal_projector",
    projector_neurons="linear_2",
    image_token="<image>",
)

LLAVA = LlavaAdapter(family="llava", model_types=("llava",), **LLAVA_STYLE_PATHS)
