"""Representation injection (IRI): feed the most causal layers' last-token outputs into later layers.

From a :class:`~mmlens.causal.tracing.CausalTrace`, layers are ranked by
recovery rate at the last token, separately for attention and MLP outputs.
The top ``sources`` layers are sources, the top ``targets`` layers targets.
During a forward or generation, each source layer's last-token output ``a_k``
is recorded as it is computed (before any injection into it); at each target
layer ``l`` the last-token output becomes

    a_new = a + lambda * sum over sources k < l of RR_k * a_k,

rescaled to the norm of ``a``. Negative recovery rates are clipped to zero (a
layer that hurts recovery is not a source). Every step of generation is a
forward whose last position is the newest token, so only that token is edited.

Example:
    >>> import mmlens
    >>> from mmlens.causal import trace
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("tiny-llava")
    >>> result = trace(model, make_sample("test", 0, "colour"))
    >>> plan = plan_injection(result, sources=1, targets=2)
    >>> with inject(model, plan):
    ...     out = model.forward(model.prepare("<image> what colour is the cross ?", [make_sample("test", 0).image]))
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

from mmlens.causal.tracing import CausalTrace
from mmlens.errors import MmlensError
from mmlens.hooks import Edit, intervene
from mmlens.model import Model

#: Published lambdas on LLaVA-1.5-7B (attention, MLP).
DEFAULT_LAMBDAS: dict[str, float] = {"attn": 0.26, "mlp": 0.16}


@dataclass
class InjectionPlan:
    """Per component (``attn``, ``mlp``): source layers with their weights, target layers, and lambda."""

    sources: dict[str, dict[int, float]]  # component -> {layer: recovery rate}
    targets: dict[str, list[int]]
    lambdas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LAMBDAS))

    def scaled(self, factor: float) -> "InjectionPlan":
        """The same plan with every lambda multiplied by ``factor``."""
        return InjectionPlan(self.sources, self.targets, {c: v * factor for c, v in self.lambdas.items()})

    def to_json(self) -> dict[str, Any]:
        return {"sources": {c: {str(k): round(v, 6) for k, v in s.items()} for c, s in self.sources.items()},
                "targets": self.targets, "lambdas": self.lambdas}


def plan_injection(
    trace: CausalTrace,
    group: str = "last",
    sources: int = 3,
    targets: int = 10,
    lambdas: Mapping[str, float] | None = None,
) -> InjectionPlan:
    """Rank layers by recovery rate at ``group`` for attention and MLP; top ``sources`` feed top ``targets``.

    Example:
        >>> plan = plan_injection(result, sources=1, targets=2, lambdas={"attn": 0.3, "mlp": 0.0})
        >>> sorted(plan.sources)
        ['attn', 'mlp']
    """
    if group not in trace.groups:
        raise MmlensError(f"the trace has no group {group!r}; it has {', '.join(trace.groups)}")
    chosen = dict(DEFAULT_LAMBDAS if lambdas is None else lambdas)
    recovery = trace.recovery
    column = trace.groups.index(group)
    plan_sources: dict[str, dict[int, float]] = {}
    plan_targets: dict[str, list[int]] = {}
    for component in chosen:
        if component not in recovery:
            raise MmlensError(f"the trace has no {component!r} component; trace with components=['attn', 'mlp']")
        rates = torch.nan_to_num(recovery[component][:, column].float(), nan=0.0).clamp(min=0)
        order = torch.argsort(rates, descending=True, stable=True).tolist()
        plan_sources[component] = {layer: float(rates[layer]) for layer in order[:sources]}
        plan_targets[component] = sorted(order[:targets])
    return InjectionPlan(plan_sources, plan_targets, chosen)


def injection_edits(plan: InjectionPlan) -> dict[str, Edit]:
    """One edit per attention / MLP site of the plan: record sources, inject into targets (last position only)."""
    edits: dict[str, Edit] = {}
    for component, lam in plan.lambdas.items():
        recorded: dict[int, torch.Tensor] = {}
        sources = plan.sources.get(component, {})
        layers = set(sources) | set(plan.targets.get(component, []))
        for layer in sorted(layers):
            edits[f"lm.L{layer}.{component}"] = _edit(layer, lam, sources, set(plan.targets[component]), recorded)
    return edits


@contextmanager
def inject(model: Model, plan: InjectionPlan) -> Iterator[None]:
    """Apply ``plan`` to every forward inside the block, generation included.

    Example:
        >>> with inject(model, plan):
        ...     new_tokens = model.generate(batch, max_new_tokens=3)
    """
    with intervene(model, injection_edits(plan)):
        yield


def _edit(layer: int, lam: float, sources: dict[int, float], targets: set[int],
          recorded: dict[int, torch.Tensor]) -> Edit:
    def edit(value: torch.Tensor) -> torch.Tensor | None:
        last = value[:, -1]
        if layer in sources:
            recorded[layer] = last.detach()  # the layer's own output, before anything is injected into it
        if layer not in targets:
            return None
        earlier = [k for k in sources if k < layer and k in recorded and recorded[k].shape == last.shape]
        if not earlier or lam == 0:
            return None
        added = sum(sources[k] * recorded[k] for k in earlier)
        new = last + lam * added
        # Rescale to the original norm: injection changes the direction, not the size.
        new = new * (last.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        out = value.clone()
        out[:, -1] = new
        return out

    return edit
