"""Occlusion and RISE on image patches, at the decoder's input.

Both replace image-token embeddings with a baseline, the mean image-token
embedding of that image (:func:`mmlens.readout.image_baseline`, a "grey" patch
as the decoder sees it), and watch the target scores. Every variant of a row runs through a recorded decoder call
(:mod:`mmlens.models.decoder`) in batches; the vision tower runs once.

- **Occlusion**: hide one window of ``window x window`` tokens of one view at a
  time; a token's score is the drop of the target score when its window is hidden.
- **RISE** (Petsiuk et al., 2018): random smooth masks drawn in pixel space
  (a coarse ``grid x grid`` Bernoulli grid, bilinearly upsampled with a random
  shift); a token keeps the mask value at its patch centre, so tiles and global
  views of one image see the same mask. Saliency is
  ``sum_i (f_i - mean f) m_i / (N p)``.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llava")
    >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64), "red")])
    >>> targets = build_targets(model, batch, answer="red")
    >>> occlusion(model, targets).scores.shape[:2]
    torch.Size([1, 1])
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from mmlens.attribution.base import Attribution, causal_cut, empty_scores, require_images
from mmlens.budget import MemoryBudget, plan_passes
from mmlens.errors import MmlensError, check_count
from mmlens.layout import TokenLayout
from mmlens.model import Model
from mmlens.models import runtime
from mmlens.models.decoder import DecoderCall, decoder_in_float32, record_decoder_call
from mmlens.readout import Targets, image_baseline


def occlusion(model: Model, targets: Targets, window: int = 1, memory_budget: MemoryBudget = None,
              precision: str = "auto") -> Attribution:
    """Score drop when each window of image tokens is replaced by the baseline.

    ``window`` is in layout-grid units: each pass hides a block of
    ``window x window`` patches of one view's grid, so 576 patches take
    ``ceil(24 / window) ** 2`` variants, not 576. ``memory_budget`` (see
    :mod:`mmlens.budget`) sizes how many variants go through the decoder per pass.

    ``precision``: ``"auto"`` runs a bf16 or fp16 decoder in float32, one layer
    at a time (:func:`~mmlens.models.decoder.decoder_in_float32`): one patch
    moves the answer logit less than a bf16 logit's spacing, so in bf16 the
    drops rank by rounding (Spearman 0.30 against fp32, docs/results.md).
    ``"model"`` computes in the model's own dtype.
    """
    window = check_count(window, "the occlusion window (in patches)")
    if precision not in ("auto", "model"):
        raise MmlensError(f"occlusion precision is 'auto' or 'model', got {precision!r}")
    require_images(model, targets.batch, "occlusion")
    _check_budget(model, targets, memory_budget, "occlusion")  # before any work
    # Recorded up to the language model's call: the vision tower runs, the decoder runs only below.
    call = record_decoder_call(model, targets.batch, run_decoder=False)
    upcast = precision == "auto" and runtime.is_half(model.hf)
    scores = empty_scores(targets)
    layout = targets.batch.layout
    for row in range(call.batch_size):
        units = _windows(layout, row, window)
        if not units:
            continue
        row_call = call.row(row)
        x, base = row_call.embeds, image_baseline(layout, row, row_call.embeds)
        if upcast:
            x, base = x.float(), base.float()
        masks = torch.zeros(len(units), x.shape[1], dtype=torch.bool)
        for u, positions in enumerate(units):
            masks[u, positions] = True
        with decoder_in_float32(model) if upcast else nullcontext():
            full = _target_scores(row_call, targets, row, x)[0]
            occluded = _masked_scores(row_call, targets, row, x, base, masks.to(x.dtype), memory_budget, "occlusion")
        drop = full[None] - occluded
        for u, positions in enumerate(units):
            scores[row][:, positions] = drop[u][:, None].cpu()
    computed = "float32" if upcast else str(call.embeds.dtype).removeprefix("torch.")
    return Attribution(causal_cut(scores, targets), {"window": window, "precision": computed})


def rise(model: Model, targets: Targets, masks: int = 256, grid: int = 4, keep: float = 0.5, seed: int = 0,
         memory_budget: MemoryBudget = None) -> Attribution:
    """RISE saliency over image tokens from ``masks`` random smooth masks.

    ``memory_budget`` (see :mod:`mmlens.budget`) sizes how many masked variants
    go through the decoder per pass; results do not depend on it.
    """
    masks = check_count(masks, "RISE masks")
    grid = check_count(grid, "the RISE grid (cells per side)")
    if not 0 < keep <= 1:
        raise MmlensError(f"RISE keep is the share of cells kept, in (0, 1]; got {keep}")
    require_images(model, targets.batch, "rise")
    _check_budget(model, targets, memory_budget, "RISE")  # before any work
    # Recorded up to the language model's call: the vision tower runs, the decoder runs only below.
    call = record_decoder_call(model, targets.batch, run_decoder=False)
    scores = empty_scores(targets)
    layout = targets.batch.layout
    generator = torch.Generator().manual_seed(seed)
    for row in range(call.batch_size):
        centres = _token_centres(layout, row)
        if not centres:
            continue
        row_call = call.row(row)
        x = row_call.embeds
        keep_masks = torch.ones(masks, x.shape[1])
        for image, info in enumerate(layout.images[row]):
            found = centres.get(image, {})
            points = torch.tensor(list(found.values()), dtype=torch.long).view(-1, 2)
            values = smooth_masks_at(masks, grid, keep, info.size, points, generator)  # (masks, points)
            keep_masks[:, list(found)] = values
        base = image_baseline(layout, row, x)
        values = _masked_scores(row_call, targets, row, x, base, (1 - keep_masks).to(x.dtype), memory_budget, "RISE")  # (masks, n)
        centred = values - values.mean(0, keepdim=True)
        saliency = torch.einsum("mn,mt->nt", centred.cpu().double(), keep_masks.double()) / (masks * keep)
        image_positions = layout.image_positions(row)
        scores[row][:, image_positions] = saliency[:, image_positions].float()
    return Attribution(causal_cut(scores, targets), {"masks": masks, "grid": grid, "keep": keep})


def _target_scores(call: DecoderCall, targets: Targets, row: int, embeds: torch.Tensor) -> torch.Tensor:
    """Scores of every target of ``row`` for a stack of variants of that row: ``(variants, n)``."""
    with torch.no_grad():
        logits = call.logits(embeds, positions=targets.positions)
    sub = _row_targets(targets, row)
    return torch.stack([sub.scores(logits[:, j], j) for j in range(targets.count)], dim=-1)


def _masked_scores(call: DecoderCall, targets: Targets, row: int, x: torch.Tensor, base: torch.Tensor,
                   hide: torch.Tensor, memory_budget: MemoryBudget, what: str) -> torch.Tensor:
    """Target scores with each variant ``x * (1 - hide) + base * hide``, as many per pass as the budget holds."""
    passes = plan_passes(call.model, hide.shape[0], x.shape[1], memory_budget, positions=targets.count, what=what)

    def run_pass(start: int, stop: int) -> torch.Tensor:
        weight = hide[start:stop, :, None].to(x.device)
        variants = x * (1 - weight) + base * weight
        return _target_scores(call, targets, row, variants)

    return torch.cat(passes.run(run_pass))


def _check_budget(model: Model, targets: Targets, memory_budget: MemoryBudget, what: str) -> None:
    """Too small a budget for one variant fails here, before the vision tower runs."""
    plan_passes(model, 1, targets.batch.input_ids.shape[1], memory_budget, positions=targets.count, what=what)


def _row_targets(targets: Targets, row: int) -> Targets:
    foils = targets.foils[row : row + 1] if targets.foils is not None else None
    return Targets(targets.batch, targets.positions, targets.tokens[row : row + 1], targets.real[row : row + 1],
                   targets.texts[row : row + 1], foils, targets.score)


def _windows(layout: TokenLayout, row: int, window: int) -> list[list[int]]:
    """Image-token positions grouped into ``window x window`` blocks of each view's grid."""
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for position in layout.image_positions(row).tolist():
        key = (int(layout.image[row, position]), int(layout.view[row, position]),
               int(layout.row[row, position]) // window, int(layout.col[row, position]) // window)
        groups.setdefault(key, []).append(position)
    return list(groups.values())


def _token_centres(layout: TokenLayout, row: int) -> dict[int, dict[int, tuple[int, int]]]:
    """Per image, each image token's patch centre in original pixels (clipped into the image)."""
    centres: dict[int, dict[int, tuple[int, int]]] = {}
    for position, (image, box) in layout.token_boxes(row).items():
        height, width = layout.images[row][image].size
        centre_x, centre_y = box.centre
        y = int(np.clip(centre_y, 0, height - 1))
        x = int(np.clip(centre_x, 0, width - 1))
        centres.setdefault(image, {})[position] = (y, x)
    return centres


def smooth_masks_at(count: int, grid: int, keep: float, size: tuple[int, int], points: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """RISE's masks, read at ``points`` ``(n, 2)`` of (y, x) pixels only: ``(count, n)``.

    Each mask is a random ``grid x grid`` binary grid upsampled bilinearly to
    ``grid + 1`` cells of the image's cell size and shifted by up to one cell;
    the value at a pixel is that bilinear sample, computed at the points RISE
    reads (the image tokens' centres) instead of over the whole image: 256
    masks of a 1512 px image would be 2.3 GB, and larger before the crop.

    Example:
        >>> smooth_masks_at(2, 4, 0.5, (64, 64), torch.tensor([[0, 0], [63, 63]]), torch.Generator()).shape
        torch.Size([2, 2])
    """
    height, width = size
    cell_h, cell_w = int(np.ceil(height / grid)), int(np.ceil(width / grid))
    coarse = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float().view(count, grid * grid)
    shifts_y = torch.randint(0, cell_h, (count,), generator=generator)
    shifts_x = torch.randint(0, cell_w, (count,), generator=generator)
    y0, y1, wy = _bilinear_taps(points[:, 0][None] + shifts_y[:, None], grid, (grid + 1) * cell_h)
    x0, x1, wx = _bilinear_taps(points[:, 1][None] + shifts_x[:, None], grid, (grid + 1) * cell_w)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return coarse.gather(1, y * grid + x)

    return (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1))


def _bilinear_taps(index: torch.Tensor, source: int, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two source cells and the weight of the second that bilinear upsampling (``align_corners=False``, as
    ``torch.nn.functional.interpolate``) reads for output ``index`` when ``source`` cells grow to ``target``."""
    position = ((index.float() + 0.5) * (source / target) - 0.5).clamp_min(0)
    low = position.long().clamp_max(source - 1)
    return low, (low + 1).clamp_max(source - 1), position - low
