"""The LLaMA-style decoder parts that circuit methods recompute by hand."""

import pytest
import torch

import mmlens
from mmlens.errors import MmlensError
from mmlens.models.llama_parts import additive_mask, decoder_parts, is_rms_norm, norm_weight, rms_scale


def test_parts_are_the_model_s_own_modules():
    model = mmlens.load("tiny-llama")
    parts = decoder_parts(model)
    layer = model.decoder_layers[1]
    assert parts.layers[1].attn_norm is layer.input_layernorm and parts.layers[1].mlp is layer.mlp
    assert parts.layers[1].o is layer.self_attn.o_proj
    assert parts.layers[0].q.out_features == parts.n_heads * parts.head_dim
    assert len(parts.layers) == model.n_layers


def test_a_layernorm_decoder_is_refused_in_one_line():
    model = mmlens.load("tiny-llama")
    layer = model.decoder_layers[0]
    layer.input_layernorm = torch.nn.LayerNorm(layer.input_layernorm.weight.shape[0])
    with pytest.raises(MmlensError, match="LLaMA-style decoders only"):
        decoder_parts(model)


def test_rms_scale_and_weight_match_the_model_s_norm():
    norm = mmlens.load("tiny-llama").decoder_layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, norm.weight.shape[0])
    assert is_rms_norm(norm)
    torch.testing.assert_close(x * rms_scale(x, norm) * norm_weight(norm), norm(x))


def test_gemma_norm_scales_by_one_plus_weight():
    Gemma = type("GemmaRMSNorm", (torch.nn.Module,), {})
    norm = Gemma()
    norm.weight, norm.eps = torch.nn.Parameter(torch.tensor([0.0, 1.0])), 1e-6
    assert is_rms_norm(norm)
    assert norm_weight(norm).tolist() == [1.0, 2.0]


def test_mask_is_causal_minus_padding_and_never_empty():
    mask = additive_mask(torch.zeros(1, 3, 4), {"attention_mask": torch.tensor([[0, 1, 1]])})[0, 0] == 0
    assert mask.tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    prefix = torch.ones(1, 1, 3, 3, dtype=torch.bool)  # a model's own bidirectional 4-D mask is used as it is
    assert bool((additive_mask(torch.zeros(2, 3, 4), {"attention_mask": prefix}) == 0).all())
