"""Activation patching: copy activations from a source run into a target run, at chosen sites and positions.

Positions are a list of indices shared by every row, or a ``(batch, seq)``
boolean mask. Source and target rows pair up one to one; a one-row source
patches every target row.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llama")
    >>> clean, other = model.prepare("a red circle"), model.prepare("a blue circle")
    >>> out = patch(model, clean, other, ["lm.L0.resid"], positions=[2])
    >>> out.logits.shape[:2] == other.input_ids.shape
    True
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.hooks import Edit, capture, expand, intervene
from mmlens.model import Batch, Model
from mmlens.models import runtime

Positions = Sequence[int] | torch.Tensor | None


def record(model: Model, batch: Batch, sites: str | Sequence[str]) -> dict[str, torch.Tensor]:
    """The values at ``sites`` (names or glob patterns) on one forward of ``batch``.

    Example:
        >>> sorted(record(model, clean, "lm.L*.resid"))
        ['lm.L0.resid', 'lm.L1.resid']
    """
    with torch.no_grad(), capture(model, sites) as captured:
        model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
    return {site: captured[site] for site in captured.keys()}


def position_mask(positions: Positions, rows: int, seq: int) -> torch.Tensor:
    """``(rows, seq)`` bool mask from a list of positions (negative counts from the end), a mask, or None (all).

    Example:
        >>> position_mask([0, -1], 1, 4).tolist()
        [[True, False, False, True]]
    """
    if positions is None:
        return torch.ones(rows, seq, dtype=torch.bool)
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        mask = positions.cpu()
        if mask.ndim == 1:
            mask = mask[None].expand(rows, -1)
        if mask.shape != (rows, seq):
            raise MmlensError(f"a position mask of shape {tuple(mask.shape)} for {rows} rows of {seq} tokens")
        return mask
    mask = torch.zeros(rows, seq, dtype=torch.bool)
    mask[:, torch.as_tensor(positions, dtype=torch.long) % seq] = True
    return mask


def patch_edits(
    values: Mapping[str, torch.Tensor], mask: torch.Tensor, source_mask: torch.Tensor | None = None
) -> dict[str, Edit]:
    """Edits that write ``values[site]`` into a run where ``mask`` (``(rows, seq)`` bool) is True.

    ``source_mask`` picks the source positions (default: the same as ``mask``);
    both must select the same number of positions in each row.

    Example:
        >>> edits = patch_edits(record(model, clean, "lm.L0.resid"), position_mask([2], 1, 4))
        >>> with mmlens.intervene(model, edits):
        ...     out = model.forward(other)
    """
    source_mask = mask if source_mask is None else source_mask
    if not torch.equal(mask.sum(-1), source_mask.sum(-1)):
        raise MmlensError("source and target positions differ in number")

    def editor(source: torch.Tensor) -> Edit:
        def edit(value: torch.Tensor) -> torch.Tensor:
            src = source.to(value.device, value.dtype)
            if src.shape[0] == 1 and value.shape[0] > 1:
                src = src.expand(value.shape[0], *src.shape[1:])
            target_mask = mask.to(value.device)
            if target_mask.shape[-1] != value.shape[1]:  # later generation steps: nothing to patch
                return value
            out = value.clone()
            out[target_mask] = src[source_mask.to(value.device)]
            return out

        return edit

    return {site: editor(value) for site, value in values.items()}


def patch(
    model: Model,
    source: Batch,
    target: Batch,
    sites: str | Sequence[str],
    positions: Positions = None,
    source_positions: Positions = None,
    **forward_kwargs: Any,
) -> Any:
    """Run ``target`` with the activations of ``source`` copied in at ``sites`` and ``positions``; return its output.

    ``positions`` index the target (all when None); ``source_positions`` the
    source (default: the same). Sites are names or glob patterns
    (``"lm.L*.resid"``, ``"lm.L3.attn"``, ``"lm.L2.mlp"``).

    Example:
        >>> same = patch(model, clean, clean, "lm.L*.resid")
        >>> bool(torch.equal(same.logits, model.forward(clean).logits))
        True
    """
    names = expand(model, sites)
    values = record(model, source, names)
    rows, seq = target.input_ids.shape
    mask = position_mask(positions, rows, seq)
    source_rows, source_seq = source.input_ids.shape
    chosen = source_positions if source_positions is not None else positions
    source_mask = position_mask(chosen, source_rows, source_seq)
    if source_rows not in (1, rows):
        raise MmlensError(f"a source of {source_rows} rows for a target of {rows}")
    if source_rows == 1 and rows > 1:  # one source row patches every target row
        source_mask = source_mask.expand(rows, -1)
    with torch.no_grad(), intervene(model, patch_edits(values, mask, source_mask)):
        return model.forward(target, use_cache=False, **forward_kwargs)
