"""Tiny towers and decoders behind released checkpoints' image geometry: real token counts, random weights.

The tiny families keep their images small (a 64x64 image is 16 to 95
tokens). These two builders keep the tiny towers and decoder but take a
released checkpoint's image geometry, so that a large image gives the
sequence lengths users meet (issue 13's long sequences):

- :func:`llava_next`: LLaVA-v1.6's anyres tiling, 336 px tiles of 14 px
  patches (576 features a tile) and its five grid pinpoints. A 672x672 image
  is the base tile plus a 2x2 grid of tiles: 2,880 image tokens (576 and a
  48x48 grid), and a newline after each of the grid's 48 rows.
- :func:`qwen2_vl`: Qwen2-VL's native resolution with the released pixel
  budget (3,136 to 12,845,056 pixels). A 1512x1512 image is 54x54 merged
  patches: 2,916 image tokens.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> import mmlens
    >>> model = mmlens.load("tiny-qwen2-vl-real-geometry")
    >>> image = Image.fromarray(np.zeros((1512, 1512, 3), np.uint8))
    >>> int(model.prepare("<image> what is this?", [image]).layout.mask(mmlens.Modality.IMAGE).sum())
    2916
"""

from __future__ import annotations

from transformers import LlavaNextForConditionalGeneration, Qwen2VLForConditionalGeneration

from mmlens.zoo.tiny import llava_next as tiny_llava_next
from mmlens.zoo.tiny import qwen2_vl as tiny_qwen2_vl

#: llava-hf/llava-v1.6-*-hf: CLIP ViT-L/14 at 336 px, and these grid pinpoints.
LLAVA_V16_TILE_SIZE = 336
LLAVA_V16_PATCH_SIZE = 14
LLAVA_V16_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
#: Qwen/Qwen2-VL-*-Instruct's preprocessor_config.json (patch 14 and merge 2 are the family's, as in the tiny one).
QWEN2_VL_MIN_PIXELS = 3136
QWEN2_VL_MAX_PIXELS = 12_845_056
#: Both released decoders' max_position_embeddings (LLaVA-v1.6-Mistral's and Qwen2-VL's).
MAX_POSITIONS = 32_768


def llava_next(seed: int = 0, attn_implementation: str = "sdpa") -> tuple[LlavaNextForConditionalGeneration, object]:
    """Tiny LLaVA-NeXT with LLaVA-v1.6's image geometry.

    Example:
        >>> model, processor = llava_next()
        >>> processor.image_processor.image_grid_pinpoints[2]
        [672, 672]
    """
    return tiny_llava_next.build(seed, attn_implementation, tile_size=LLAVA_V16_TILE_SIZE,
                                 patch_size=LLAVA_V16_PATCH_SIZE, grid_pinpoints=LLAVA_V16_GRID_PINPOINTS,
                                 max_positions=MAX_POSITIONS)


def qwen2_vl(seed: int = 0, attn_implementation: str = "sdpa") -> tuple[Qwen2VLForConditionalGeneration, object]:
    """Tiny Qwen2-VL with the released checkpoints' pixel budget.

    Example:
        >>> model, processor = qwen2_vl()
        >>> processor.image_processor.max_pixels
        12845056
    """
    return tiny_qwen2_vl.build(seed, attn_implementation, min_pixels=QWEN2_VL_MIN_PIXELS,
                               max_pixels=QWEN2_VL_MAX_PIXELS, max_positions=MAX_POSITIONS)
