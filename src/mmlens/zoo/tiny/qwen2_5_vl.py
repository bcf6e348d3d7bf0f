"""Tiny Qwen2.5-VL: like Qwen2-VL, with windowed vision attention and an RMSNorm/SwiGLU ViT.

Image token layout is identical to Qwen2-VL (one ``<|image_pad|>`` per merged
2x2 patch block, row-major, between ``<|vision_start|>`` and
``<|vision_end|>``). Inside the vision tower patches are reordered into
windows and restored before the merger, so the image tokens come out in the
same row-major order.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mmlens.zoo.tiny._common import instantiate
from mmlens.zoo.tiny.qwen2_vl import (
    CHAT_TEMPLATE,
    EXAMPLE_PROMPT,
    IMAGE_SLOT,
    MERGE_SIZE,
    PATCH_SIZE,
    TEXT_HIDDEN,
    TinyQwen2_5_VLProcessor,
    build_image_processor,
    build_qwen_tokenizer,
    text_config,
    vision_token_ids,
)

__all__ = ["EXAMPLE_PROMPT", "IMAGE_SLOT", "build", "build_processor"]

# 56-pixel windows = 2x2 merged tokens, so a 200x120 image spans several windows.
WINDOW_SIZE = 56


def build_processor() -> TinyQwen2_5_VLProcessor:
    """Build the tiny Qwen2.5-VL processor.

    Example:
        >>> build_processor().image_token
        '<|image_pad|>'
    """
    return TinyQwen2_5_VLProcessor(
        image_processor=build_image_processor(), tokenizer=build_qwen_tokenizer(), chat_template=CHAT_TEMPLATE
    )


def build(
    seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[Qwen2_5_VLForConditionalGeneration, TinyQwen2_5_VLProcessor]:
    """Build a tiny random-weight Qwen2.5-VL model and its processor.

    Example:
        >>> model, processor = build(seed=0)
        >>> model.config.vision_config.fullatt_block_indexes
        [1]
    """
    processor = build_processor()
    tokenizer = processor.tokenizer
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
            "window_size": WINDOW_SIZE,
            "fullatt_block_indexes": [1],  # layer 0 windowed, layer 1 full, as in the real model's mix
            "tokens_per_second": 2,
        },
        text_config=text_config(tokenizer),
        **vision_token_ids(tokenizer),
    )
    model = instantiate(
        Qwen2_5_VLForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation
    )
    return model, processor
