"""Attention rollout (Abnar and Zuidema, 2020).

Per layer, ``A_hat = row_normalise(mean_heads(A) + I)``; the joint map is
``A_hat_L ... A_hat_1``; the explanation is the joint map's row at the answer
position.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> float(rollout(model, targets).scores.sum())  # rows of a product of stochastic matrices
    1.0
"""

from __future__ import annotations

import torch

from mmlens.attribution.base import Attribution, causal_cut
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.model import Model
from mmlens.readout import Targets


def rollout(model: Model, targets: Targets, layers: slice | None = None) -> Attribution:
    """Rolled-out attention from each answer position to every token.

    The answer rows of ``A_hat_L ... A_hat_1`` are propagated from the last
    layer down as row vectors (``r <- r A_hat_l``): the last layer needs only
    the answer rows, the others their head means (never per head).
    """
    indices = list(range(model.n_layers)[layers or slice(None)])
    if not indices:
        raise MmlensError("rollout needs at least one layer")
    last, earlier = f"lm.L{indices[-1]}.attn_probs", [f"lm.L{i}.attn_probs" for i in indices[:-1]]
    rows = [int(p) for p in targets.positions]
    with torch.no_grad(), capture(model, last, query=rows, mean_heads=True) as final, \
            capture(model, earlier, mean_heads=True) as captured:
        model.forward(targets.batch, use_cache=False)
    seq = final[last].shape[-1]
    eye = torch.eye(seq, dtype=torch.float64)
    row = final[last].double().cpu() + eye[targets.positions]  # (batch, n, seq): the answer rows of A_L + I
    scores = row / row.sum(-1, keepdim=True)
    for site in reversed(earlier):
        step = captured[site].double().cpu() + eye  # (batch, seq, seq): the head mean of A_l + I
        scores = scores @ (step / step.sum(-1, keepdim=True))
    return Attribution(causal_cut(scores.float(), targets))
