"""What a hidden image token becomes: the baselines that occlusion, RISE and faithfulness metrics share.

A hidden token is replaced by a :class:`Baseline`:

- at the decoder input (fast: the vision tower runs once, and every variant
  replays the recorded language-model call, see :mod:`mmlens.models.decoder`):
  ``MEAN`` (the mean image-token embedding of the token's image,
  :func:`image_baseline`, a "grey" patch as the decoder sees it) or ``ZEROS``;
- in pixel space (slow: the whole model re-runs per variant): ``BLUR`` (the
  token's patch blurred) or ``MEAN_COLOUR`` (filled with the image's mean
  colour), using the layout's token boxes in original pixels
  (:func:`hidden_images`).

Example:
    >>> import torch
    >>> from mmlens.layout import ImageInfo, TokenLayout, View
    >>> layout = TokenLayout.build(seq_len=3, images=[[ImageInfo((2, 2), [View(1, 2, (0, 0, 2, 2))])]],
    ...                            image_tokens=[[(1, 0, 0, 0, 0), (2, 0, 0, 0, 1)]], special=[[0]])
    >>> image_baseline(layout, 0, torch.tensor([[[9.0], [1.0], [3.0]]]))[0, :, 0].tolist()
    [9.0, 2.0, 2.0]
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from PIL import Image, ImageFilter

from mmlens.box import Box
from mmlens.errors import MmlensError, check_enum
from mmlens.layout import TokenLayout


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


def image_baseline(layout: TokenLayout, row: int, embeds: torch.Tensor) -> torch.Tensor:
    """Each image token replaced by the mean embedding of its image's tokens; other tokens unchanged.

    ``embeds`` is one row's decoder input, ``(1, seq, hidden)`` (or a stack of
    copies of it: the mean is taken in the first).

    Example:
        >>> image_baseline(layout, 0, torch.ones(1, 3, 4)).shape
        torch.Size([1, 3, 4])
    """
    base = embeds.clone()
    for image in range(len(layout.images[row])):
        positions = layout.image_positions(row, image).to(embeds.device)
        base[0, positions] = embeds[0, positions].mean(0)
    return base


def embedding_baseline(layout: TokenLayout, row: int, embeds: torch.Tensor, baseline: Baseline | str) -> torch.Tensor:
    """The decoder-input baseline of one row: :func:`image_baseline` (``mean``) or zeros at image tokens.

    Example:
        >>> embedding_baseline(layout, 0, torch.ones(1, 3, 4), "zeros")[0, :, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    baseline = check_enum(baseline, Baseline, "baseline")
    if baseline is Baseline.MEAN:
        return image_baseline(layout, row, embeds)
    if baseline.pixel:
        raise MmlensError(f"{baseline.value!r} is a pixel baseline, not one of the decoder input")
    base = embeds.clone()
    base[0, layout.image_positions(row).to(embeds.device)] = 0
    return base


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
    baseline = check_enum(baseline, Baseline, "baseline")
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


def _box_mask(size: tuple[int, int], boxes: list[Box]) -> np.ndarray:
    """Pixels of an image of ``size`` (height, width) whose centres fall in any of the token boxes."""
    mask = np.zeros(size, dtype=bool)
    for box in boxes:
        mask |= box.mask(size)
    return mask


def _half_patch(boxes: list[Box]) -> float:
    if not boxes:
        return 2.0
    sides = [max(box.width, box.height) for box in boxes]
    return float(np.mean(sides)) / 2
