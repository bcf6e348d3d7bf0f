"""Logit-lens maps (attribution methods ``logit_lens``, ``logit_lens_arc``, ``logit_lens_msea``).

Unembed the hidden states at every position and read the answer's score: one
map per answer token. (The layer-by-layer "look inside" grid of top tokens is
:func:`mmlens.lens.logit_lens`.)

For a target token ``c``: ``map = ReLU(unembed(final_norm(h_L))[c])`` at each
position, with ``h_L`` the residual stream after layer ``layer`` (the last by
default). Image positions give a heatmap; text positions give word scores.

``remove_context=True`` applies our reading of activation-ranking correlation
(ARC): earlier context tokens "leak" their own class into the map. Each
earlier text position ``k`` (prompt words and earlier answer tokens) has a map
for its own token, and a weight: the rank-biased overlap (p = 0.9) of the
top-``top_k`` next-token lists at ``k`` and at the target position. Their
weighted mean ``I`` is subtracted with a least-squares scale
``lam = clip(<M, I> / <I, I>, 0, 1)``: ``ReLU(M - lam I)``. The published
equation is not public; this reading is parameterised and documented in
docs/methods.md.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> bool((logit_lens_map(model, targets).scores >= 0).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.attribution.base import Attribution, causal_cut, empty_scores
from mmlens.box import Box
from mmlens.data.images import MAX_PIXELS
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.layout import Modality
from mmlens.model import Model
from mmlens.models import runtime
from mmlens.readout import Targets, same_targets, unembed, unembed_blocks


def logit_lens_map(
    model: Model, targets: Targets, layer: int = -1, remove_context: bool = False, top_k: int = 50
) -> Attribution:
    """ReLU of the answer's logit-lens score at every position (optionally with ARC context removal).

    Example:
        >>> logit_lens_map(model, targets, layer=0).extras
        {'layer': 0, 'remove_context': False}
    """
    index = layer % model.n_layers
    with torch.no_grad(), capture(model, f"lm.L{index}.resid") as captured:
        model.forward(targets.batch, use_cache=False, **runtime.last_logits_only(model.hf))
        read = _read_vocabulary(model, captured[f"lm.L{index}.resid"], targets, top_k if remove_context else 0)
    scores = empty_scores(targets)
    for j in range(targets.count):
        raw = _class_scores(read, targets, j)  # (batch, seq)
        scores[:, j] = raw.clamp(min=0)
        if remove_context:
            scores[:, j] = _remove_context(read, targets, j, scores[:, j])
    return Attribution(causal_cut(scores, targets), {"layer": index, "remove_context": remove_context})


def logit_lens_arc(model: Model, targets: Targets, layer: int = -1, top_k: int = 50) -> Attribution:
    """:func:`logit_lens_map` with activation-ranking-correlation context removal.

    Example:
        >>> bool((logit_lens_arc(model, targets).scores >= 0).all())
        True
    """
    return logit_lens_map(model, targets, layer=layer, remove_context=True, top_k=top_k)


def logit_lens_msea(
    model: Model, targets: Targets, scales: tuple[float, ...] = (0.75, 1.0, 1.5), layer: int = -1
) -> Attribution:
    """Multi-scale logit-lens maps (MSEA): the map at several input resolutions, averaged in pixel space.

    Each image is resized by every factor in ``scales``; the prompt and answer
    are the same. Each scale's map is painted at pixel level through its own
    layout, resized back to the original image and averaged; each original
    image token then takes the mean of that map over its patch box. Families
    that resize every image to one size (LLaVA-1.5, PaliGemma) see the same
    input at every scale, so the result equals the plain map there.

    Each scale must keep every image at least one patch on its shorter side
    and under :data:`~mmlens.data.images.MAX_PIXELS`; others are refused
    with the valid range (a 1-pixel image tells nothing: its map is blank).
    """
    check_scales(model, scales, targets.batch.images)
    base = logit_lens_map(model, targets, layer=layer)
    layout = targets.batch.layout
    if not any(targets.batch.images):
        return base
    # total[j][row][image]: the map of target j, summed over scales, at original pixel size
    total = [[[np.zeros(info.size) for info in row] for row in layout.images] for _ in range(targets.count)]
    for scale in scales:
        resized = [[_resize(image, scale) for image in row] for row in targets.batch.images]
        rescaled = same_targets(model, model.prepare(targets.batch.prompts, resized), targets)
        scaled = logit_lens_map(model, rescaled, layer=layer)
        for j in range(targets.count):
            for row, maps in enumerate(rescaled.batch.layout.to_heatmaps(scaled.scores[:, j])):
                for i, heat in enumerate(maps):
                    total[j][row][i] += _back_to(heat, layout.images[row][i].size) / len(scales)
    scores = base.scores.clone()
    for row in range(scores.shape[0]):
        for position, (image, box) in layout.token_boxes(row).items():
            for j in range(targets.count):
                scores[row, j, position] = _box_mean(total[j][row][image], box)
    return Attribution(causal_cut(scores, targets), {"scales": list(scales), "layer": base.extras["layer"]})


def check_scales(model: Model, scales: Any, images: list[list[Image.Image]]) -> None:
    """Refuse MSEA scales that are empty, not positive numbers, or shrink an image below one patch.

    Example:
        >>> check_scales(model, (0.01,), [[Image.new("RGB", (64, 64))]])  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: logit_lens_msea scale 0.01 makes the 64x64 image smaller than one 8-pixel patch; ...
    """
    try:
        values = [float(v) for v in scales] if not isinstance(scales, (str, bytes)) else None
    except (TypeError, ValueError):
        values = None
    if not values:
        raise MmlensError(f"logit_lens_msea scales are one or more positive numbers, e.g. (0.75, 1.0, 1.5); "
                          f"got {scales!r}")
    patch = getattr(getattr(model.hf.config, "vision_config", None), "patch_size", 1)
    patch = patch if isinstance(patch, int) and patch > 0 else 1
    sizes = [image.size for row in images for image in row]
    low = max([patch / min(w, h) for w, h in sizes], default=0.0)
    high = min([(MAX_PIXELS / (w * h)) ** 0.5 for w, h in sizes], default=float("inf"))
    for value in values:
        if not value > 0 or not np.isfinite(value):
            raise MmlensError(f"logit_lens_msea scales must be positive numbers, got {value:g}")
        for w, h in sizes:
            small = min(round(w * value), round(h * value)) < patch
            if small or w * h * value * value > MAX_PIXELS:
                what = f"smaller than one {patch}-pixel patch" if small else f"over {MAX_PIXELS:,} pixels"
                raise MmlensError(f"logit_lens_msea scale {value:g} makes the {w}x{h} image {what}; scales for "
                                  f"these images run from {low:.3g} to {high:.3g}")


def _resize(image: Image.Image, scale: float) -> Image.Image:
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return image.resize((width, height), Image.BICUBIC)


def _back_to(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heatmap resized to ``size`` (height, width), NaN (uncovered) as 0."""
    filled = np.nan_to_num(heat.astype(np.float32), nan=0.0)
    return np.asarray(Image.fromarray(filled, mode="F").resize((size[1], size[0]), Image.BILINEAR))


def _box_mean(heat: np.ndarray, box: Box) -> float:
    """Mean of ``heat`` (height, width) over ``box`` ``(x0, y0, x1, y1)``, at least one pixel."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(x0, 0), max(y0, 0)
    window = heat[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    return float(window.mean()) if window.size else 0.0


@dataclass
class _Read:
    """What the maps read of the unembedded hidden states: some words' logits everywhere, and each position's top."""

    logits: torch.Tensor  # (batch, seq, words): the logits of ``words`` at every position
    column: dict[int, int]  # token id -> its column in ``logits``
    top: torch.Tensor | None  # (batch, seq, k) top token ids, for context removal


def _read_vocabulary(model: Model, hidden: torch.Tensor, targets: Targets, top_k: int) -> _Read:
    """Unembed ``hidden`` a block of positions at a time and keep what the maps read: the logits of the targets,
    the foils and the prompt's words (each a context token's own class), and with ``top_k`` each position's top
    ids (:func:`~mmlens.readout.logits.unembed_blocks`: no whole ``(seq, vocab)`` block is held).
    """
    batch = targets.batch
    words = [targets.tokens.flatten(), batch.input_ids.flatten()]
    if targets.foils is not None:
        words.append(targets.foils.flatten())
    rows, seq = hidden.shape[:2]
    vocabulary = unembed(model, hidden[:1, :1]).shape[-1]
    ids = torch.unique(torch.cat([w.cpu() for w in words]))
    ids = ids[(ids >= 0) & (ids < vocabulary)]  # padding ids outside the vocabulary are never read
    logits = torch.empty(rows, seq, len(ids))
    top = torch.empty(rows, seq, min(top_k, vocabulary), dtype=torch.long) if top_k else None
    for start, block in unembed_blocks(model, hidden):
        stop = start + block.shape[1]
        logits[:, start:stop] = block[..., ids.to(block.device)].cpu()
        if top is not None:
            top[:, start:stop] = block.topk(top.shape[-1], dim=-1).indices.cpu()
    return _Read(logits, {int(t): c for c, t in enumerate(ids.tolist())}, top)


def _columns(read: _Read, tokens: torch.Tensor) -> torch.Tensor:
    """Column indices of ``tokens`` in ``read.logits``."""
    return torch.tensor([read.column[int(t)] for t in tokens.flatten().tolist()]).view(tokens.shape)


def _class_scores(read: _Read, targets: Targets, j: int) -> torch.Tensor:
    seq = read.logits.shape[1]
    token = _columns(read, targets.tokens[:, j])[:, None, None].expand(-1, seq, 1)
    scores = read.logits.gather(-1, token)[..., 0]
    if targets.foils is not None:
        foil = _columns(read, targets.foils[:, j])[:, None, None].expand(-1, seq, 1)
        scores = scores - read.logits.gather(-1, foil)[..., 0]
    return scores


def _remove_context(read: _Read, targets: Targets, j: int, maps: torch.Tensor) -> torch.Tensor:
    """Subtract the RBO-weighted maps of earlier text tokens' own classes, per row."""
    layout = targets.batch.layout
    ids = targets.batch.input_ids.cpu()
    position = int(targets.positions[j])
    cleaned = maps.clone()
    for row in range(read.logits.shape[0]):
        context = [k for k in range(position + 1) if layout.modality[row, k] == int(Modality.TEXT)]
        if not context:
            continue
        weights = torch.tensor([rank_biased_overlap(read.top[row, k].tolist(), read.top[row, position].tolist())
                                for k in context])
        own = read.logits[row][:, _columns(read, ids[row, context])]  # (seq, context): each token's own class
        interference = (weights[:, None] * own.clamp(min=0).T).sum(0) / weights.sum().clamp_min(1e-12)
        scale = (maps[row] @ interference) / (interference @ interference).clamp_min(1e-12)
        cleaned[row] = (maps[row] - scale.clamp(0, 1) * interference).clamp(min=0)
    return cleaned


def rank_biased_overlap(first: list[int], second: list[int], p: float = 0.9) -> float:
    """Rank-biased overlap of two ranked lists (Webber et al., 2010), truncated at their length.

    Example:
        >>> round(rank_biased_overlap([1, 2, 3], [1, 2, 3]), 3)
        1.0
        >>> rank_biased_overlap([1, 2], [3, 4])
        0.0
    """
    depth = min(len(first), len(second))
    seen_first: set[int] = set()
    seen_second: set[int] = set()
    total, weight_sum = 0.0, 0.0
    for d in range(1, depth + 1):
        seen_first.add(first[d - 1])
        seen_second.add(second[d - 1])
        weight = p ** (d - 1)
        total += weight * len(seen_first & seen_second) / d
        weight_sum += weight
    return total / weight_sum if weight_sum else 0.0
