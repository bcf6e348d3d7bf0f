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

from typing import Sequence

import torch

from mmlens.attribution.base import Attribution, causal_cut, layer_indices
from mmlens.hooks import capture
from mmlens.model import Model
from mmlens.models.runtime import last_logits_only
from mmlens.readout import Targets

_CHUNK_ROWS = 512  # rows of a head-mean map turned fp64 at a time while the answer rows propagate


def rollout(model: Model, targets: Targets, layers: int | slice | Sequence[int] | None = None) -> Attribution:
    """Rolled-out attention from each answer position to every token.

    The answer rows of ``A_hat_L ... A_hat_1`` are propagated from the last
    layer down as row vectors (``r <- r A_hat_l``): the last layer needs only
    the answer rows, the others their head means (never per head), kept in
    fp32; the identity and the row normalisation are applied to the row
    vector, so no ``(seq, seq)`` matrix other than the captured ones exists.
    """
    indices = sorted(set(layer_indices(model, layers, "rollout")))  # rolled out bottom to top
    last, earlier = f"lm.L{indices[-1]}.attn_probs", [f"lm.L{i}.attn_probs" for i in indices[:-1]]
    rows = [int(p) for p in targets.positions]
    with torch.no_grad(), capture(model, last, query=rows, mean_heads=True) as final, \
            capture(model, earlier, mean_heads=True) as captured:
        model.forward(targets.batch, use_cache=False, **last_logits_only(model.hf))  # no (seq, vocab) logits
    row = final[last].double().cpu()  # (batch, n, seq): the answer rows of A_L
    row[:, range(len(rows)), rows] += 1.0  # + I
    scores = row / row.sum(-1, keepdim=True)
    for site in reversed(earlier):
        scores = _times_normalised(scores, captured.steps(site).pop())
    return Attribution(causal_cut(scores.float(), targets))


def _times_normalised(rows: torch.Tensor, head_mean: torch.Tensor) -> torch.Tensor:
    """``rows @ row_normalise(head_mean + I)`` in fp64, ``head_mean`` ``(batch, seq, seq)`` read a chunk of rows at a time.

    With ``d = head_mean.sum(-1) + 1`` and ``u = rows / d``: ``u @ head_mean + u``.

    Example:
        >>> _times_normalised(torch.tensor([[[0.0, 1.0]]], dtype=torch.float64), torch.tensor([[[1.0, 0], [0.5, 0.5]]]))
        tensor([[[0.2500, 0.7500]]], dtype=torch.float64)
    """
    head_mean = head_mean.cpu()
    scaled = rows / (head_mean.sum(-1, dtype=torch.float64) + 1.0)[:, None, :]  # u = r / d
    out = scaled.clone()  # the identity's share
    for start in range(0, head_mean.shape[1], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        out += scaled[:, :, start:stop] @ head_mean[:, start:stop].double()
    return out
