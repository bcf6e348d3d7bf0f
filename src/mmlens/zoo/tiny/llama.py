"""Tiny text-only LLaMA; its "processor" is the tokenizer itself.

Example prompts tokenize to ``<s>`` followed by one token per word or
punctuation mark.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mmlens.zoo.tiny._common import build_tokenizer, instantiate, llama_text_config

IMAGE_SLOT: str | None = None  # text-only: no image slot
EXAMPLE_PROMPT = "USER: What is the colour of the sky? ASSISTANT:"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' + message['content'] + ' ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build(seed: int = 0, attn_implementation: str = "sdpa") -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build a tiny random-weight LLaMA and its tokenizer.

    Example:
        >>> model, tokenizer = build(seed=0)
        >>> model.config.num_hidden_layers
        2
    """
    tokenizer = build_tokenizer(extra_tokens=["\n"], chat_template=CHAT_TEMPLATE)
    config_kwargs = llama_text_config(len(tokenizer), tokenizer)
    config_kwargs.pop("model_type")
    config = LlamaConfig(**config_kwargs)
    model = instantiate(LlamaForCausalLM, config, seed=seed, attn_implementation=attn_implementation)
    return model, tokenizer
