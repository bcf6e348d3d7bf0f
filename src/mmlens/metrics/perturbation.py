"""Hiding image tokens, and the answer probability that remains.

Faithfulness metrics ask how the answer changes when chosen image tokens are
hidden. A hidden token is replaced by a :class:`Baseline`:

- at the decoder input (fast: the vision tower runs once, and every variant
  replays the recorded language-model call, see :mod:`mmlens.models.decoder`):
  ``MEAN`` (the mean image-token embedding of the token's image, as in
  :mod:`mmlens.attribution.occlusion`) or ``ZEROS``;
- in pixel space (slow: the whole model re-runs per variant): ``BLUR`` (the
  token's patch blurred) or ``MEAN_COLOUR`` (filled with the image's mean
  colour), using the layout's token boxes in original pixels.

Example:
    >>> import mmlens, torch
    >>> from PIL import Image
    >>> from mmlens.attribution.targets import build_targets
    >>> model = mmlens.load("tiny-llava")
    >>> targets = build_targets(model, model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))]),
    ...                         answer="red")
    >>> hide = torch.zeros(2, targets.batch.input_ids.shape[1], dtype=torch.bool)
    >>> hide[1, targets.batch.layout.image_positions(0)] = True  # variant 1: every image token hidden
    >>> answer_probabilities(model, targets, hide).shape
    torch.Size([2])
"""

from __future__ import annotations

import inspect
from enum import Enum

import numpy as np
import torch
from PIL import Image, ImageFilter

from mmlens.attribution.occlusion import image_baseline
from mmlens.attribution.targets import Targets
from mmlens.errors import MmlensError
from mmlens.layout import TokenLayout
from mmlens.model import Model
from mmlens.models.decoder import DecoderCall, record_decoder_call


class Baseline(str, Enum):
    """What a hidden image token becomes."""

    MEAN = "mean"  # mean image-token embedding of its image (decoder input)
    ZEROS = "zeros"  # zero embedding (decoder input)
    BLUR = "blur"  # its pixels Gaussian-blurred (full model re-run)
    MEAN_COLOUR = "mean_colour"  # its pixels filled with the image's mean colour (full model re-run)

    @property
    def pixel(self) -> bool:
        """Whether this baseline edits pixels (and so re-runs the vision tower)."""
        return self in (Baseline.BLUR, Baseline.MEAN_COLOUR)


def answer_probabilities(
    model: Model,
    targets: Targets,
    hide: torch.Tensor,
    row: int = 0,
    target: int = 0,
    baseline: Baseline | str = Baseline.MEAN,
    chunk: int = 32,
    call: DecoderCall | None = None,
    blur_radius: float | None = None,
) -> torch.Tensor:
    """Teacher-forced probability of answer token ``target`` of ``row`` under each hiding variant.

    ``hide`` is ``(variants, seq)`` boolean over the row's sequence; only
    image positions may be True. Variants run ``chunk`` at a time. ``call``
    reuses a recorded decoder call of ``targets.batch`` (embedding baselines).
    Foils and the targets' score kind are ignored: this is always the softmax
    probability of the answer token at its position.

    Example:
        >>> answer_probabilities(model, targets, hide, baseline="zeros").shape  # doctest: +SKIP
        torch.Size([2])
    """
    baseline = Baseline(baseline)
    _check(targets, hide, row, target)
    if baseline.pixel:
        return _pixel_probabilities(model, targets, hide, row, target, baseline, chunk, blur_radius)
    call = (call or record_decoder_call(model, targets.batch)).row(row)
    x = call.embeds
    base = _embedding_baseline(targets.batch.layout, row, x, baseline)
    position = int(targets.positions[target])
    token = int(targets.tokens[row, target])
    out = []
    for start in range(0, hide.shape[0], chunk):
        weight = hide[start : start + chunk, :, None].to(x.device, x.dtype)
        with torch.no_grad():
            logits = call.logits(x * (1 - weight) + base * weight, positions=[position])[:, 0]
        out.append(torch.softmax(logits.float(), -1)[:, token].cpu())
    return torch.cat(out)


def hidden_images(
    images: list[Image.Image],
    layout: TokenLayout,
    row: int,
    positions: list[int],
    baseline: Baseline | str,
    blur_radius: float | None = None,
) -> list[Image.Image]:
    """Copies of ``images`` with the pixel boxes of the image tokens at ``positions`` hidden.

    A pixel is hidden when its centre lies in a hidden token's box (the rule
    :meth:`TokenLayout.to_heatmaps` paints by). Where views overlap (tiles
    and a global view), hiding one token's pixels also changes the other views.
    ``blur_radius`` defaults to half a patch side of the image's tokens.

    Example:
        >>> hidden_images(batch.images[0], batch.layout, 0, [1, 2], "mean_colour")[0].size  # doctest: +SKIP
        (64, 64)
    """
    baseline = Baseline(baseline)
    boxes = layout.token_boxes(row)
    out = []
    for i, image in enumerate(images):
        mine = [box for image_index, box in boxes.values() if image_index == i]
        hidden = [boxes[p][1] for p in positions if boxes[p][0] == i]
        mask = _box_mask((image.height, image.width), hidden)
        if not mask.any():
            out.append(image)
            continue
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        if baseline is Baseline.BLUR:
            radius = blur_radius if blur_radius is not None else _half_patch(mine)
            fill = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
        elif baseline is Baseline.MEAN_COLOUR:
            fill = np.broadcast_to(pixels.reshape(-1, 3).mean(0), pixels.shape)
        else:
            raise MmlensError(f"{baseline.value!r} is not a pixel baseline")
        pixels = np.where(mask[..., None], fill, pixels)
        out.append(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)))
    return out


def _check(targets: Targets, hide: torch.Tensor, row: int, target: int) -> None:
    if not 0 <= target < targets.count or not bool(targets.real[row, target]):
        raise MmlensError(f"row {row} has no answer token {target}")
    layout = targets.batch.layout
    if hide.ndim != 2 or hide.shape[1] != layout.seq_len:
        raise ValueError(f"hide must be (variants, {layout.seq_len}), got {tuple(hide.shape)}")
    image = torch.zeros(layout.seq_len, dtype=torch.bool)
    image[layout.image_positions(row)] = True
    if (hide.bool().cpu() & ~image).any():
        raise ValueError("only image tokens can be hidden")


def _embedding_baseline(layout: TokenLayout, row: int, x: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    if baseline is Baseline.MEAN:
        return image_baseline(layout, row, x)
    base = x.clone()
    base[0, layout.image_positions(row).to(x.device)] = 0
    return base


def _pixel_probabilities(model: Model, targets: Targets, hide: torch.Tensor, row: int, target: int,
                         baseline: Baseline, chunk: int, blur_radius: float | None) -> torch.Tensor:
    """Re-run the whole model on pixel-edited copies of the row's images, ``chunk`` variants at once."""
    batch = targets.batch
    prompt, images = batch.prompts[row], batch.images[row]
    answer = targets.tokens[row : row + 1, :-1]
    real = targets.real[row : row + 1, :-1]
    token = int(targets.tokens[row, target])
    # logits_to_keep spares the full-vocabulary logits of every prompt position.
    keeps = "logits_to_keep" in inspect.signature(model.hf.forward).parameters
    out = []
    for start in range(0, hide.shape[0], chunk):
        variants = hide[start : start + chunk].cpu()
        edited = [hidden_images(images, batch.layout, row, v.nonzero().flatten().tolist(), baseline, blur_radius)
                  for v in variants]
        # Same prompt and image sizes in every variant: no padding, equal lengths.
        rerun = model.prepare([prompt] * len(edited), edited, padding_side="left")
        if answer.shape[1]:
            rerun = model.append_tokens(rerun, answer.expand(len(edited), -1), real.expand(len(edited), -1))
        seq = rerun.input_ids.shape[1]
        position = seq - targets.count + target  # answer token j sits j places after the prompt's last token
        with torch.no_grad():
            if keeps:
                logits = model.forward(rerun, use_cache=False, logits_to_keep=seq - position).logits[:, 0]
            else:
                logits = model.forward(rerun, use_cache=False).logits[:, position]
        out.append(torch.softmax(logits.float(), -1)[:, token].cpu())
    return torch.cat(out)


def _box_mask(size: tuple[int, int], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Pixels whose centres fall in any ``(top, left, bottom, right)`` box."""
    height, width = size
    ys, xs = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
    mask = np.zeros(size, dtype=bool)
    for top, left, bottom, right in boxes:
        mask |= (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
    return mask


def _half_patch(boxes: list[tuple[float, float, float, float]]) -> float:
    if not boxes:
        return 2.0
    sides = [max(bottom - top, right - left) for top, left, bottom, right in boxes]
    return float(np.mean(sides)) / 2
