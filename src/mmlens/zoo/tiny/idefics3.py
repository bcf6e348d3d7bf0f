"""Tiny Idefics3 (SmolVLM-style): image splitting into tiles plus a global view, pixel shuffle.

The processor rescales the image's longest edge to ``RESIZE_LONGEST`` (96),
rounds both sides up to multiples of the tile size (32) and cuts tiles, then
adds the whole image downscaled to one tile. Each tile is encoded separately
and pixel-shuffled (scale factor 2) into ``IMAGE_SEQ_LEN`` = 4 tokens. The
prompt's single ``<image>`` expands to, per tile row r and column c,
``<fake_token_around_image><row_r_col_c>`` + 4 x ``<image>``, a ``\\n`` after
each row, then ``\\n<fake_token_around_image><global-img>`` + 4 x ``<image>``
+ ``<fake_token_around_image>``. A 64x64 image gives 3x3 tiles; a 200x120 one
gives 2 rows x 3 columns.
"""

from __future__ import annotations

from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, llama_text_config, token_ids

IMAGE_SLOT = "<image>"
EXAMPLE_PROMPT = "User:<image>What is the colour of the shape in the image?<end_of_utterance>\nAssistant:"

TILE_SIZE = 32
PATCH_SIZE = 8
SCALE_FACTOR = 2
RESIZE_LONGEST = 3 * TILE_SIZE  # three tiles on the long side, so a 5:3 image gets 2x3 tiles
IMAGE_SEQ_LEN = (TILE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
# The processor looks up <row_i_col_j> for i, j in 1..6.
ROW_COL_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
SPECIAL_TOKENS = ["<fake_token_around_image>", IMAGE_SLOT, "<end_of_utterance>", "<global-img>", *ROW_COL_TOKENS]

# SmolVLM's template: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:".
# The BOS (<|im_start|>) comes from the tokenizer, not the template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ':' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image>' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_utterance>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_processor() -> Idefics3Processor:
    """Build the tiny Idefics3 processor (PIL image processor, word-level tokenizer).

    Example:
        >>> build_processor().image_seq_len
        4
    """
    tokenizer = build_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        extra_tokens=["\n"],
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": RESIZE_LONGEST}, max_image_size={"longest_edge": TILE_SIZE}
    )
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE
    )


def build(
    seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """Build a tiny random-weight Idefics3 model and its processor.

    Example:
        >>> model, processor = build(seed=0)
        >>> model.config.scale_factor
        2
    """
    processor = build_processor()
    tokenizer = processor.tokenizer
    (image_token_id,) = token_ids(tokenizer, IMAGE_SLOT)
    config = Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TILE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        text_config=llama_text_config(len(tokenizer), tokenizer),
        image_token_id=image_token_id,
        scale_factor=SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(Idefics3ForConditionalGeneration, config, seed=seed, attn_implementation=attn_implementation)
    return model, processor
