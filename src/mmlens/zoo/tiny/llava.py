"""Tiny LLaVA-1.5: CLIP vision tower, two-layer MLP projector, LLaMA decoder.

A 32x32 CLIP input with 8-pixel patches gives 16 patch features (the CLS
feature is dropped by the ``default`` select strategy), so every image becomes
a contiguous run of 16 ``<image>`` tokens whatever its size: the processor
resizes the short edge to 32 and centre-crops.
"""

from __future__ import annotations

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, llama_text_config, token_ids, vision_config

IMAGE_SLOT = "<image>"
EXAMPLE_PROMPT = "USER: <image>\nWhat is the colour of the shape in the image? ASSISTANT:"

IMAGE_SIZE = 32
PATCH_SIZE = 8

# Same shape as llava-hf's template: "USER: <image>\n<text> ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_processor() -> LlavaProcessor:
    """Build the tiny LLaVA processor (PIL image processor, word-level tokenizer).

    Example:
        >>> processor = build_processor()
        >>> processor.image_processor.crop_size["height"]
        32
    """
    tokenizer = build_tokenizer(special_tokens=[IMAGE_SLOT], extra_tokens=["\n"], chat_template=CHAT_TEMPLATE)
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, then dropped by "default"
        chat_template=CHAT_TEMPLATE,
    )


def build(seed: int = 0, attn_implementation: str = "sdpa") -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build a tiny random-weight LLaVA-1.5 model and its processor.

    Example:
        >>> model, processor = build(seed=0)
        >>> model.config.image_seq_length
        16
    """
    processor = build_processor()
    tokenizer = processor.tokenizer
    (image_token_id,) = token_ids(tokenizer, IMAGE_SLOT)
    config = LlavaConfig(
        vision_config=vision_config("clip_vision_model", IMAGE_SIZE, PATCH_SIZE),
        text_config=llama_text_config(len(tokenizer), tokenizer),
        image_token_index=image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(LlavaForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation)
    return model, processor
