"""Tiny PaliGemma: SigLIP tower, linear projector, Gemma decoder with a bidirectional prefix.

Every image is resized to 32x32 (no aspect preservation), giving 16 patch
tokens. The processor builds ``<image> x 16, <bos>, prompt, "\\n"``: the image
run must lead the prompt, because ``<bos>`` is inserted right after the last
``<image>``. ``token_type_ids`` are 0 over the image + prompt prefix (attended
bidirectionally) and 1 for suffix/generated tokens.
"""

from __future__ import annotations

from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, token_ids, vision_config

# The processor also accepts text with no "<image>" (it then prepends one per
# image, with a warning); with the slot, it must come first.
IMAGE_SLOT = "<image>"
EXAMPLE_PROMPT = "<image>What is the colour of the shape in the image?"

IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2
TEXT_HIDDEN = 64


def build_processor() -> PaliGemmaProcessor:
    """Build the tiny PaliGemma processor; it adds 1,024 ``<locXXXX>`` and 128 ``<segXXX>`` tokens.

    Example:
        >>> processor = build_processor()
        >>> processor.image_seq_length, "<loc0000>" in processor.tokenizer.get_vocab()
        (16, True)
    """
    tokenizer = build_tokenizer(
        special_tokens=[IMAGE_SLOT], extra_tokens=["\n"], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # PaliGemmaProcessor reads the image run length from the image processor.
    image_processor.image_seq_length = IMAGE_SEQ_LENGTH
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build(
    seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """Build a tiny random-weight PaliGemma model and its processor.

    Example:
        >>> model, processor = build(seed=0)
        >>> model.config.text_config.vocab_size == len(processor.tokenizer)
        True
    """
    processor = build_processor()
    tokenizer = processor.tokenizer
    (image_token_id,) = token_ids(tokenizer, IMAGE_SLOT)
    vocab_size = len(tokenizer)  # only after the processor added its location/segmentation tokens
    config = PaliGemmaConfig(
        vision_config=vision_config("siglip_vision_model", IMAGE_SIZE, PATCH_SIZE),
        text_config={
            "model_type": "gemma",
            "vocab_size": vocab_size,
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": TEXT_HIDDEN // 4,
            "max_position_embeddings": 1024,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=image_token_id,
        vocab_size=vocab_size,
        projection_dim=TEXT_HIDDEN,
        hidden_size=TEXT_HIDDEN,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(
        PaliGemmaForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation
    )
    return model, processor
