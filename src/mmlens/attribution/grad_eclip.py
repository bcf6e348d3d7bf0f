"""Grad-ECLIP inside the vision tower, adapted to answers (Zhao et al., ICML 2024).

Grad-ECLIP explains CLIP's image-text score through its last attention:
the score's gradient on the attention output weights each channel, the
attention from the pooled query (CLS) to each patch key, loosened, weights
each place, and the map is ``ReLU(sum_c w_c * lambda_i * v_ic)``. Here the
score is an answer token's (logit, log-probability, or answer minus foil) and
any tower layer can be explained. Per head ``h``, query ``j`` and key ``i``:

- channel importance ``g_hj``: the gradient of the score on the head's output
  at ``j`` (the input of the attention's output projection, split by head);
- spatial weight ``lambda_hji`` from ``s = q_hj . k_hi * scale``: ``"relu"``
  ``ReLU(s)`` over its row sum (softmax without the exponential, the issue's
  reading of "loosened"), ``"cosine"`` the cosine of ``q`` and ``k`` min-max
  normalised over keys (what the authors' code does), or ``"softmax"`` the
  model's own attention (not loosened: then ``sum_i`` of the map before ReLU
  is exactly ``sum_j g_j . o_j``, a check);
- ``queries="all"``: ``M_i = sum_h sum_j lambda_hji (g_hj . v_hi)``; a VLM has
  no pooled token, every tower token reaches the answer. ``"pooled"``:
  ``M_i = sum_h mean_j(lambda_hji) ((sum_j g_hj) . v_hi)``, one pooled query
  as CLIP's CLS.

The map is ``ReLU(M)`` on the tower's patches (CLS dropped), placed on the
image through :func:`mmlens.models.tower.tower_views` (LLaVA-NeXT and
OneVision: the base view and the unpadded anyres tiles); each decoder image
token scores the sum of the patches folded into it (OneVision's shrunk tile
grid: shared by overlap), and ``extras["patch_grids"]`` keeps the
tower-resolution grids (:func:`patch_heatmaps` paints them, views averaged
per pixel). The
authors recompute CLIP's last layer as one head; here every head is the
model's own. One forward and one backward pass per target.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-qwen2-vl")
    >>> from PIL import Image
    >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (56, 56), "red")])
    >>> result = grad_eclip(model, build_targets(model, batch, answer="red"))
    >>> tuple(result.extras["patch_grids"].shape)  # (batch, targets, views, 4, 4): 2x2 tokens of 2x2 patches
    (1, 1, 1, 4, 4)
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mmlens.attribution.base import Attribution, causal_cut, empty_scores, require_images
from mmlens.box import Box
from mmlens.errors import MmlensError, check_choice
from mmlens.hooks import Site, attach
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.model import Batch, Model
from mmlens.models import runtime
from mmlens.models.heads import head_layout
from mmlens.models.tower import TowerView, area_weights, stream_order, tower_views, view_indices
from mmlens.readout import Targets, logits_at

SPATIAL = ("relu", "cosine", "softmax")
QUERIES = ("all", "pooled")
_CHUNK_ELEMENTS = 1 << 22  # spatial weights made at once (heads x query rows x keys): 16 MB of fp32


@dataclass
class _Layer:
    """What one tower layer's attention saw: per sequence (q, k, v, mask, scale), and its heads' output."""

    sequences: list = field(default_factory=list)
    output: list = field(default_factory=list)  # the output projection's input, in the graph


@dataclass
class TowerMaps:
    """Grad-ECLIP maps of several tower layers: ``grids[layer]`` is ``(batch, targets, views, R, C)`` (NaN-padded)."""

    grids: dict[int, torch.Tensor]
    views: list[TowerView]
    reached: list[int]  # layers whose attention output the answer depends on


def tower_maps(model: Model, targets: Targets, layers: Sequence[int] | None = None, spatial: str = "relu",
               queries: str = "all", last_reached: bool = False, method: str = "grad_eclip") -> TowerMaps:
    """Grad-ECLIP patch grids of tower ``layers`` (all when None), from one forward and one backward per target.

    ``last_reached`` maps only the last of those layers whose attention the
    answer depends on (every layer's gradient is needed to know which). ``method``
    names the caller in errors.

    Example:
        >>> maps = tower_maps(model, targets, layers=[0, 1])
        >>> sorted(maps.grids)
        [0, 1]
    """
    check_choice(spatial, SPATIAL, "spatial weighting")
    check_choice(queries, QUERIES, "query pooling")
    require_images(model, targets.batch, method)
    views = tower_views(model, targets.batch)
    order = stream_order(model, targets.batch)
    if not views:
        raise MmlensError(f"{method}: the batch has no images")
    count = model.n_vision_layers
    chosen = list(range(count)) if layers is None else [_layer_index(i, count) for i in layers]
    records = {i: _Layer() for i in chosen}
    with ExitStack() as stack, torch.enable_grad():
        for i in chosen:
            _watch(model, i, records[i], stack)
        logits = logits_at(model, _with_pixel_grads(targets.batch), targets.positions)  # (rows, targets, vocab)
        outputs = [records[i].output for i in chosen]
        if any(len(o) != 1 for o in outputs) or any(not r.sequences for r in records.values()):
            raise MmlensError(f"{method}: {type(model.hf).__name__}'s tower attention did not run through "
                              "transformers' attention interface once per layer; it is not supported")
        per_target = []
        for j in range(targets.count):
            score = targets.scores(logits[:, j], j)
            score = (score * targets.real[:, j].to(score)).sum()
            per_target.append(torch.autograd.grad(score, [o[0] for o in outputs], retain_graph=j + 1 < targets.count,
                                                  allow_unused=True))
    reached = [i for index, i in enumerate(chosen)
               if any(g[index] is not None and bool(g[index].abs().sum() > 0) for g in per_target)]
    mapped = reached[-1:] if last_reached else chosen
    grids = {i: _layer_grids(records[i], [g[chosen.index(i)] for g in per_target], views, targets, spatial, queries,
                             order) for i in mapped}
    return TowerMaps(grids, views, reached)


def grad_eclip(model: Model, targets: Targets, layer: int | None = None, spatial: str = "relu",
               queries: str = "all") -> Attribution:
    """Grad-ECLIP in one tower layer (default: the last one whose output reaches the answer).

    Scores are per decoder position (image tokens: the sum of their tower
    patches; everything else 0); ``extras["patch_grids"]`` holds the
    tower-resolution maps, ``extras["patch_shapes"]`` each row's ``[R, C]``
    per view, ``extras["layer"]`` the layer explained.

    Example:
        >>> grad_eclip(model, targets, spatial="cosine").extras["layer"]
        1
    """
    maps = tower_maps(model, targets, None if layer is None else [layer], spatial, queries, last_reached=layer is None)
    if not maps.grids:
        raise MmlensError("grad_eclip: the answer does not depend on any tower layer's attention")
    chosen = next(iter(maps.grids))
    grids = maps.grids[chosen]
    return Attribution(decoder_scores(grids, maps.views, targets),
                       {"patch_grids": grids, "merge": maps.views[0].merge, "patch_shapes": patch_shapes(maps.views),
                        "layer": chosen, "spatial": spatial, "queries": queries})


def decoder_scores(grids: torch.Tensor, views: list[TowerView], targets: Targets) -> torch.Tensor:
    """Tower-resolution grids ``(batch, targets, views, R, C)`` to decoder scores: each image token sums its patches.

    Example:
        >>> decoder_scores(result.extras["patch_grids"], tower_views(model, batch), targets).shape[-1]  # doctest: +SKIP
        21
    """
    layout = targets.batch.layout
    scores = empty_scores(targets)
    slots = _view_slots(views)
    for view, slot in zip(views, slots):
        positions = layout.image_positions(view.row, view.image, view.view)
        grid = layout.images[view.row][view.image].views[view.view]
        fine = grids[view.row, :, slot, : view.tokens.shape[0], : view.tokens.shape[1]]
        # (targets, rows, cols): merge blocks summed; OneVision's shrunk tile view shares patches by overlap
        blocks = torch.einsum("rR,tRC,cC->trc", area_weights(fine.shape[1], grid.rows), fine,
                              area_weights(fine.shape[2], grid.cols))
        r, c = layout.row[view.row, positions].long(), layout.col[view.row, positions].long()
        scores[view.row][:, positions] = blocks[:, r, c]
    return causal_cut(scores, targets)


def patch_shapes(views: list[TowerView]) -> list[list[list[int]]]:
    """Each batch row's tower grid ``[R, C]`` per view, in view order (``extras["patch_shapes"]``).

    Example:
        >>> patch_shapes(tower_views(mmlens.load("tiny-llava-next"), batch))  # doctest: +SKIP
        [[[4, 4], [8, 8]]]
    """
    shapes: list[list[list[int]]] = []
    for view in views:
        while len(shapes) <= view.row:
            shapes.append([])
        shapes[view.row].append(list(view.tokens.shape))
    return shapes


def patch_heatmaps(layout: TokenLayout, grids: torch.Tensor, merge: int, row: int = 0,
                   shapes: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """One row's tower-resolution grids ``(views, R, C)`` painted on its images, one array per image (original size).

    ``merge`` is the tower patches per decoder token per side (``extras["merge"]``);
    ``shapes``, each view's ``(R, C)`` (``extras["patch_shapes"][row]``), is
    needed only where a grid is not the view's tokens times ``merge``
    (OneVision's shrunk tile view); by default it is.

    Each pixel takes the mean of the views that cover it (tiles and a global
    view; LLaVA-NeXT's base view and tile grid), each view's value being that
    of its patch over the pixel, as :meth:`TokenLayout.to_heatmaps` does for
    decoder tokens. A coarse patch weighs as much as a fine one there.

    Example:
        >>> maps = patch_heatmaps(batch.layout, result.extras["patch_grids"][0, 0], result.extras["merge"])
        >>> maps[0].shape == batch.layout.images[0][0].size
        True
    """
    images, tokens, slot = [], [], 0
    for i, info in enumerate(layout.images[row]):
        fine_views = []
        for v, view in enumerate(info.views):
            rows, cols = shapes[slot] if shapes is not None else (view.rows * merge, view.cols * merge)
            fine_views.append(View(rows, cols, Box.of(view.box), view.kind))
            for r in range(rows):
                for c in range(cols):
                    tokens.append((len(tokens), i, v, r, c, slot))
            slot += 1
        images.append(ImageInfo(info.size, fine_views))
    fine = TokenLayout.build(len(tokens), [images], [[t[:5] for t in tokens]])
    values = torch.tensor([float(grids[t[5], t[3], t[4]]) for t in tokens])
    return fine.to_heatmaps(values)[0]


# ---- internals ------------------------------------------------------------------------------------------
def _layer_index(i: int, count: int) -> int:
    if not -count <= i < count:
        raise MmlensError(f"vision layer {i} is out of range: the tower has {count} layers")
    return i % count


def _watch(model: Model, i: int, record: _Layer, stack: ExitStack) -> None:
    """Record layer ``i``'s attention inputs (per call) and its heads' output (the output projection's input)."""
    attention = model.vision_layers[i].get_submodule(model.adapter.vision_attn)
    heads = head_layout(attention, getattr(model.adapter, "vision_attn_out", None), model.adapter.family)

    def tap(query, key, value, mask, scale) -> None:
        groups = query.shape[1] // key.shape[1]  # grouped keys and values, if a tower ever has them
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        for b in range(query.shape[0]):
            part = None if mask is None else mask[b if mask.shape[0] > 1 else 0]
            record.sequences.append((query[b].detach(), key[b].detach(), value[b].detach(), part, float(scale)))

    def keep(value: torch.Tensor) -> None:
        record.output.append(value)

    stack.enter_context(runtime.attention_inputs(model.hf, attention, tap))
    stack.enter_context(attach(Site(f"vision.L{i}.heads", heads.out_proj, "input"), keep))


def _with_pixel_grads(batch: Batch) -> Batch:
    """The batch with its pixels as a leaf that needs gradients, so frozen towers still pass them."""
    inputs = dict(batch.inputs)
    pixels = inputs.get("pixel_values")
    if isinstance(pixels, torch.Tensor) and pixels.is_floating_point():
        inputs["pixel_values"] = pixels.detach().requires_grad_(True)
    return Batch(inputs, batch.layout, batch.prompts, batch.images)


def _layer_grids(record: _Layer, grads: list, views: list[TowerView], targets: Targets, spatial: str,
                 queries: str, order: torch.Tensor | None) -> torch.Tensor:
    """``(batch, targets, views, R, C)`` maps of one layer, NaN where a row has fewer views or smaller grids.

    Each attention sequence (an image, a frame, or a Qwen2.5-VL window) scores its own keys; the scores of
    all sequences form the tower's token stream, put back in image order (``order``) and cut into views.
    """
    output = record.output[0]
    heads = record.sequences[0][0].shape[0]
    stream, lengths, offset = [], [], 0
    for query, key, value, mask, scale in record.sequences:
        n = key.shape[1]
        per_target = [None if grad is None else
                      grad.reshape(-1, grad.shape[-1])[offset : offset + n].float().view(n, heads, -1).transpose(0, 1)
                      for grad in grads]
        stream.append(_contributions(query, key, value, mask, scale, spatial, queries, per_target).cpu())
        lengths.append(n)
        offset += n
    if offset != output.reshape(-1, output.shape[-1]).shape[0]:
        raise MmlensError(f"grad_eclip: {offset} tower tokens seen by the attention, {tuple(output.shape)} heads' outputs")
    tokens = torch.relu(torch.cat(stream, 1))  # (targets, stream)
    if order is not None:
        tokens = torch.empty_like(tokens).index_copy_(1, order, tokens)
    if len(lengths) != sum(v.sequences for v in views):  # windows, not views: views take their patches in turn
        lengths = [v.per_sequence for v in views for _ in range(v.sequences)]
        if sum(lengths) != tokens.shape[1]:
            raise MmlensError(f"grad_eclip: {tokens.shape[1]} tower tokens for {len(views)} image views of "
                              f"{sum(lengths)} patches")
    slots = _view_slots(views)
    rows, height = targets.batch.input_ids.shape[0], max(v.tokens.shape[0] for v in views)
    width = max(v.tokens.shape[1] for v in views)
    grids = torch.full((rows, targets.count, max(slots) + 1, height, width), float("nan"))
    for view, slot, index in zip(views, slots, view_indices(views, lengths)):
        grids[view.row, :, slot, : index.shape[0], : index.shape[1]] = tokens[:, index]  # (targets, R, C)
    return grids


def _spatial(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scale: float,
             spatial: str) -> torch.Tensor:
    """Spatial weights ``(heads, queries, keys)`` from one sequence's queries and keys."""
    if spatial == "cosine":
        cosine = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(key, dim=-1).transpose(1, 2)
        low, high = cosine.amin(-1, keepdim=True), cosine.amax(-1, keepdim=True)
        return (cosine - low) / (high - low).clamp_min(1e-12)
    scores = query @ key.transpose(1, 2) * scale
    if mask is not None:  # tower padding masks: bool (True = visible) or additive
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    if spatial == "softmax":
        return torch.softmax(scores, -1)
    loose = torch.relu(scores).nan_to_num(0.0)
    return loose / loose.sum(-1, keepdim=True).clamp_min(1e-12)


def _contributions(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   scale: float, spatial: str, queries: str, grads: list[torch.Tensor | None]) -> torch.Tensor:
    """``M_i`` before the ReLU, the channel-weighted, spatially weighted value of each key ``i``, for each
    target's gradient of the heads' outputs ``(heads, queries, head_dim)`` (None: zeros): ``(targets, keys)``.

    The spatial weights are made a block of query rows at a time (each row is normalised on its own), so
    no ``(heads, queries, keys)`` tensor is held: 544 MB of fp32 per head for Qwen2-VL's 11,664 patches of a
    1512 px image.
    """
    query, key, value = query.float(), key.float(), value.float()
    heads, count = query.shape[:2]
    keys = key.shape[1]
    out = torch.zeros(len(grads), keys, device=query.device)
    pooled = torch.zeros(heads, keys, device=query.device) if queries == "pooled" else None
    step = max(1, _CHUNK_ELEMENTS // (heads * keys))
    for start in range(0, count, step):
        rows = slice(start, start + step)
        part = mask if mask is None or mask.shape[-2] == 1 else mask[..., rows, :]
        weights = _spatial(query[:, rows], key, part, scale, spatial)  # (heads, rows, keys)
        if pooled is not None:  # the queries' mean weight, paired below with the summed gradient
            pooled += weights.sum(1)
            continue
        for t, grad in enumerate(grads):
            if grad is not None:
                out[t] += (weights * (grad[:, rows] @ value.transpose(1, 2))).sum((0, 1))
    if pooled is not None:
        for t, grad in enumerate(grads):
            if grad is not None:
                out[t] = (pooled / count * (value @ grad.sum(1)[..., None])[..., 0]).sum(0)
    return out


def _view_slots(views: list[TowerView]) -> list[int]:
    """Each view's index among its row's views (the ``views`` axis of the grids)."""
    slots, seen = [], {}
    for view in views:
        slots.append(seen.get(view.row, 0))
        seen[view.row] = slots[-1] + 1
    return slots
