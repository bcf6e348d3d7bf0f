"""Tiny models for the circuit tests: the shared ones, and a linear-ised copy of tiny-llama."""

import pytest
import torch

import mmlens


@pytest.fixture(scope="module")
def linear_llama() -> mmlens.Model:
    """tiny-llama made linear in its input embeddings.

    Zero queries and keys give uniform causal attention whatever the input,
    zero down projections silence the MLPs, and a huge RMSNorm epsilon makes
    every norm a constant scale (weights scaled up to keep magnitudes).
    """
    model = mmlens.load("tiny-llama")
    with torch.no_grad():
        for layer in model.decoder_layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        norms = [n for layer in model.decoder_layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        for norm in norms + [model.module(model.adapter.final_norm)]:
            norm.variance_epsilon = 1e8
            norm.weight.mul_(1e4)
    return model


@pytest.fixture(scope="module")
def uniform_llama() -> mmlens.Model:
    """tiny-llama whose attention is uniform whatever the input (zero queries and keys); norms and MLPs untouched."""
    model = mmlens.load("tiny-llama")
    with torch.no_grad():
        for layer in model.decoder_layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
    return model
