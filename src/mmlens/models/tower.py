"""Where each vision-tower token lands: tower sequences -> the layout's image views, at patch resolution.

The :class:`~mmlens.layout.TokenLayout` places *decoder* image tokens. Inside
the vision tower there are more tokens: a CLS token (CLIP), and ``m x m``
patches folded into each decoder token (Qwen2-VL's 2x2 merger, Idefics3's
pixel shuffle). :func:`tower_views` says, for every view of every image of a
batch, which tower sequence holds it and which token of that sequence each
fine patch is, as a ``(rows * m, cols * m)`` grid. Tower sequences are counted
the way the tower's attention sees them: one per image (LLaVA, PaliGemma,
Qwen2-VL, which attends within each image) or per frame (Idefics3 tiles, then
the global view), in batch-row and prompt order.

Qwen2.5-VL runs most tower layers on attention windows, its tokens permuted
merge block by merge block (``window_index``): :func:`stream_order` gives that
permutation, so a method can read its tower tokens back in image order. Families
whose tower crops tokens (LLaVA-NeXT's and OneVision's unpadded tiles) are not
mapped yet and say so.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-qwen2-vl")
    >>> batch = model.prepare("<image> what ?", [Image.new("RGB", (64, 64))])
    >>> view = tower_views(model, batch)[0]
    >>> view.merge, tuple(view.tokens.shape), view.tokens[0, :4].tolist()  # merge-block-major inside the tower
    (2, (4, 4), [0, 1, 4, 5])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmlens.errors import MmlensError
from mmlens.model import Batch, Model

#: family -> patch order inside the tower ("rows": row-major; "blocks": merge-block-major, each m x m block contiguous)
_ORDER = {"llava": "rows", "paligemma": "rows", "idefics3": "rows", "qwen2_vl": "blocks", "qwen2_5_vl": "blocks"}


@dataclass(frozen=True, eq=False)  # compared by identity: it holds a tensor
class TowerView:
    """One view of one image as the tower sees it: sequence ``sequence``, token ``tokens[R, C]`` at fine patch ``(R, C)``."""

    row: int  # batch row
    image: int  # image index within the row
    view: int  # view index within the image (the layout's)
    sequence: int  # index among the tower's attention sequences
    tokens: torch.Tensor  # (rows * merge, cols * merge) long, counted after any leading tokens (CLS)
    merge: int  # fine patches per decoder token, per side


def merge_factor(model: Model) -> int:
    """Tower patches per decoder token, per side (1: LLaVA, PaliGemma; 2: Qwen2-VL; Idefics3: its scale factor).

    Example:
        >>> merge_factor(mmlens.load("tiny-llava"))
        1
    """
    family = model.adapter.family
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from mmlens.models.qwen2_vl import merge_size

        return merge_size(model.processor)
    if family == "idefics3":
        return int(getattr(model.hf.config, "scale_factor", 1) or 1)
    return 1


def tower_views(model: Model, batch: Batch) -> list[TowerView]:
    """Every view of every image of ``batch``, in tower-sequence order.

    Example:
        >>> [v.sequence for v in tower_views(model, batch)]
        [0]
    """
    family = model.adapter.family
    if not model.adapter.multimodal:
        raise MmlensError(f"{model.name} has no vision tower")
    if family not in _ORDER:
        raise MmlensError(f"{family}: tower patches cannot be placed on the image yet (supported: "
                          f"{', '.join(sorted(_ORDER))})")
    merge = merge_factor(model)
    layout = batch.layout
    views, sequence = [], 0
    for row, images in enumerate(layout.images):
        for image, info in enumerate(images):
            for index, view in enumerate(info.views):
                tokens = fine_order(view.rows, view.cols, merge, _ORDER[family])
                views.append(TowerView(row, image, index, sequence, tokens, merge))
                sequence += 1
    return views


def fine_order(rows: int, cols: int, merge: int, order: str = "rows") -> torch.Tensor:
    """Tower token index of each fine patch of a ``rows x cols`` decoder grid folded ``merge x merge``.

    Example:
        >>> fine_order(1, 2, 2, "blocks").tolist()  # two 2x2 blocks, each contiguous in the tower
        [[0, 1, 4, 5], [2, 3, 6, 7]]
        >>> fine_order(1, 2, 2, "rows").tolist()
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    big_r = torch.arange(rows * merge)[:, None]
    big_c = torch.arange(cols * merge)[None, :]
    if order == "rows":
        return big_r * (cols * merge) + big_c
    block = (big_r // merge) * cols + big_c // merge
    return block * merge * merge + (big_r % merge) * merge + big_c % merge


def stream_order(model: Model, batch: Batch) -> torch.Tensor | None:
    """Where the tower's own token order differs from image order: ``order[p]`` is the image-order index of token ``p``.

    None when the tower keeps image order (every family but Qwen2.5-VL). Qwen2.5-VL
    permutes whole merge blocks into attention windows (transformers'
    ``get_vision_window_index``) before its first layer and undoes it after the merger.

    Example:
        >>> stream_order(mmlens.load("tiny-llava"), batch) is None
        True
    """
    if model.adapter.family != "qwen2_5_vl":
        return None
    from transformers.vision_utils import get_vision_window_index

    config = model.hf.config.vision_config
    unit = config.spatial_merge_size ** 2
    window_index, _ = get_vision_window_index(torch.as_tensor(batch.inputs["image_grid_thw"]).cpu(),
                                              spatial_merge_size=config.spatial_merge_size,
                                              window_size=config.window_size, patch_size=config.patch_size)
    return (window_index[:, None] * unit + torch.arange(unit)[None]).flatten()
