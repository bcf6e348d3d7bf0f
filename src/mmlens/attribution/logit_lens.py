"""Logit-lens maps: unembed the hidden states at every position and read the answer's score.

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
    >>> from mmlens.attribution.targets import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> bool((logit_lens(model, targets).scores >= 0).all())
    True
"""

from __future__ import annotations

import torch

from mmlens.attribution.base import Attribution, causal_cut, empty_scores
from mmlens.attribution.targets import Targets
from mmlens.hooks import capture
from mmlens.layout import Modality
from mmlens.model import Model


def unembed(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm then unembedding of residual-stream vectors: ``(..., hidden) -> (..., vocab)``."""
    norm = model.module(model.adapter.final_norm)
    return model.module(model.adapter.unembed)(norm(hidden))


def logit_lens(
    model: Model, targets: Targets, layer: int = -1, remove_context: bool = False, top_k: int = 50
) -> Attribution:
    """ReLU of the answer's logit-lens score at every position (optionally with ARC context removal)."""
    index = layer % model.n_layers
    with torch.no_grad(), capture(model, f"lm.L{index}.resid") as captured:
        model.forward(targets.batch, use_cache=False)
        logits = unembed(model, captured[f"lm.L{index}.resid"]).float().cpu()  # (batch, seq, vocab)
    scores = empty_scores(targets)
    for j in range(targets.count):
        raw = _class_scores(logits, targets, j)  # (batch, seq)
        scores[:, j] = raw.clamp(min=0)
        if remove_context:
            scores[:, j] = _remove_context(logits, targets, j, scores[:, j], top_k)
    return Attribution(causal_cut(scores, targets), {"layer": index, "remove_context": remove_context})


def logit_lens_arc(model: Model, targets: Targets, layer: int = -1, top_k: int = 50) -> Attribution:
    """:func:`logit_lens` with activation-ranking-correlation context removal."""
    return logit_lens(model, targets, layer=layer, remove_context=True, top_k=top_k)


def _class_scores(logits: torch.Tensor, targets: Targets, j: int) -> torch.Tensor:
    token = targets.tokens[:, j][:, None, None].expand(-1, logits.shape[1], 1)
    scores = logits.gather(-1, token)[..., 0]
    if targets.foils is not None:
        foil = targets.foils[:, j][:, None, None].expand(-1, logits.shape[1], 1)
        scores = scores - logits.gather(-1, foil)[..., 0]
    return scores


def _remove_context(logits: torch.Tensor, targets: Targets, j: int, maps: torch.Tensor, top_k: int) -> torch.Tensor:
    """Subtract the RBO-weighted maps of earlier text tokens' own classes, per row."""
    layout = targets.batch.layout
    ids = targets.batch.input_ids.cpu()
    position = int(targets.positions[j])
    top = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices  # (batch, seq, k)
    cleaned = maps.clone()
    for row in range(logits.shape[0]):
        context = [k for k in range(position + 1) if layout.modality[row, k] == int(Modality.TEXT)]
        if not context:
            continue
        weights = torch.tensor([rank_biased_overlap(top[row, k].tolist(), top[row, position].tolist()) for k in context])
        context_maps = logits[row][:, ids[row, context]].clamp(min=0).T  # (context, seq): each token's own class
        interference = (weights[:, None] * context_maps).sum(0) / weights.sum().clamp_min(1e-12)
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
