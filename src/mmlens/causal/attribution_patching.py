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

``tower="vision"`` estimates the vision tower's heads (the gradient reaches
them through the projector; a head whose layer the language model never reads
gets zero), ``positions`` limits each step to chosen positions, as
:func:`~mmlens.causal.heads.patch_heads` does.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> grid = attribution_patching(model, make_sample("test", 0, "colour"), metric="logit")
    >>> grid.kind, tuple(grid.effect.shape)
    ('attribution', (4, 4))
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Sequence

import torch

from mmlens.causal.head_grid import DIRECTIONS, HeadGrid
from mmlens.causal.head_positions import Where, element_rows
from mmlens.causal.head_runs import layouts, metric_values, projection_sites
from mmlens.causal.heads import Head, _setup, check_corruption
from mmlens.errors import check_choice
from mmlens.causal.tracing import _corrupted
from mmlens.hooks import attach, capture, intervene
from mmlens.model import Batch, Model
from mmlens.models.runtime import last_logits_only
from mmlens.readout import answer_token_ids


def attribution_patching(model: Model, inputs: Any, *, direction: str = "clean->corrupt",
                         corrupt: str | Batch = "noise", noise: float = 3.0, seed: int = 0,
                         answer: str | Sequence[str] | torch.Tensor | None = None,
                         metric: str = "probability", group: Sequence[str | Head] = (), tower: str = "lm",
                         positions: Where = None) -> HeadGrid:
    """Estimate every head's patching effect (see the module docstring) for ``inputs`` under ``corrupt``.

    Arguments mean what they mean in :func:`~mmlens.causal.heads.patch_heads`;
    the ``group`` estimate is the sum of its heads' steps: first-order exact for
    heads of one layer; across layers it also counts an earlier head's effect
    through a later one, which patching them together blocks.

    Example:
        >>> grid = attribution_patching(model, batch, corrupt="embeddings", group=["L0.H1", "L2.H3"])
        >>> grid.group_effect is not None
        True
        >>> attribution_patching(model, batch, tower="vision", positions="patches").effect.shape
        torch.Size([3, 4])
    """
    check_choice(direction, DIRECTIONS, "direction")
    setup = _setup(model, inputs, metric, None, group, tower, positions)
    check_corruption(tower, corrupt)
    batch, rows = setup.batch, setup.batch.input_ids.shape[0]
    at_clean = direction == "corrupt->clean"  # which run is differentiated: the one being edited
    clean = _run(model, batch, {}, at_clean, tower)
    answer_ids = answer_token_ids(model, answer, clean["logits"], rows).cpu()
    corrupted, corruption, embed_edit = _corrupted(batch, clean["embed"], corrupt, noise, seed)
    other = _run(model, corrupted, {"lm.embed": embed_edit} if embed_edit else {}, not at_clean, tower)
    base, source = (clean, other) if at_clean else (other, clean)
    base_metric = metric_values(base["logits"], answer_ids, metric)
    # allow_unused: a tower layer after the one the projector reads never reaches the answer
    grads = torch.autograd.grad(base_metric.sum(), base["heads"], allow_unused=True)
    shape = base["heads"][0].shape[:-1]
    owner = element_rows(model, batch, tower, shape).reshape(-1)
    keep = setup.mask(model, shape)
    steps = []
    for grad, value, src, layout in zip(grads, base["heads"], source["heads"], layouts(model, tower)):
        if grad is None:
            steps.append(torch.zeros(rows, layout.n_heads))
            continue
        step = ((src.to(value.device) - value.detach()) * grad).float()  # (..., positions, heads x head_dim)
        if keep is not None:
            step = step * keep.to(step.device)[..., None]
        per_head = step.view(*step.shape[:-1], layout.n_heads, layout.head_dim).sum(-1).reshape(-1, layout.n_heads)
        steps.append(torch.zeros(rows, layout.n_heads).index_add_(0, owner, per_head.cpu()))  # (rows, heads)
    conditions = [steps[layer][:, head] for layer, head in setup.cells]
    if setup.group:
        conditions.append(sum(steps[layer][:, head] for layer, head in setup.group))
    edited = base_metric.detach()[None] + torch.stack(conditions)  # (conditions, batch), as exhaustive runs return
    return setup.grid(model, answer_ids, "attribution", {"direction": direction, "corruption": corruption}, metric,
                      metric_values(clean["logits"], answer_ids, metric).detach(),
                      metric_values(other["logits"], answer_ids, metric).detach(), edited.detach())


def _run(model: Model, batch: Batch, edits: dict, grads: bool, tower: str) -> dict[str, Any]:
    """One forward: last-position logits, ``lm.embed`` and every layer's heads (in the graph when ``grads``)."""
    sites = projection_sites(model, tower)
    heads: list[torch.Tensor | None] = [None] * len(sites)

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
        for layer, site in enumerate(sites):
            stack.enter_context(attach(site, keep(layer)))
        logits = model.forward(batch, use_cache=False, **last_logits_only(model.hf)).logits[:, -1]
    return {"logits": logits if grads else logits.detach(), "heads": heads, "embed": embed["lm.embed"]}
