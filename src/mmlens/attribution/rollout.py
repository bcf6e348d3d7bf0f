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

from mmlens.attribution.attention import attention_maps
from mmlens.attribution.base import Attribution, causal_cut
from mmlens.model import Model
from mmlens.readout import Targets


def rollout(model: Model, targets: Targets, layers: slice | None = None) -> Attribution:
    """Rolled-out attention from each answer position to every token."""
    maps = attention_maps(model, targets)[layers or slice(None)].mean(2).double()  # (layers, batch, seq, seq)
    eye = torch.eye(maps.shape[-1], dtype=maps.dtype)
    joint = eye.expand_as(maps[0]).clone()
    for layer_map in maps:
        step = layer_map + eye
        joint = (step / step.sum(-1, keepdim=True)) @ joint
    scores = joint[:, targets.positions, :].float()  # (batch, n, seq)
    return Attribution(causal_cut(scores, targets))
