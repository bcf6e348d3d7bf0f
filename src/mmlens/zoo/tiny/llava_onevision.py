"""Tiny LLaVA-OneVision: SigLIP tower (no CLS), anyres tiling, Qwen2 decoder.

Token layout as in LLaVA-NeXT: the base tile's 16 features first, then the
unpadded grid of tile features with ``image_newline`` after every row. A prompt
with several images skips tiling (one padded-to-square tile plus one newline
per image).
"""

from __future__ import annotations

from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, llama_text_config, token_ids, vision_config

IMAGE_SLOT = "<image>"
EXAMPLE_PROMPT = (
    "<|im_start|>user <image>\nWhat is the colour of the shape in the image?<|im_end|>\n<|im_start|>assistant\n"
)

TILE_SIZE = 32
PATCH_SIZE = 8
GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]

# ChatML as in llava-hf's OneVision checkpoints: images first, then the text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TinyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without a video processor (that one needs torchvision).

    Example:
        >>> TinyLlavaOnevisionProcessor.get_attributes()
        ['image_processor', 'tokenizer']
    """

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


def build_processor() -> TinyLlavaOnevisionProcessor:
    """Build the tiny OneVision processor (PIL image processor, word-level ChatML tokenizer).

    Example:
        >>> build_processor().num_image_tokens
        16
    """
    tokenizer = build_tokenizer(
        special_tokens=[IMAGE_SLOT, "<video>", "<|im_start|>", "<|im_end|>"],
        extra_tokens=["\n"],
        bos_token=None,  # Qwen2 tokenizers add no BOS
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TILE_SIZE, "width": TILE_SIZE}, image_grid_pinpoints=GRID_PINPOINTS
    )
    return TinyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(TILE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",  # SigLIP has no CLS to drop
        chat_template=CHAT_TEMPLATE,
    )


def build(
    seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[LlavaOnevisionForConditionalGeneration, TinyLlavaOnevisionProcessor]:
    """Build a tiny random-weight LLaVA-OneVision model and its processor.

    Example:
        >>> model, processor = build(seed=0)
        >>> model.config.vision_feature_select_strategy
        'full'
    """
    processor = build_processor()
    tokenizer = processor.tokenizer
    image_token_id, video_token_id = token_ids(tokenizer, IMAGE_SLOT, "<video>")
    text_config = llama_text_config(len(tokenizer), tokenizer, model_type="qwen2", bos_token_id=None)
    config = LlavaOnevisionConfig(
        vision_config=vision_config("siglip_vision_model", TILE_SIZE, PATCH_SIZE),
        text_config=text_config,
        image_token_index=image_token_id,
        video_token_index=video_token_id,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(
        LlavaOnevisionForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation
    )
    return model, processor
