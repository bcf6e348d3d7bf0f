"""The result of a head experiment: a layer x head grid of effects on the answer, and every row's values.

A :class:`HeadGrid` is data (see :mod:`mmlens.causal.heads` and
:mod:`mmlens.causal.attribution_patching`, which make them). ``effect`` is
what the grid means:

- **knockout**: how much the answer's metric drops when the head is ablated,
  ``mean(M_clean - M_knocked)`` over rows;
- **patching** ``clean->corrupt``: the share of the clean-corrupt gap the head
  restores, ``mean(M_patched - M_corrupt) / mean(M_clean - M_corrupt)``;
- **patching** ``corrupt->clean``: the share of the gap the head alone causes,
  ``mean(M_clean - M_patched) / mean(M_clean - M_corrupt)``;
- **attribution**: the first-order estimate of the same patching share.

Like :class:`~mmlens.causal.CausalTrace`, a corruption that barely moves the
answer makes patching shares divide by noise: :attr:`HeadGrid.warning` says so.

Example:
    >>> grid = HeadGrid("m", ["p"], ["red"], torch.tensor([3]), "knockout", {"ablation": "zero"}, "probability",
    ...                 torch.tensor([0.9]), None, torch.full((1, 2, 2), 0.5))
    >>> grid.effect.tolist()
    [[0.4000000059604645, 0.4000000059604645], [0.4000000059604645, 0.4000000059604645]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mmlens.causal.trace_result import MIN_GAP, _nan_to_none

KINDS = ("knockout", "patching", "attribution")
DIRECTIONS = ("clean->corrupt", "corrupt->clean")
METRICS = ("probability", "logit")


@dataclass
class HeadGrid:
    """Metric values of the clean, corrupted and every edited run, and the layer x head effect grid.

    ``edited[row, layer, head]`` is the metric with that head edited (for
    attribution: the estimated metric); NaN where a cell was not computed.
    ``corrupt`` is None for knockout. ``group`` holds heads edited together
    (one extra condition) and ``group_edited`` its per-row metric.
    """

    model: str
    prompts: list[str]
    answers: list[str]
    answer_ids: torch.Tensor  # (batch,)
    kind: str
    settings: dict[str, Any]  # ablation, or direction and corruption
    metric: str
    clean: torch.Tensor  # (batch,)
    corrupt: torch.Tensor | None  # (batch,)
    edited: torch.Tensor  # (batch, layers, heads)
    group: list[tuple[int, int]] = field(default_factory=list)
    group_edited: torch.Tensor | None = None  # (batch,)
    seconds: float = 0.0
    min_gap: float = MIN_GAP

    @property
    def direction(self) -> str | None:
        return self.settings.get("direction")

    @property
    def tower(self) -> str:
        """``"lm"`` (decoder heads) or ``"vision"`` (the vision tower's)."""
        return self.settings.get("tower", "lm")

    @property
    def positions(self) -> str:
        """Where each head was edited (``"all"``, ``"image"``, ``"box 0,0,8,8"``, ...)."""
        return self.settings.get("positions", "all")

    def head_name(self, layer: int, head: int) -> str:
        """``L1.H2`` for a decoder head, ``vision.L1.H2`` for a tower head (what ``--head`` accepts).

        Example:
            >>> grid.head_name(1, 2)
            'L1.H2'
        """
        return f"{'vision.' if self.tower == 'vision' else ''}L{layer}.H{head}"

    @property
    def gap(self) -> float | None:
        """``mean(M_clean - M_corrupt)``; None for knockout."""
        return None if self.corrupt is None else float((self.clean - self.corrupt).mean())

    @property
    def weak(self) -> bool:
        """True when a corruption barely moves the answer (``|gap| < min_gap``): patching shares mean nothing."""
        return self.gap is not None and abs(self.gap) < self.min_gap

    @property
    def warning(self) -> str | None:
        """One line saying why the shares mean nothing, or None.

        Example:
            >>> grid.warning is None
            True
        """
        if not self.weak:
            return None
        return (f"the corruption barely moves the answer ({self.metric} clean {float(self.clean.mean()):.3f}, "
                f"corrupted {float(self.corrupt.mean()):.3f}; gap {self.gap:+.3f}, under {self.min_gap}): patching "
                f"shares divide by noise and mean nothing; corrupt harder: more noise, noise on the image "
                f"embeddings, or a counterfactual image")

    def _effect_of(self, edited: torch.Tensor) -> torch.Tensor:
        """Pooled effect of edited values ``(batch, ...)``, as the module docstring defines it."""
        if self.kind == "knockout":
            return (self.clean.view(-1, *[1] * (edited.ndim - 1)) - edited).mean(0)
        shape = (-1, *[1] * (edited.ndim - 1))
        if self.direction == "clean->corrupt":
            moved = (edited - self.corrupt.view(shape)).mean(0)
        else:
            moved = (self.clean.view(shape) - edited).mean(0)
        return moved / self.gap

    @property
    def effect(self) -> torch.Tensor:
        """The ``(layers, heads)`` grid (see the module docstring); all NaN when the corruption is weak."""
        effect = self._effect_of(self.edited)
        return torch.full_like(effect, float("nan")) if self.weak else effect

    @property
    def group_effect(self) -> float | None:
        """The effect of the :attr:`group` heads edited together; None without a group."""
        if self.group_edited is None:
            return None
        return float("nan") if self.weak else float(self._effect_of(self.group_edited))

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` cells of largest effect as ``(layer, head, effect)``, NaN cells left out.

        Example:
            >>> grid.top(1)[0][2] > 0
            True
        """
        effect = self.effect
        flat = torch.nan_to_num(effect, nan=-float("inf")).flatten()
        order = flat.argsort(descending=True)[:k]
        heads = effect.shape[1]
        return [(int(i) // heads, int(i) % heads, float(flat[i])) for i in order if flat[i] > -float("inf")]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the grid (null cells where not computed or the corruption is weak) and every row's values."""
        def rounded(t: torch.Tensor) -> Any:
            return _nan_to_none(torch.round(t.float(), decimals=6).tolist())

        return {
            "model": self.model, "kind": self.kind, "settings": self.settings, "metric": self.metric,
            "layers": self.edited.shape[1], "heads": self.edited.shape[2], "seconds": round(self.seconds, 4),
            "gap": None if self.gap is None else round(self.gap, 6), "weak_corruption": self.weak,
            "warning": self.warning, "effect": rounded(self.effect),
            "tower": self.tower, "positions": self.positions,
            "top": [{"layer": layer, "head": head, "effect": round(value, 6)} for layer, head, value in self.top()],
            "group": [{"layer": layer, "head": head} for layer, head in self.group],
            "group_effect": _nan_to_none(self.group_effect),
            "rows": [
                {"prompt": self.prompts[b], "answer": self.answers[b], "clean": float(self.clean[b]),
                 "corrupt": None if self.corrupt is None else float(self.corrupt[b]), "edited": rounded(self.edited[b]),
                 "group_edited": None if self.group_edited is None else float(self.group_edited[b])}
                for b in range(len(self.prompts))
            ],
        }
