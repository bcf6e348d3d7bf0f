"""Head edits restricted to chosen positions: a head patched or ablated at image tokens, the last position, a box.

A head site's value is ``(..., positions, head_dim)``: the positions axis
(the second to last) is the decoder's sequence for ``lm`` heads and the tower
tokens for ``vision`` heads (each tower sequence's tokens, CLS included, on a
``(sequences, tokens)`` grid; Qwen2-VL's packed tower has one axis of all
images' patches, in the tower's own order). :func:`head_mask` turns a
description of positions into a boolean mask of that shape without the last
axis; :func:`at_positions` wraps any edit so that it lands only there, the
site keeping its value elsewhere. The result is an ordinary edit, so it goes
through :func:`mmlens.intervene` like any other.

Positions (``where``):

- ``"all"`` (or None): every position;
- ``lm`` heads: ``"image"``, ``"text"``, ``"last"``, a :class:`~mmlens.box.Box`
  (the image tokens whose patch overlaps it, in every image), a list of
  positions (negative counts from the end) or a ``(batch, seq)`` mask;
- ``vision`` heads: ``"patches"`` (every tower token but CLS), a
  :class:`~mmlens.box.Box` (the tower patches overlapping it, merges and tiles
  followed), a list of token indices within each tower sequence, or a mask of
  the site's shape.

Example:
    >>> import mmlens, torch
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> sample = make_sample("test", 0, "colour")
    >>> batch = model.prepare(sample.prompt, [sample.image])
    >>> mask = head_mask(model, batch, "image")
    >>> with mmlens.intervene(model, {"lm.L0.head3": at_positions(torch.zeros_like, mask)}):
    ...     out = model.forward(batch)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mmlens.box import Box
from mmlens.causal.groups import object_positions
from mmlens.errors import MmlensError, check_choice
from mmlens.hooks import Edit, capture
from mmlens.layout import Modality
from mmlens.model import Batch, Model
from mmlens.models import runtime
from mmlens.models.tower import stream_order, tower_views, view_indices

Where = str | Box | Sequence[int] | torch.Tensor | None
NAMED = {"lm": ("all", "image", "text", "last"), "vision": ("all", "patches")}


def at_positions(edit: Edit, mask: torch.Tensor) -> Edit:
    """``edit``, landing only where ``mask`` is True; the site keeps its value at every other position.

    ``mask`` has the site's shape without its last axis, or that of one copy
    of a stacked batch (it repeats along the first axis).

    Example:
        >>> mask = torch.tensor([[False, True, False]])
        >>> at_positions(torch.zeros_like, mask)(torch.ones(1, 3, 2))[0, :, 0].tolist()
        [1.0, 0.0, 1.0]
    """
    def restricted(value: torch.Tensor) -> torch.Tensor:
        edited = value.clone()  # the wrapped edit may work in place
        out = edit(edited)
        edited = edited if out is None else out
        return torch.where(fit_mask(mask, value)[..., None], edited.to(value.dtype), value)

    return restricted


def fit_mask(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``mask`` on ``value``'s device, repeated along the first axis for stacked copies; one line if it cannot fit.

    Example:
        >>> fit_mask(torch.ones(2, 3, dtype=torch.bool), torch.zeros(4, 3, 8)).shape
        torch.Size([4, 3])
    """
    shape = tuple(value.shape[:-1])
    if mask.ndim == len(shape) and mask.shape[1:] == shape[1:] and shape[0] % max(mask.shape[0], 1) == 0:
        mask = mask.repeat(shape[0] // mask.shape[0], *[1] * (mask.ndim - 1))
    if tuple(mask.shape) != shape:
        raise MmlensError(f"a position mask of shape {tuple(mask.shape)} does not fit a head site of {shape} positions")
    return mask.to(value.device)


def head_mask(model: Model, batch: Batch, where: Where, tower: str = "lm",
              shape: Sequence[int] | None = None) -> torch.Tensor:
    """The boolean mask of ``where`` (see the module docstring) over the positions of ``tower``'s head sites.

    ``shape`` is the vision sites' shape without the last axis; when not given
    one forward of ``batch`` reads it.

    Example:
        >>> head_mask(model, batch, "last")[0, -3:].tolist()
        [False, False, True]
        >>> head_mask(model, batch, "patches", tower="vision").shape  # CLIP: one sequence of CLS + 64 patches
        torch.Size([1, 65])
    """
    check_choice(tower, tuple(NAMED), "tower")
    if tower == "lm":
        return _lm_mask(model, batch, where)
    shape = tuple(shape) if shape is not None else vision_shape(model, batch)
    return _vision_mask(model, batch, where, shape)


def describe_where(where: Where) -> str:
    """A short JSON-safe description of ``where``, for settings and titles.

    Example:
        >>> describe_where(Box(0, 0, 8, 8)), describe_where([0, -1]), describe_where(None)
        ('box 0,0,8,8', 'positions 0,-1', 'all')
    """
    if where is None or isinstance(where, str):
        return where or "all"
    if isinstance(where, Box):
        return "box " + ",".join(f"{v:g}" for v in where)
    if isinstance(where, torch.Tensor) and where.dtype == torch.bool:
        return f"mask of {int(where.sum())} positions"
    return "positions " + ",".join(str(int(p)) for p in where)


def vision_shape(model: Model, batch: Batch) -> tuple[int, ...]:
    """The vision head sites' shape without the last axis, from one forward of ``batch``.

    Example:
        >>> vision_shape(model, batch)
        (1, 65)
    """
    with torch.no_grad(), capture(model, "vision.L0.head0") as captured:
        model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
    return tuple(captured["vision.L0.head0"].shape[:-1])


def element_rows(model: Model, batch: Batch, tower: str, shape: Sequence[int]) -> torch.Tensor:
    """The batch row of every position of ``tower``'s head sites (``shape`` without the last axis), as a long tensor.

    Decoder positions belong to their row; tower sequences (or Qwen2-VL's
    packed patches) to the row whose image they see, from the tower's view map
    where the family has one, else by equal shares.

    Example:
        >>> element_rows(model, batch, "vision", (1, 65)).unique().tolist()
        [0]
    """
    shape = tuple(shape)
    rows = batch.input_ids.shape[0]
    if tower == "lm":
        return torch.arange(rows)[:, None].expand(shape)
    try:
        views = tower_views(model, batch)
    except MmlensError:
        views = []
    if len(shape) == 1:
        owner = torch.cat([torch.full((v.tokens.numel(),), v.row) for v in views]) if views else torch.empty(0)
    else:  # a view may span several tower sequences (LLaVA-NeXT's tiles)
        owner = torch.tensor([v.row for v in views for _ in range(v.sequences)], dtype=torch.long)
    if owner.numel() != shape[0]:  # no view map: equal shares, the tower in batch-row order
        if shape[0] % rows:
            raise MmlensError(f"{model.adapter.family}: {shape[0]} tower sequences do not split over {rows} rows; "
                              "give every row the same images")
        owner = torch.arange(rows).repeat_interleave(shape[0] // rows)
    return owner.long().view(-1, *[1] * (len(shape) - 1)).expand(shape)


# ---- the two towers ----------------------------------------------------
def _lm_mask(model: Model, batch: Batch, where: Where) -> torch.Tensor:
    layout = batch.layout
    rows, seq = batch.input_ids.shape
    if where is None or isinstance(where, str):
        _check_named(where, "lm")
        if where in (None, "all"):
            return torch.ones(rows, seq, dtype=torch.bool)
        if where == "last":
            mask = torch.zeros(rows, seq, dtype=torch.bool)
            mask[:, -1] = True
            return mask
        return layout.mask(Modality.IMAGE if where == "image" else Modality.TEXT).bool().clone()
    if isinstance(where, Box):
        mask = torch.zeros(rows, seq, dtype=torch.bool)
        for row in range(rows):
            for image in range(len(layout.images[row])):
                mask[row, object_positions(layout, row, where, image)] = True
        return _nonempty(mask, where)
    return _indexed(where, (rows, seq))


def _vision_mask(model: Model, batch: Batch, where: Where, shape: tuple[int, ...]) -> torch.Tensor:
    if where is None or isinstance(where, str):
        _check_named(where, "vision")
        if where in (None, "all"):
            return torch.ones(shape, dtype=torch.bool)
        return _tower_patches(model, batch, shape, None)
    if isinstance(where, Box):
        return _nonempty(_tower_patches(model, batch, shape, where), where)
    return _indexed(where, shape)


def _tower_patches(model: Model, batch: Batch, shape: tuple[int, ...], box: Box | None) -> torch.Tensor:
    """Tower tokens that are image patches (no CLS), those overlapping ``box`` if given, on the site's grid."""
    views = tower_views(model, batch)
    if len(shape) == 2:  # (sequences, tokens): leading CLS tokens and unpadded-away tile patches are left out
        if sum(v.sequences for v in views) != shape[0]:
            raise MmlensError(f"{model.adapter.family}: {shape[0]} tower sequences for {len(views)} image views; "
                              "cannot place tower patches")
        indices = [i.flatten() for i in view_indices(views, [shape[1]] * shape[0])]
    else:  # Qwen2-VL's packed patches: the views' tokens one after another
        starts = np.cumsum([0] + [v.tokens.numel() for v in views])
        indices = [int(start) + v.tokens.flatten() for start, v in zip(starts, views)]
    flat = torch.zeros(int(np.prod(shape)), dtype=torch.bool)
    for view, index in zip(views, indices):
        keep = torch.ones(index.numel(), dtype=torch.bool) if box is None else _cells_in_box(batch, view, box)
        flat[index[keep]] = True
    order = stream_order(model, batch) if len(shape) == 1 else None
    if order is not None:  # the tower holds its tokens in attention-window order
        flat = flat[order]
    return flat.view(shape)


def _cells_in_box(batch: Batch, view: Any, box: Box) -> torch.Tensor:
    """Per fine patch of a tower view (flattened row-major), whether its pixels touch ``box``."""
    info = batch.layout.images[view.row][view.image]
    grid = info.views[view.view]
    fine_rows, fine_cols = view.tokens.shape
    inside = box.mask(info.size)
    x0, y0, x1, y1 = grid.box
    width, height = (x1 - x0) / fine_cols, (y1 - y0) / fine_rows
    keep = torch.zeros(fine_rows, fine_cols, dtype=torch.bool)
    for r in range(fine_rows):
        ys = slice(max(0, int(np.ceil(y0 + r * height - 0.5))), max(0, int(np.ceil(y0 + (r + 1) * height - 0.5))))
        for c in range(fine_cols):
            xs = slice(max(0, int(np.ceil(x0 + c * width - 0.5))), max(0, int(np.ceil(x0 + (c + 1) * width - 0.5))))
            keep[r, c] = bool(inside[ys, xs].any())
    return keep.flatten()


def _indexed(where: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A given mask (checked), or positions along the last axis of ``shape`` (negative from the end)."""
    if isinstance(where, torch.Tensor) and where.dtype == torch.bool:
        mask = where.cpu()
        if mask.ndim == 1 and len(shape) > 1:
            mask = mask.expand(*shape[:-1], -1)
        if tuple(mask.shape) != shape:
            raise MmlensError(f"a position mask of shape {tuple(mask.shape)} for head sites of {shape} positions")
        return mask.clone()
    positions = torch.as_tensor(list(where) if not isinstance(where, torch.Tensor) else where, dtype=torch.long)
    if positions.numel() == 0:
        raise MmlensError("no positions given: name at least one")
    if ((positions >= shape[-1]) | (positions < -shape[-1])).any():
        raise MmlensError(f"positions {positions.tolist()} are out of range: the head sites have {shape[-1]} positions")
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., positions % shape[-1]] = True
    return mask


def _check_named(where: str | None, tower: str) -> None:
    if where is not None and where not in NAMED[tower]:
        raise MmlensError(f"unknown positions {where!r} for {tower} heads; choose {', '.join(NAMED[tower])}, "
                          "a box or a list of positions")


def _nonempty(mask: torch.Tensor, box: Box) -> torch.Tensor:
    if not mask.any():
        raise MmlensError(f"box {','.join(f'{v:g}' for v in box)} covers no image patch")
    return mask
