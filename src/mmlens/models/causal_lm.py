"""Text-only causal language models (LLaMA, Qwen2, Mistral, GPT-2 style).

The same tools serve the language model alone: every position is text or special.
"""

from __future__ import annotations

from mmlens.models.adapter import Adapter

LLAMA_STYLE = Adapter(
    family="causal-lm",
    model_types=("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo", "olmo2", "smollm3"),
    decoder_layers="model.layers",
    final_norm="model.norm",
    embed_tokens="model.embed_tokens",
)

GPT2_STYLE = Adapter(
    family="gpt2",
    model_types=("gpt2",),
    decoder_layers="transformer.h",
    final_norm="transformer.ln_f",
    embed_tokens="transformer.wte",
    attn="attn",
    attn_out="c_proj",
    mlp="mlp",
    neurons="mlp.c_proj",
    mlp_gate=None,
    mlp_act=None,
)
