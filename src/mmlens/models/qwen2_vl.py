"""Qwen2-VL and Qwen2.5-VL: native-resolution ViT, 2x2 patch merger, M-RoPE decoder.

Each image is resized (no crop) by ``smart_resize`` to multiples of
``patch_size * merge_size`` (28 for the released models) and becomes one
``<|vision_start|>`` + ``<|image_pad|>`` x N + ``<|vision_end|>`` span.
``image_grid_thw`` gives ``(t, h, w)`` in patches; the language model sees
``(h / merge) x (w / merge)`` merged tokens, row-major over the merged grid.

Inside the vision tower the patch order is merge-block-major (the image
processor flattens ``(h/m, w/m, m, m)``) so that the merger can fold each
``m x m`` block of consecutive patches into one token; Qwen2.5-VL further
permutes whole merge blocks into attention windows (``window_index``) and
undoes the permutation after the merger. Neither reordering reaches the
language model, so the layout is the same for both families: one view per
image covering the whole original image.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-qwen2-vl")
    >>> batch = model.prepare("<image> what is this ?", [Image.new("RGB", (200, 120))])
    >>> view = batch.layout.images[0][0].views[0]
    >>> (view.rows, view.cols, view.box)
    (3, 5, Box(x0=0.0, y0=0.0, x1=200.0, y1=120.0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.models.adapter import Adapter, grid_tokens, layout_from_images, tokenizer_of

#: What the Qwen processors and chat templates put where one image goes.
QWEN_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


def merge_size(processor: Any) -> int:
    """Patches per side folded into one language-model token (2 for every released model).

    Example:
        >>> class P: image_processor = type("IP", (), {"merge_size": 2})()
        >>> merge_size(P())
        2
    """
    return int(getattr(getattr(processor, "image_processor", None), "merge_size", None) or 2)


def merged_grids(inputs: dict[str, Any], merge: int) -> list[tuple[int, int]]:
    """``(rows, cols)`` of the merged token grid of every image in the batch, in processor order.

    Example:
        >>> merged_grids({"image_grid_thw": torch.tensor([[1, 6, 10], [1, 4, 4]])}, 2)
        [(3, 5), (2, 2)]
    """
    grids = inputs.get("image_grid_thw")
    if grids is None:
        return []
    out = []
    for t, h, w in torch.as_tensor(grids).tolist():
        # Still images are one temporal patch (the frame is repeated to fill temporal_patch_size).
        if t != 1:
            raise MmlensError(f"an image with {t} temporal patches: videos are not supported")
        if h % merge or w % merge:
            raise MmlensError(f"a {h}x{w} patch grid is not a multiple of the merge size {merge}")
        out.append((h // merge, w // merge))
    return out


@dataclass(frozen=True)
class QwenVLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL: one row-major merged grid per image, the whole image resized."""

    def layout(self, inputs: dict[str, Any], image_sizes: list[list[tuple[int, int]]], processor: Any) -> TokenLayout:
        """Where every token comes from; images are matched to ``image_grid_thw`` in prompt order.

        Example:
            >>> import mmlens
            >>> from PIL import Image
            >>> model = mmlens.load("tiny-qwen2.5-vl")
            >>> batch = model.prepare("<image> <image> what ?", [Image.new("RGB", (64, 64))] * 2)
            >>> [len(row) for row in batch.layout.images]
            [2]
        """
        token_id = tokenizer_of(processor).convert_tokens_to_ids(self.image_token)
        grids = iter(merged_grids(inputs, merge_size(processor)))
        images: list[list[ImageInfo]] = []
        tokens: list[list[tuple[int, int, int, int, int]]] = []
        for row, sizes in zip(inputs["input_ids"], image_sizes):
            # Consume image-pad positions grid by grid rather than by runs: robust even if
            # two images' pads ever sit side by side without vision_end/start between them.
            positions = (row == token_id).nonzero().flatten().tolist()
            row_images, row_tokens, used = [], [], 0
            for index, (height, width) in enumerate(sizes):
                rows, cols = next(grids, (0, 0))
                if rows == 0:
                    raise MmlensError(f"the processor returned fewer image grids than the {index + 1}th image needs")
                row_images.append(ImageInfo(size=(height, width), views=[
                    View(rows, cols, Box(0.0, 0.0, float(width), float(height)), kind="image")]))
                row_tokens += grid_tokens(positions[used:used + rows * cols], index, 0, rows, cols)
                used += rows * cols
            if used != len(positions):
                raise MmlensError(f"{len(positions)} {self.image_token} tokens but the image grids account for {used}")
            images.append(row_images)
            tokens.append(row_tokens)
        return layout_from_images(inputs, processor, self.image_token, images, tokens)


_COMMON: dict[str, Any] = dict(
    # transformers >= 4.52 nests the decoder and tower under ``model``; older ones did not.
    decoder_layers="model.language_model.layers|model.layers",
    final_norm="model.language_model.norm|model.norm",
    embed_tokens="model.language_model.embed_tokens|model.embed_tokens",
    vision_layers="model.visual.blocks|visual.blocks",
    vision_attn="attn",
    vision_attn_out="proj",
    vision_mlp="mlp",
    vision_probs=False,  # the tower's attention returns its output only, even in eager mode
    # The merger's own output is in attention-window order (Qwen2.5-VL); the tower's
    # pooler_output is the merged features in the order the decoder sees them.
    projector="model.visual|visual",
    projector_output="pooler_output",
    projector_neurons="merger.mlp.2",
    image_token="<|image_pad|>",
    processor_slot=QWEN_IMAGE_SLOT,
    positions_from_mask=False,  # M-RoPE positions come from the model's own rope index
)

QWEN2_VL = QwenVLAdapter(family="qwen2_vl", model_types=("qwen2_vl",), **_COMMON)
# Qwen2.5-VL's vision MLP is gated (gate_proj, up_proj, down_proj).
QWEN2_5_VL = QwenVLAdapter(family="qwen2_5_vl", model_types=("qwen2_5_vl",), **{**_COMMON, "vision_neurons": "mlp.down_proj"})
