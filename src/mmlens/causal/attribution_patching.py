"""Attribution patching: every head's patching effect, estimated to first order from one backward pass.

Patching head ``h`` replaces its output ``a`` in the edited run by the other
run's ``a'``. To first order the answer's metric moves by
``(a' - a) · dM/da``, the gradient taken in the edited run (Nanda's
attribution patching; Syed et al.'s edge attribution patching uses the same
step). So one forward with gradients of the edited run, one backward, and one
plain forward of the source run estimate the whole layer x head grid, where
exhaustive patching (:func:`mmlens.causal.heads.patch_heads`) runs every head.

``direction="clean->corrupt"`` (default, as in patching) differentiates the
corrupted run and estimates ``M_corrupt + (a_clean - a_corrupt) · dM/da``;
``"corrupt->clean"`` differentiates the clean run,
``M_clean + (a_corrupt - a_clean) · dM/da`` (Nanda's form). On ``shapes-llava``
the second ranks heads poorly: the clean answer is saturated, its gradient
near zero (figures in ``docs/heads.md``). The result is a :class:`HeadGrid` of kind
``"attribution"`` whose ``edited`` values are the estimated metrics, so its
``effect`` compares cell for cell with exhaustive patching's.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> grid = attribution_patching(model, make_sample("test", 0, "colour"), metric="logit")
    >>> grid.kind, tuple(grid.effect.shape)
    ('attribution', (4, 4))
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any, Sequence

import torch

from mmlens.causal.head_grid import DIRECTIONS, METRICS, HeadGrid
from mmlens.causal.heads import Head, _grid, as_batch, check_choice, metric_values, parse_heads, projection_sites
from mmlens.causal.tracing import _corrupted
from mmlens.hooks import attach, capture, intervene
from mmlens.hooks.sites import heads_of
from mmlens.model import Batch, Model
from mmlens.models.runtime import last_logits_only
from mmlens.readout import answer_token_ids


def attribution_patching(model: Model, inputs: Any, *, direction: str = "clean->corrupt",
                         corrupt: str | Batch = "noise", noise: float = 3.0, seed: int = 0,
                         answer: str | Sequence[str] | torch.Tensor | None = None,
                         metric: str = "probability", group: Sequence[str | Head] = ()) -> HeadGrid:
    """Estimate every head's patching effect (see the module docstring) for ``inputs`` under ``corrupt``.

    Arguments mean what they mean in :func:`~mmlens.causal.heads.patch_heads`;
    the ``group`` estimate is the sum of its heads' steps: first-order exact for
    heads of one layer; across layers it also counts an earlier head's effect
    through a later one, which patching them together blocks.

    Example:
        >>> grid = attribution_patching(model, batch, corrupt="embeddings", group=["L0.H1", "L2.H3"])
        >>> grid.group_effect is not None
        True
    """
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(metric, METRICS, "metric")
    start = time.perf_counter()
    batch = as_batch(model, inputs)
    group = parse_heads(model, group)
    rows = batch.input_ids.shape[0]
    at_clean = direction == "corrupt->clean"  # which run is differentiated: the one being edited
    clean = _run(model, batch, {}, grads=at_clean)
    answer_ids = answer_token_ids(model, answer, clean["logits"], rows).cpu()
    corrupted, corruption, embed_edit = _corrupted(batch, clean["embed"], corrupt, noise, seed)
    other = _run(model, corrupted, {"lm.embed": embed_edit} if embed_edit else {}, grads=not at_clean)
    base, source = (clean, other) if at_clean else (other, clean)
    base_metric = metric_values(base["logits"], answer_ids, metric)
    grads = torch.autograd.grad(base_metric.sum(), base["heads"])
    steps = []
    for layer, (grad, value, src) in enumerate(zip(grads, base["heads"], source["heads"])):
        layout = heads_of(model, "lm", layer)
        step = ((src.to(value.device) - value.detach()) * grad).float()  # (batch, seq, heads x head_dim)
        steps.append(step.view(*step.shape[:2], layout.n_heads, layout.head_dim).sum((1, 3)).cpu())  # (batch, heads)
    cells = [(layer, head) for layer, step in enumerate(steps) for head in range(step.shape[1])]
    conditions = [steps[layer][:, head] for layer, head in cells]
    if group:
        conditions.append(sum(steps[layer][:, head] for layer, head in group))
    edited = base_metric.detach()[None] + torch.stack(conditions)  # (conditions, batch), as exhaustive runs return
    settings = {"direction": direction, "corruption": corruption}
    return _grid(model, batch, answer_ids, "attribution", settings, metric,
                 metric_values(clean["logits"], answer_ids, metric).detach(),
                 metric_values(other["logits"], answer_ids, metric).detach(), cells, group, edited.detach(),
                 time.perf_counter() - start)


def _run(model: Model, batch: Batch, edits: dict, grads: bool) -> dict[str, Any]:
    """One forward: last-position logits, ``lm.embed`` and every layer's heads (in the graph when ``grads``)."""
    heads: list[torch.Tensor | None] = [None] * model.n_layers

    def keep(layer: int):
        def read(value: torch.Tensor) -> torch.Tensor | None:
            if grads and not value.requires_grad:  # frozen weights: make the heads a leaf the gradient reaches
                value = value.detach().requires_grad_(True)
                heads[layer] = value
                return value
            heads[layer] = value if grads else value.detach()
            return None

        return read

    with ExitStack() as stack:
        stack.enter_context(torch.enable_grad() if grads else torch.no_grad())
        stack.enter_context(intervene(model, edits))
        embed = stack.enter_context(capture(model, "lm.embed"))
        for layer, site in enumerate(projection_sites(model)):
            stack.enter_context(attach(site, keep(layer)))
        logits = model.forward(batch, use_cache=False, **last_logits_only(model.hf)).logits[:, -1]
    return {"logits": logits if grads else logits.detach(), "heads": heads, "embed": embed["lm.embed"]}
