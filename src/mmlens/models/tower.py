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

LLaVA-NeXT and OneVision run the tower on the base view, then on each anyres
tile (row-major); the tiles' patches are stitched into one grid and unpadded
(:mod:`mmlens.models.llava_next`). Their high-resolution view therefore spans
several tower sequences (:attr:`TowerView.sequences`), and its tokens skip the
patches that unpadding dropped. OneVision may then shrink that grid
(``anyres_max_N``, bilinear): the tower grid stays at patch resolution, larger
than the decoder's, and :func:`area_weights` folds it onto decoder tokens.

Qwen2.5-VL runs most tower layers on attention windows, its tokens permuted
merge block by merge block (``window_index``): :func:`stream_order` gives that
permutation, so a method can read its tower tokens back in image order.

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
from mmlens.layout import ImageInfo
from mmlens.model import Batch, Model

#: family -> patch order inside the tower ("rows": row-major; "blocks": merge-block-major, each m x m block contiguous)
_ORDER = {"llava": "rows", "paligemma": "rows", "idefics3": "rows", "qwen2_vl": "blocks", "qwen2_5_vl": "blocks",
          "llava_next": "rows", "llava_onevision": "rows"}
#: families whose tower runs on a base view and anyres tiles, stitched and unpadded
_ANYRES = ("llava_next", "llava_onevision")


@dataclass(frozen=True, eq=False)  # compared by identity: it holds a tensor
class TowerView:
    """One view of one image as the tower sees it: token ``tokens[R, C]`` at fine patch ``(R, C)``.

    ``tokens`` counts the patch tokens (any leading CLS dropped) of the
    ``sequences`` tower sequences from ``sequence`` on, concatenated; each holds
    ``per_sequence`` patches. Mostly one sequence whose patches all show; a
    LLaVA-NeXT high-resolution view spans its tiles, and unpadding drops some.
    """

    row: int  # batch row
    image: int  # image index within the row
    view: int  # view index within the image (the layout's)
    sequence: int  # index among the tower's attention sequences: the first this view reads
    tokens: torch.Tensor  # (R, C) long: usually (rows * merge, cols * merge); larger where OneVision shrank the view
    merge: int  # fine patches per decoder token, per side
    sequences: int = 1  # tower sequences this view takes in turn (tiles; a base view also takes unused tiles)
    patches: int = 0  # patch tokens per sequence; 0: tokens.numel()

    @property
    def per_sequence(self) -> int:
        """Patch tokens in each of this view's tower sequences."""
        return self.patches or self.tokens.numel()


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
            if family in _ANYRES and info.views[0].kind == "global":
                views += _anyres_views(model, row, image, info, sequence)
                sequence = views[-1].sequence + views[-1].sequences
                continue
            for index, view in enumerate(info.views):
                tokens = fine_order(view.rows, view.cols, merge, _ORDER[family])
                views.append(TowerView(row, image, index, sequence, tokens, merge))
                sequence += 1
    return views


def _anyres_views(model: Model, row: int, image: int, info: ImageInfo, sequence: int) -> list[TowerView]:
    """A tiled LLaVA-NeXT / OneVision image: the base view (one sequence), then the unpadded tiles' patches.

    The tower sees the base view, then ``tiles_h x tiles_w`` tiles row-major
    (transformers' ``get_anyres_image_grid_shape`` on the model's pinpoints);
    ``pack_image_features`` stitches their ``g x g`` patches into one grid and
    unpads it (:func:`~mmlens.models.llava_next.unpadded_rows_cols`).
    """
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    from mmlens.models.llava_next import unpadded_rows_cols

    config = model.hf.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    tiles_h, tiles_w = get_anyres_image_grid_shape(list(info.size), config.image_grid_pinpoints,
                                                   config.vision_config.image_size)
    base = info.views[0]
    if (base.rows, base.cols) != (side, side):
        raise MmlensError(f"{model.adapter.family}: a {base.rows}x{base.cols} base view for {side}x{side} tower "
                          "patches; cannot place tower patches")
    if len(info.views) == 1:  # unpadded to nothing: the tiles ran in the tower, but no token shows them
        return [TowerView(row, image, 0, sequence, fine_order(side, side, 1), 1, sequences=1 + tiles_h * tiles_w)]
    row0, row1, col0, col1 = unpadded_rows_cols(info.size, tiles_h * side, tiles_w * side)
    hires = info.views[1]
    if hires.rows > row1 - row0 or hires.cols > col1 - col0:
        raise MmlensError(f"{model.adapter.family}: a {hires.rows}x{hires.cols} tile view from "
                          f"{row1 - row0}x{col1 - col0} unpadded tower patches; cannot place tower patches")
    stitched_r = torch.arange(row0, row1)[:, None]
    stitched_c = torch.arange(col0, col1)[None, :]
    tile = (stitched_r // side) * tiles_w + stitched_c // side
    tokens = tile * side * side + (stitched_r % side) * side + stitched_c % side
    return [TowerView(row, image, 0, sequence, fine_order(side, side, 1), 1),
            TowerView(row, image, 1, sequence + 1, tokens, 1, sequences=tiles_h * tiles_w, patches=side * side)]


def view_indices(views: list[TowerView], lengths: list[int]) -> list[torch.Tensor]:
    """Each view's ``tokens`` as indices into the tower's stream: its sequences (``lengths`` tokens each) concatenated.

    Leading tokens (CLS) are what a sequence holds beyond ``per_sequence`` patches.

    Example:
        >>> view = TowerView(0, 0, 0, 0, torch.arange(4).view(2, 2), 1)
        >>> view_indices([view], [5])[0].tolist()  # one CLS first
        [[1, 2], [3, 4]]
    """
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    out = []
    for view in views:
        parts = []
        for index in range(view.sequence, view.sequence + view.sequences):
            lead = lengths[index] - view.per_sequence
            if lead < 0:
                raise MmlensError(f"a tower sequence of {lengths[index]} tokens for {view.per_sequence} patches")
            parts.append(torch.arange(starts[index] + lead, starts[index + 1]))
        out.append(torch.cat(parts)[view.tokens])
    return out


def area_weights(fine: int, coarse: int) -> torch.Tensor:
    """``(coarse, fine)``: how much of each fine cell each coarse cell covers, on one axis (columns sum to 1).

    Folds a tower grid onto decoder tokens keeping its total: an exact
    ``merge``-fold grid sums each block; OneVision's shrunk tile view
    (bilinear, ``anyres_max_N``) shares each patch by overlap.

    Example:
        >>> area_weights(4, 2).tolist()
        [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
        >>> area_weights(3, 2).tolist()
        [[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]
    """
    edges = torch.arange(coarse + 1, dtype=torch.float64) * (fine / coarse)
    cells = torch.arange(fine + 1, dtype=torch.float64)
    low = torch.maximum(edges[:-1, None], cells[None, :-1])
    high = torch.minimum(edges[1:, None], cells[None, 1:])
    return (high - low).clamp_min(0).float()


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
