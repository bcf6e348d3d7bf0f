"""Where the modalities meet: attention mass from the answer position, and attention knockout.

**Flow**: per layer and head, the share of the answer position's attention
that lands on image, text and special tokens (padding gets none), read from
the answer row's probabilities only (computed in fp32 beside SDPA, at each layer).

**Knockout** (after Geva et al.'s attention knockout): block attention from
the answer position to chosen key positions (all image tokens, or only the
object's) in a window of layers, and watch the answer probability. Blocking
edits the 4-D additive mask each attention module receives (materialised
from SDPA's causal or boolean mask at the blocked layers only): the blocked ``[query, key]`` entries get the dtype's minimum, so
their probability after the softmax is exactly zero and nothing else moves.
Each condition runs the answer position only, from its window's first layer
on, against recorded keys and values (:mod:`mmlens.causal.knockout`).

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))])
    >>> flow = attention_flow(model, batch)
    >>> bool(torch.allclose(flow.fractions.sum(-1), torch.ones(())))
    True
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from mmlens.budget import MemoryBudget
from mmlens.causal.knockout import knockout_runs
from mmlens.errors import check_position
from mmlens.hooks import BlockKeys, capture, intervene
from mmlens.layout import Modality
from mmlens.model import Batch, Model
from mmlens.models import runtime

MODALITIES: tuple[str, ...] = ("image", "text", "special")


@dataclass
class AttentionFlow:
    """``fractions[layer, row, head, m]``: share of the query's attention on modality ``MODALITIES[m]``."""

    model: str
    fractions: torch.Tensor  # (layers, batch, heads, 3)
    position: int
    modalities: tuple[str, ...] = MODALITIES

    def by_layer(self, row: int = 0) -> torch.Tensor:
        """Mean over heads: ``(layers, 3)``."""
        return self.fractions[:, row].mean(1)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: per row, layer and head the three fractions."""
        return {"model": self.model, "position": self.position, "modalities": list(self.modalities),
                "fractions": [[[[round(float(v), 6) for v in head] for head in layer[b]] for layer in self.fractions]
                              for b in range(self.fractions.shape[1])]}


@dataclass
class Knockout:
    """Answer probability with attention from the answer position blocked, per layer window and key group.

    ``probability[w, g, row]`` for the window starting at ``window_starts[w]``
    and key group ``groups[g]``; ``baseline[row]`` with nothing blocked.
    """

    model: str
    groups: list[str]
    window: int
    window_starts: list[int]
    probability: torch.Tensor  # (windows, groups, batch)
    baseline: torch.Tensor  # (batch,)
    answer_ids: torch.Tensor  # (batch,)

    @property
    def change(self) -> torch.Tensor:
        """``probability - baseline``, ``(windows, groups, batch)``."""
        return self.probability - self.baseline

    def to_json(self) -> dict[str, Any]:
        """Plain JSON of the sweep."""
        return {"model": self.model, "groups": self.groups, "window": self.window,
                "window_starts": self.window_starts, "baseline": self.baseline.tolist(),
                "probability": self.probability.tolist(), "answer_ids": self.answer_ids.tolist()}


def attention_flow(model: Model, batch: Batch, position: int = -1) -> AttentionFlow:
    """Per layer and head, the attention mass from ``position`` to image, text and special tokens.

    Only the query row is computed (``capture(..., query=index)``): full attention
    maps of a real model take gigabytes, and no layer runs eagerly.

    Example:
        >>> attention_flow(model, batch).fractions.shape[-1]
        3
    """
    seq = batch.input_ids.shape[1]
    index = check_position(position, seq)
    modality = batch.layout.modality.to(model.device)
    onehot = torch.stack([modality == int(Modality.IMAGE), modality == int(Modality.TEXT),
                          modality == int(Modality.SPECIAL)], -1).float()  # (batch, seq, 3)
    with torch.no_grad(), capture(model, "lm.L*.attn_probs", query=index) as captured:
        model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
    rows = [captured[f"lm.L{i}.attn_probs"].float() for i in range(model.n_layers)]  # (batch, heads, keys)
    fractions = torch.stack([torch.einsum("bhk,bkm->bhm", row, onehot) for row in rows])
    return AttentionFlow(model.name, fractions.cpu(), index)


def block_attention(model: Model, blocked: Mapping[int, torch.Tensor], query: int = -1) -> AbstractContextManager[None]:
    """Inside the block, queries at ``query`` cannot attend to the keys ``blocked[layer]`` (``(rows, seq)`` bool).

    Works for whole forwards, recorded decoder replays (rows may be stacked
    copies of a batch) and generation (the query is then the newest token).
    The :class:`~mmlens.hooks.BlockKeys` site option on each layer.

    Example:
        >>> keys = batch.layout.mask(Modality.IMAGE)
        >>> with block_attention(model, {0: keys, 1: keys}):
        ...     out = model.forward(batch)
    """
    return intervene(model, {f"lm.L{layer}.attn_probs": BlockKeys(keys, query) for layer, keys in blocked.items()})


def knockout(
    model: Model,
    batch: Batch,
    groups: Mapping[str, torch.Tensor],
    window: int = 1,
    answer: str | Sequence[str] | torch.Tensor | None = None,
    memory_budget: MemoryBudget = None,
) -> Knockout:
    """Block attention from the last position to each key group, for each window of ``window`` layers.

    ``groups`` maps a name to a ``(batch, seq)`` bool mask of key positions.
    The (window, group) conditions run as stacked copies of the batch through
    replays of the language model (the vision tower runs once), as many per pass
    as ``memory_budget`` holds (:mod:`mmlens.budget`); results do not depend on it.

    Example:
        >>> result = knockout(model, batch, {"image": batch.layout.mask(Modality.IMAGE)}, window=1)
        >>> result.probability.shape  # (windows, groups, batch)
        torch.Size([2, 1, 1])
    """
    runs = knockout_runs(model, batch, groups, window, answer, memory_budget)
    return Knockout(model.name, list(groups), window, runs.window_starts, runs.probability, runs.baseline,
                    runs.answer_ids)
