"""Tiny text-only GPT-2 (learned positions, fused ``c_attn``, LayerNorm); its "processor" is the tokenizer.

The second text-only layout mmlens supports beside LLaMA-style decoders:
its blocks live under ``transformer.h`` and its MLP is ``c_fc`` / ``c_proj``.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from mmlens.zoo.tiny._common import build_tokenizer, instantiate
from mmlens.zoo.tiny.llama import CHAT_TEMPLATE

IMAGE_SLOT: str | None = None  # text-only: no image slot
EXAMPLE_PROMPT = "USER: What is the colour of the sky? ASSISTANT:"


def build(seed: int = 0, attn_implementation: str = "sdpa") -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Build a tiny random-weight GPT-2 and its tokenizer.

    Example:
        >>> model, tokenizer = build(seed=0)
        >>> model.config.n_layer
        2
    """
    tokenizer = build_tokenizer(extra_tokens=["\n"], chat_template=CHAT_TEMPLATE)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = instantiate(GPT2LMHeadModel, config, seed=seed, attn_implementation=attn_implementation)
    return model, tokenizer
