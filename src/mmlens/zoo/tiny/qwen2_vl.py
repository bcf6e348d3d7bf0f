"""Tiny Qwen2-VL: native-resolution ViT with 2x2 patch merging and M-RoPE.

Images are resized to multiples of 28 (patch 14 x merge 2) within
``MIN_PIXELS``..``MAX_PIXELS``; each merged 2x2 block of patches is one
``<|image_pad|>`` token, in row-major order of the merged grid. A 64x64 image
gives a 2x2 merged grid (4 tokens); a 200x120 one gives 3 rows x 5 columns.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, token_ids

IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
EXAMPLE_PROMPT = (
    "<|im_start|>user\n"
    f"{IMAGE_SLOT}What is the colour of the shape in the image?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

PATCH_SIZE = 14  # fixed by the family: the processor resizes to multiples of patch * merge
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
TEXT_HIDDEN = 64
TEXT_HEADS = 4
# M-RoPE splits head_dim / 2 rotary frequencies into (temporal, height, width) sections.
MROPE_SECTION = [2, 3, 3]

SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (that one needs torchvision).

    Example:
        >>> TinyQwen2VLProcessor.get_attributes()
        ['image_processor', 'tokenizer']
    """

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


class TinyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor (that one needs torchvision).

    Example:
        >>> TinyQwen2_5_VLProcessor.get_attributes()
        ['image_processor', 'tokenizer']
    """

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """ChatML word-level tokenizer with Qwen's vision tokens (no BOS, like Qwen2).

    Example:
        >>> tok = build_qwen_tokenizer()
        >>> tok.bos_token is None
        True
    """
    return build_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        extra_tokens=["\n"],
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_image_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL PIL image processor with a pixel budget (small by default).

    Example:
        >>> build_image_processor().size["longest_edge"]
        12544
    """
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=PATCH_SIZE, merge_size=MERGE_SIZE
    )


def build_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> TinyQwen2VLProcessor:
    """Build the tiny Qwen2-VL processor.

    Example:
        >>> build_processor().image_token
        '<|image_pad|>'
    """
    return TinyQwen2VLProcessor(image_processor=build_image_processor(min_pixels, max_pixels),
                                tokenizer=build_qwen_tokenizer(), chat_template=CHAT_TEMPLATE)


def text_config(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Tiny Qwen2(.5)-VL text-config kwargs.

    Example:
        >>> sum(text_config(build_qwen_tokenizer())["rope_parameters"]["mrope_section"])
        8
    """
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": MROPE_SECTION},
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def vision_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The top-level config's image/video/vision start/end token ids.

    Example:
        >>> sorted(vision_token_ids(build_qwen_tokenizer()))[0]
        'image_token_id'
    """
    image, video, start, end = token_ids(
        tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    return {
        "image_token_id": image,
        "video_token_id": video,
        "vision_start_token_id": start,
        "vision_end_token_id": end,
    }


def build(
    seed: int = 0, attn_implementation: str = "sdpa", *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
    max_positions: int = 1024,
) -> tuple[Qwen2VLForConditionalGeneration, TinyQwen2VLProcessor]:
    """Build a tiny random-weight Qwen2-VL model and its processor.

    ``min_pixels`` and ``max_pixels`` bound the resized image, so its token
    count (:mod:`mmlens.zoo.tiny.real_geometry` passes the released
    checkpoints' budget); ``max_positions`` is the decoder's length limit.

    Example:
        >>> model, processor = build(seed=0)
        >>> model.config.vision_config.spatial_merge_size
        2
    """
    processor = build_processor(min_pixels, max_pixels)
    tokenizer = processor.tokenizer
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": TEXT_HIDDEN,  # the merger projects into the text width
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
        },
        text_config={**text_config(tokenizer), "max_position_embeddings": max_positions},
        **vision_token_ids(tokenizer),
    )
    model = instantiate(Qwen2VLForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation)
    return model, processor
