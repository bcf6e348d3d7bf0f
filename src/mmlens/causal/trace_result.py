"""The result of causal tracing: answer probabilities of clean, corrupted and patched runs, and recovery rates.

A :class:`CausalTrace` is data (see :func:`mmlens.causal.trace`, which makes
one). It also says when its numbers mean nothing: a corruption that barely
moves the answer leaves recovery rates that divide by noise (:attr:`CausalTrace.weak`,
:attr:`CausalTrace.warning`), and a group that no layer restores has no
strongest layer (:meth:`CausalTrace.strongest`).

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> from mmlens.causal import trace
    >>> result = trace(mmlens.load("shapes-llava"), make_sample("test", 0, "colour"))
    >>> result.weak, result.strongest("resid")[-1][0]  # the last token's group: restored at some layer
    (False, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from mmlens.errors import MmlensError

MIN_GAP = 0.05  # below this |P_clean - P_corrupt|, recovery rates divide by noise
MIN_RECOVERY = 0.01  # a group's strongest layer must recover at least this much


@dataclass
class CausalTrace:
    """Answer probabilities of the clean, corrupted and every patched run, and their recovery rates.

    ``p_patched[component]`` is ``(batch, layers, groups)``; ``recovery`` the
    ``(layers, groups)`` matrix per component, pooled over rows as
    ``mean(P_patched - P_corrupt) / mean(P_clean - P_corrupt)``.

    When the corruption barely moves the answer (``|gap| < min_gap``, the
    pooled ``P_clean - P_corrupt``), :attr:`weak` is True, :attr:`warning`
    says so and :attr:`meaningful_recovery` is NaN: the rates divide by noise.
    """

    model: str
    prompts: list[str]
    answers: list[str]
    answer_ids: torch.Tensor  # (batch,)
    components: list[str]
    groups: list[str]
    group_sizes: torch.Tensor  # (batch, groups)
    p_clean: torch.Tensor  # (batch,)
    p_corrupt: torch.Tensor  # (batch,)
    p_patched: dict[str, torch.Tensor]
    corruption: dict[str, Any]
    window: int = 1
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    min_gap: float = MIN_GAP

    @classmethod
    def concat(cls, traces: Sequence["CausalTrace"]) -> "CausalTrace":
        """Traces of several batches (same model, components and groups) as one, rows in order.

        Example:
            >>> both = CausalTrace.concat([result, result])
            >>> len(both.prompts) == 2 * len(result.prompts)
            True
        """
        first = traces[0]
        if any(t.components != first.components or t.groups != first.groups for t in traces):
            raise MmlensError("only traces of the same components and groups can be joined")
        return cls(
            model=first.model, prompts=[p for t in traces for p in t.prompts],
            answers=[a for t in traces for a in t.answers],
            answer_ids=torch.cat([t.answer_ids for t in traces]), components=first.components, groups=first.groups,
            group_sizes=torch.cat([t.group_sizes for t in traces]), p_clean=torch.cat([t.p_clean for t in traces]),
            p_corrupt=torch.cat([t.p_corrupt for t in traces]),
            p_patched={c: torch.cat([t.p_patched[c] for t in traces]) for c in first.components},
            corruption=first.corruption, window=first.window, seconds=sum(t.seconds for t in traces),
            min_gap=first.min_gap,
        )

    @property
    def n_layers(self) -> int:
        return next(iter(self.p_patched.values())).shape[1]

    @property
    def recovery(self) -> dict[str, torch.Tensor]:
        """Per component the ``(layers, groups)`` recovery rate pooled over rows."""
        gap = (self.p_clean - self.p_corrupt).mean()
        return {c: (p - self.p_corrupt[:, None, None]).mean(0) / gap for c, p in self.p_patched.items()}

    @property
    def gap(self) -> float:
        """How far the corruption moves the answer: ``mean(P_clean - P_corrupt)`` over rows."""
        return float((self.p_clean - self.p_corrupt).mean())

    @property
    def weak(self) -> bool:
        """True when the corruption barely moves the answer (``|gap| < min_gap``): recovery rates mean nothing."""
        return abs(self.gap) < self.min_gap

    @property
    def warning(self) -> str | None:
        """One line saying why the recovery rates mean nothing, or None.

        Example:
            >>> result.warning  # P clean 1.000, corrupted 0.999
            'the corruption barely moves the answer (P clean 1.000, corrupted 0.999; ...'
        """
        if not self.weak:
            return None
        return (f"the corruption barely moves the answer (P clean {float(self.p_clean.mean()):.3f}, corrupted "
                f"{float(self.p_corrupt.mean()):.3f}; gap {self.gap:+.3f}, under {self.min_gap}): recovery rates "
                f"divide by noise and mean nothing; corrupt harder: more noise, noise on the image embeddings, "
                f"or a counterfactual image")

    @property
    def meaningful_recovery(self) -> dict[str, torch.Tensor]:
        """:attr:`recovery`, or all NaN when the corruption is :attr:`weak`; what reports show."""
        recovery = self.recovery
        if self.weak:
            return {c: torch.full_like(m, float("nan")) for c, m in recovery.items()}
        return recovery

    def strongest(self, component: str, min_recovery: float = MIN_RECOVERY) -> list[tuple[int | None, float]]:
        """Per group, ``(layer, rate)`` of the layer that recovers most; layer None where none recovers.

        None when the corruption is :attr:`weak` (rate NaN) or when the best
        rate is below ``min_recovery`` (e.g. a group whose every restoration
        lowers the answer, the best layer a trivial 0.00).

        Example:
            >>> result.strongest("resid")[-1]  # the last token's hidden state at the last layer
            (3, 1.0)
        """
        matrix = self.meaningful_recovery[component]
        out: list[tuple[int | None, float]] = []
        for g in range(matrix.shape[1]):
            column = matrix[:, g]
            if torch.isnan(column).all():
                out.append((None, float("nan")))
                continue
            layer = int(torch.nan_to_num(column, nan=-float("inf")).argmax())
            best = float(column[layer])
            out.append((layer, best) if best >= min_recovery else (None, best))
        return out

    def rates(self, component: str, min_gap: float = 1e-6) -> torch.Tensor:
        """Per-row recovery rates ``(batch, layers, groups)``; NaN where ``|P_clean - P_corrupt| < min_gap``."""
        gap = (self.p_clean - self.p_corrupt)[:, None, None]
        rates = (self.p_patched[component] - self.p_corrupt[:, None, None]) / gap
        return torch.where(gap.abs() < min_gap, torch.full_like(rates, float("nan")), rates)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the pooled matrices (null when the corruption is weak), and every row's probabilities."""
        def rounded(t: torch.Tensor) -> Any:
            return _nan_to_none(torch.round(t.float(), decimals=6).tolist())

        return {
            "model": self.model, "components": self.components, "groups": self.groups,
            "layers": [f"L{i}" for i in range(self.n_layers)], "window": self.window,
            "corruption": self.corruption, "seconds": round(self.seconds, 4),
            "gap": round(self.gap, 6), "min_gap": self.min_gap, "weak_corruption": self.weak,
            "warning": self.warning,
            "recovery": {c: rounded(m) for c, m in self.meaningful_recovery.items()},
            "strongest": {c: [{"group": group, "layer": layer, "recovery": _nan_to_none(round(rate, 6))}
                              for group, (layer, rate) in zip(self.groups, self.strongest(c))]
                          for c in self.components},
            "rows": [
                {"prompt": self.prompts[b], "answer": self.answers[b], "p_clean": float(self.p_clean[b]),
                 "p_corrupt": float(self.p_corrupt[b]), "group_sizes": self.group_sizes[b].tolist(),
                 "p_patched": {c: rounded(p[b]) for c, p in self.p_patched.items()}}
                for b in range(len(self.prompts))
            ],
            "extras": self.extras,
        }


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: nested lists of floats with NaN as None."""
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and value != value else value
