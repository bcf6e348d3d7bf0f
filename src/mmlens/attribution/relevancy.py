"""Relevancy propagation for decoder-only VLMs (Chefer et al., 2021).

Start with ``R = I``; for each layer in forward order,
``A_bar = mean_heads(clamp(dA * A, min=0))`` with ``dA`` the gradient of the
target score with respect to that layer's attention probabilities, then
``R = R + A_bar @ R``. The explanation is ``R[target]``, carried as a row
from the last layer down. One forward pass, then one backward pass per target
token; the decoder layers run eagerly (their probabilities in the graph), the
vision tower keeps SDPA.

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
    # Capturing the decoder input with grads makes it a leaf that requires grad, so the
    # probabilities are in the graph even when the user froze every weight.
    with torch.enable_grad(), capture(model, [*sites, "lm.embed"], grads=True) as captured:
        logits = model.forward(targets.batch, use_cache=False).logits
        for j in range(targets.count):
            score = targets.scores(logits[:, targets.positions[j]], j)
            score.sum().backward(retain_graph=j + 1 < targets.count)
            row = _propagate([captured[s] for s in sites], [captured.grad(s) for s in sites], targets.positions[j])
            scores[:, j] = row.float().cpu()
    return Attribution(causal_cut(scores, targets))


def _propagate(probs: list[torch.Tensor], grads: list[torch.Tensor], position: int) -> torch.Tensor:
    """Row ``position`` of ``R = (I + A_bar_L) ... (I + A_bar_1)``, ``A_bar = mean_heads((dA * A)+)``; ``(batch, seq)``.

    The same as ``R <- R + A_bar @ R`` over layers from ``R = I``, read at one
    row, but carried as a row vector from the last layer down: no ``(seq, seq)``
    relevance matrix and no ``seq^3`` products.
    """
    batch, _, _, seq = probs[0].shape
    row = torch.zeros(batch, 1, seq, dtype=torch.float64, device=probs[0].device)
    row[:, 0, position] = 1.0
    for attention, gradient in zip(reversed(probs), reversed(grads)):
        weighted = (gradient.double() * attention.double()).clamp(min=0).mean(1)
        row = row + row @ weighted
    return row[:, 0]
