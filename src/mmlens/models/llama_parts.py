"""The parts of a LLaMA-style decoder layer, as transformers names them, for methods that recompute layers by hand.

Circuit methods (:mod:`mmlens.circuits`) run the decoder node by node from the
model's own modules and weights. What they need to know about transformers'
decoder layers lives here: the module names (``input_layernorm``,
``self_attn.q_proj`` ... ``o_proj``, ``post_attention_layernorm``, ``mlp``),
the attention's geometry attributes, the rotary embedding (the language model's
``rotary_emb`` and the attention module's own ``apply_rotary_pos_emb``), how an
RMSNorm scales (Gemma's stores ``weight - 1``) and what mask a recorded call
carries (a 2-D padding mask, or PaliGemma's own 4-D prefix mask).

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> parts = decoder_parts(model)
    >>> parts.layers[0].q.out_features == parts.n_heads * parts.head_dim
    True
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mmlens.errors import MmlensError
from mmlens.model import Model
from mmlens.models.decoder import language_model_path

#: ``(q, k, cos, sin) -> (q, k)`` rotated, as the attention module's own file defines it.
Rotate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LayerParts:
    """One decoder layer: RMSNorm, attention (q/k/v/o projections), RMSNorm, MLP, in that order."""

    attn_norm: nn.Module
    attn: nn.Module
    mlp_norm: nn.Module
    mlp: nn.Module

    @property
    def q(self) -> nn.Linear:
        return self.attn.q_proj

    @property
    def k(self) -> nn.Linear:
        return self.attn.k_proj

    @property
    def v(self) -> nn.Linear:
        return self.attn.v_proj

    @property
    def o(self) -> nn.Linear:
        return self.attn.o_proj


@dataclass(frozen=True)
class DecoderParts:
    """A LLaMA-style decoder's layers, final norm, unembedding, attention geometry and rotary embedding."""

    layers: list[LayerParts]
    final_norm: nn.Module
    unembed: nn.Module
    n_heads: int
    head_dim: int
    groups: int  # query heads per key/value head
    scaling: float
    rotate: Rotate
    language_model: nn.Module

    def rotary(self, embeds: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``cos, sin`` for a recorded call's positions (M-RoPE's 3-row ids included), or 0..seq-1."""
        positions = kwargs.get("position_ids")
        if not isinstance(positions, torch.Tensor):
            positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        cos, sin = self.language_model.rotary_emb(embeds, positions)
        return cos.float(), sin.float()


def decoder_parts(model: Model) -> DecoderParts:
    """The parts of ``model``'s decoder; one line naming the layer class when it is not LLaMA-style.

    Example:
        >>> decoder_parts(mmlens.load("tiny-llama")).n_heads  # doctest: +SKIP
        4
    """
    adapter = model.adapter
    lm = model.module(language_model_path(model))
    first = model.decoder_layers[0]
    attn = getattr(first, adapter.attn, None)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    norms = [getattr(first, "input_layernorm", None), getattr(first, "post_attention_layernorm", None),
             model.module(adapter.final_norm)]
    sandwich = [n for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm") if hasattr(first, n)]
    if (attn is None or not all(isinstance(getattr(attn, n, None), nn.Linear) for n in projections)
            or not all(is_rms_norm(n) for n in norms) or sandwich or getattr(lm, "rotary_emb", None) is None):
        raise MmlensError(f"{adapter.family}: circuits support LLaMA-style decoders only (RMSNorm before "
                          "attention and MLP, q/k/v/o projections, rotary positions); this decoder is "
                          f"{type(first).__name__}")
    rotate = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rotate is None:
        raise MmlensError(f"{adapter.family}: circuits cannot find the rotary embedding of {type(attn).__name__}")
    layers = [LayerParts(layer.input_layernorm, getattr(layer, adapter.attn), layer.post_attention_layernorm, layer.mlp)
              for layer in model.decoder_layers]
    return DecoderParts(layers, norms[2], model.module(adapter.unembed), int(attn.config.num_attention_heads),
                        int(attn.head_dim), int(getattr(attn, "num_key_value_groups", 1)), float(attn.scaling),
                        rotate, lm)


def is_rms_norm(module: nn.Module | None) -> bool:
    """An RMSNorm: an epsilon, a weight, no bias (LayerNorm has a bias; sandwich norms are refused apart)."""
    return (module is not None and (hasattr(module, "variance_epsilon") or hasattr(module, "eps"))
            and getattr(module, "bias", None) is None and isinstance(getattr(module, "weight", None), nn.Parameter))


def norm_weight(norm: nn.Module) -> torch.Tensor:
    """What an RMSNorm multiplies the normalised input by, in fp32: ``weight``, or ``1 + weight`` for Gemma's.

    Example:
        >>> norm_weight(model.decoder_layers[0].input_layernorm).shape  # doctest: +SKIP
        torch.Size([64])
    """
    weight = norm.weight.float()
    return 1.0 + weight if "Gemma" in type(norm).__name__ else weight  # Gemma stores the offset from one


def rms_scale(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``1 / rms(x)`` over the hidden axis in fp32, with the norm's own epsilon.

    Example:
        >>> rms_scale(torch.full((1, 4), 2.0), torch.nn.RMSNorm(4, eps=0.0))
        tensor([[0.5000]])
    """
    eps = getattr(norm, "variance_epsilon", None)
    return torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + (norm.eps if eps is None else eps))


def additive_mask(embeds: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The recorded call's attention mask as fp32 additions ``(rows, 1, seq, seq)``: 0 allowed, -inf-like not.

    Causal, minus padding (a 2-D mask); or the model's own 4-D mask as it is
    (PaliGemma's, bidirectional over the prefix). Padded rows attend to
    themselves, so that no softmax row is empty.

    Example:
        >>> additive_mask(torch.zeros(1, 3, 8), {})[0, 0, 0].tolist()[1] < -1e30
        True
    """
    rows, seq = embeds.shape[:2]
    allowed = torch.ones(seq, seq, dtype=torch.bool, device=embeds.device).tril()[None].expand(rows, -1, -1)
    padding = kwargs.get("attention_mask")
    if isinstance(padding, torch.Tensor) and padding.ndim == 2:
        allowed = allowed & padding.bool()[:, None, :]
    elif isinstance(padding, torch.Tensor) and padding.ndim == 4:
        full = padding if padding.dtype == torch.bool else padding == 0
        allowed = full[:, 0, -seq:, -seq:].expand(rows, -1, -1)
    allowed = allowed | torch.eye(seq, dtype=torch.bool, device=embeds.device)
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
