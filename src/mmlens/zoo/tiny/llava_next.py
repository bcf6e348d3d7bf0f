"""Tiny LLaVA-NeXT: anyres tiling with unpadding and an ``image_newline`` vector.

Each image is resized onto the best of a few small grid pinpoints (tiles of
32x32 pixels, 4x4 patch features each) and also downscaled whole to one base
tile. The ``<image>`` run holds the base tile's 16 features first, then the
tiles' features merged into one (rows x cols) grid of patch features, unpadded
to the image's aspect ratio, with the learned ``image_newline`` vector after
every row.
"""

from __future__ import annotations

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, llama_text_config, token_ids, vision_config
from mmlens.zoo.tiny.llava import CHAT_TEMPLATE

IMAGE_SLOT = "<image>"
EXAMPLE_PROMPT = "USER: <image>\nWhat is the colour of the shape in the image? ASSISTANT:"

TILE_SIZE = 32
PATCH_SIZE = 8
# Small pinpoints so that a 64x64 image tiles 2x2 and a wide image gets unpadded rows.
GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def build_processor(tile_size: int = TILE_SIZE, patch_size: int = PATCH_SIZE,
                    grid_pinpoints: list[list[int]] | None = None) -> LlavaNextProcessor:
    """Build the tiny LLaVA-NeXT processor (PIL image processor, word-level tokenizer).

    ``tile_size``, ``patch_size`` and ``grid_pinpoints`` (default
    ``GRID_PINPOINTS``) set the image geometry.

    Example:
        >>> build_processor().image_processor.image_grid_pinpoints[-1]
        [64, 64]
    """
    tokenizer = build_tokenizer(special_tokens=[IMAGE_SLOT], extra_tokens=["\n"], chat_template=CHAT_TEMPLATE)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile_size},
        crop_size={"height": tile_size, "width": tile_size},
        image_grid_pinpoints=grid_pinpoints or GRID_PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, then dropped by "default"
        chat_template=CHAT_TEMPLATE,
    )


def build(
    seed: int = 0, attn_implementation: str = "sdpa", *, tile_size: int = TILE_SIZE, patch_size: int = PATCH_SIZE,
    grid_pinpoints: list[list[int]] | None = None, max_positions: int = 1024,
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """Build a tiny random-weight LLaVA-NeXT model and its processor.

    ``tile_size``, ``patch_size`` and ``grid_pinpoints`` set the image
    geometry (:mod:`mmlens.zoo.tiny.real_geometry` passes a released
    checkpoint's) and ``max_positions`` the decoder's length limit; the
    towers stay tiny.

    Example:
        >>> model, processor = build(seed=0)
        >>> tuple(model.model.image_newline.shape)
        (64,)
    """
    pinpoints = grid_pinpoints or GRID_PINPOINTS
    processor = build_processor(tile_size, patch_size, pinpoints)
    tokenizer = processor.tokenizer
    (image_token_id,) = token_ids(tokenizer, IMAGE_SLOT)
    config = LlavaNextConfig(
        vision_config=vision_config("clip_vision_model", tile_size, patch_size),
        text_config=llama_text_config(len(tokenizer), tokenizer, max_position_embeddings=max_positions),
        image_token_index=image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(tile_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(LlavaNextForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation)
    return model, processor
