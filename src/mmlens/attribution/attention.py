"""Raw attention: how much the answer position attends to each token, per layer and head.

Averaged over heads, then over a layer range (all layers by default). Only
the answer positions' rows are computed, at the layers asked for
(``capture(..., query=positions)``): no layer holds a full attention map.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> attention(model, targets).scores.shape[:2]
    torch.Size([1, 1])
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmlens.attribution.base import Attribution, causal_cut, layer_indices
from mmlens.hooks import capture
from mmlens.model import Model
from mmlens.models.runtime import last_logits_only
from mmlens.readout import Targets


def attention_maps(model: Model, targets: Targets, rows: torch.Tensor | None = None,
                   layers: int | slice | Sequence[int] | None = None, mean_heads: bool = False) -> torch.Tensor:
    """Attention probabilities of ``layers`` (all by default; an index, a list or a slice),
    ``(layers, batch, heads, rows, seq)``.

    Only the query ``rows`` asked for are computed (all when None), and only at
    those layers; ``mean_heads`` averages heads as rows are computed (the head axis goes).
    """
    indices = layer_indices(model, layers, "attention")
    sites = [f"lm.L{i}.attn_probs" for i in indices]
    query = None if rows is None else [int(r) for r in rows]
    with torch.no_grad(), capture(model, sites, query=query, mean_heads=mean_heads) as captured:
        model.forward(targets.batch, use_cache=False, **last_logits_only(model.hf))  # no (seq, vocab) logits
    return torch.stack([captured[site].float().cpu() for site in sites])


def attention(model: Model, targets: Targets, layers: int | slice | Sequence[int] | None = None,
              keep_heads: bool = False) -> Attribution:
    """Mean over heads and ``layers`` (all by default; an index, a list or a slice) of the attention from each
    answer position."""
    from_targets = attention_maps(model, targets, targets.positions, layers)  # (layers, batch, heads, n, seq)
    per_layer = from_targets.mean(2).permute(1, 2, 0, 3)  # (batch, n, layers, seq)
    extras = {"per_layer": per_layer}
    if keep_heads:
        extras["per_layer_head"] = from_targets.permute(1, 3, 0, 2, 4)  # (batch, n, layers, heads, seq)
    return Attribution(causal_cut(per_layer.mean(2), targets), extras)
