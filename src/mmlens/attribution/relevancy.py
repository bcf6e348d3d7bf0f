"""Relevancy propagation for decoder-only VLMs (Chefer et al., 2021).

Start with ``R = I``; for each layer in forward order,
``A_bar = mean_heads(clamp(dA * A, min=0))`` with ``dA`` the gradient of the
target score with respect to that layer's attention probabilities, then
``R = R + A_bar @ R``. The explanation is ``R[target]``. One forward pass,
then one backward pass per target token.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> relevancy(model, targets).scores.shape[-1] == targets.batch.input_ids.shape[1]
    True
"""

from __future__ import annotations

import torch

from mmlens.attribution.base import Attribution, causal_cut, empty_scores
from mmlens.hooks import capture
from mmlens.model import Model
from mmlens.readout import Targets


def relevancy(model: Model, targets: Targets) -> Attribution:
    """Gradient-weighted attention relevancy from each answer position."""
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    scores = empty_scores(targets)
    with torch.enable_grad(), capture(model, sites, grads=True) as captured:
        logits = model.forward(targets.batch, use_cache=False).logits
        for j in range(targets.count):
            score = targets.scores(logits[:, targets.positions[j]], j)
            score.sum().backward(retain_graph=j + 1 < targets.count)
            relevance = _propagate([captured[s] for s in sites], [captured.grad(s) for s in sites])
            scores[:, j] = relevance[:, targets.positions[j]].float().cpu()
    return Attribution(causal_cut(scores, targets))


def _propagate(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """``R <- R + mean_heads((dA * A)+) @ R`` over layers, from ``R = I``; ``(batch, seq, seq)``."""
    batch, _, seq, _ = probs[0].shape
    relevance = torch.eye(seq, dtype=torch.float64, device=probs[0].device).expand(batch, seq, seq).clone()
    for attention, gradient in zip(probs, grads):
        weighted = (gradient.double() * attention.double()).clamp(min=0).mean(1)
        relevance = relevance + weighted @ relevance
    return relevance
