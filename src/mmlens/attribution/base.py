"""The common shape of every attribution method.

A method takes a model and :class:`~mmlens.readout.Targets` and
returns an :class:`Attribution`: one score per (row, target token, position)
of the teacher-forced sequence, plus method-specific extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from mmlens.model import Model
from mmlens.readout import Targets


@dataclass
class Attribution:
    """Scores ``(batch, targets, seq)``; positions a target cannot see are 0."""

    scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    def __call__(self, model: Model, targets: Targets, **options: Any) -> Attribution: ...


def empty_scores(targets: Targets) -> torch.Tensor:
    rows, seq = targets.batch.input_ids.shape
    return torch.zeros(rows, targets.count, seq)


def causal_cut(scores: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Zero what a target cannot depend on: positions after it, padding, and absent targets."""
    seq = scores.shape[-1]
    visible = torch.arange(seq)[None, :] <= targets.positions[:, None]  # (n, seq)
    real_position = targets.batch.inputs["attention_mask"].bool().cpu()[:, None, :]  # (batch, 1, seq)
    keep = visible[None] & real_position & targets.real[:, :, None].cpu()
    return torch.where(keep, scores, torch.zeros((), dtype=scores.dtype))


MethodRegistry = dict[str, Callable[..., Attribution]]
