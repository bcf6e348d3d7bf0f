"""Where every token of a prepared batch comes from.

A :class:`TokenLayout` says, for each batch row and position, whether the token
is text, an image patch, a special token or padding; for image patches, which
image, which view of it (tile), and which row and column of that view's patch
grid. Each view knows the pixel box of the original image it covers, so
per-token scores become pixel heatmaps here, once, for every family: tiles and
global views are painted into the image and averaged where they overlap.

Example:
    >>> import torch
    >>> layout = TokenLayout.build(
    ...     seq_len=6,
    ...     images=[[ImageInfo(size=(4, 4), views=[View(rows=2, cols=2, box=Box(0, 0, 4, 4))])]],
    ...     image_tokens=[[(1, 0, 0, 0, 0), (2, 0, 0, 0, 1), (3, 0, 0, 1, 0), (4, 0, 0, 1, 1)]],
    ...     special=[[0]],
    ... )
    >>> layout.image_positions(0).tolist()
    [1, 2, 3, 4]
    >>> layout.to_heatmaps(torch.arange(6.0))[0][0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Sequence

import numpy as np
import torch

from mmlens.box import Box
from mmlens.errors import MmlensError, check_choice


class Modality(IntEnum):
    """What a position holds."""

    @classmethod
    def of(cls, value: "Modality | str | int") -> "Modality":
        """``value`` as a modality: a member, its value or its name in any case.

        Example:
            >>> Modality.of("image")
            <Modality.IMAGE: 1>
        """
        if isinstance(value, str):
            names = [m.name.lower() for m in cls]
            return cls[check_choice(value.lower(), names, "modality").upper()]
        try:
            return cls(value)
        except ValueError:
            raise MmlensError(f"unknown modality {value!r}; choose one of {', '.join(m.name.lower() for m in cls)}") from None

    PAD = -1
    TEXT = 0
    IMAGE = 1
    SPECIAL = 2


@dataclass(frozen=True)
class View:
    """One patch grid seen by the model: a tile, a global view, or the whole image.

    ``box`` is the region of the original image this grid covers, a
    :class:`~mmlens.box.Box` ``(x0, y0, x1, y1)`` in original pixels (floats
    allowed: crops and resizes rarely land on whole pixels; a padded view may
    reach past the image). Any four numbers given in that order are stored as
    a :class:`~mmlens.box.Box`.
    """

    rows: int
    cols: int
    box: Box
    kind: str = "image"  # "image", "global" or "tile"

    def __post_init__(self) -> None:
        if not isinstance(self.box, Box):
            object.__setattr__(self, "box", Box.of(self.box))


@dataclass(frozen=True)
class ImageInfo:
    """One image of a batch row: its original pixel size and the views of it."""

    size: tuple[int, int]  # (height, width)
    views: list[View]


@dataclass
class TokenLayout:
    """Per-position provenance of a batch, shape ``(batch, seq)`` for each field.

    ``image``, ``view``, ``row`` and ``col`` are -1 where a position is not an
    image patch. ``images[b]`` lists the images of row ``b`` in prompt order.
    """

    modality: torch.Tensor
    image: torch.Tensor
    view: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    images: list[list[ImageInfo]] = field(default_factory=list)

    # ---- construction -------------------------------------------------
    @classmethod
    def build(
        cls,
        seq_len: int,
        images: list[list[ImageInfo]],
        image_tokens: list[Sequence[tuple[int, int, int, int, int]]],
        special: list[Sequence[int]] | None = None,
        pad: list[Sequence[int]] | None = None,
    ) -> "TokenLayout":
        """Assemble a layout from per-row lists.

        ``image_tokens[b]`` holds ``(position, image, view, row, col)`` tuples;
        positions listed in ``special[b]`` or ``pad[b]`` get those modalities;
        every other position is text.
        """
        batch = len(images)
        shape = (batch, seq_len)
        modality = torch.full(shape, int(Modality.TEXT), dtype=torch.int8)
        fields = {name: torch.full(shape, -1, dtype=torch.int32) for name in ("image", "view", "row", "col")}
        for b in range(batch):
            for position in (special or [[]] * batch)[b]:
                modality[b, position] = int(Modality.SPECIAL)
            for position in (pad or [[]] * batch)[b]:
                modality[b, position] = int(Modality.PAD)
            if len(image_tokens[b]):
                table = torch.as_tensor(image_tokens[b], dtype=torch.int64)
                positions = table[:, 0]
                modality[b, positions] = int(Modality.IMAGE)
                for column, name in enumerate(("image", "view", "row", "col"), start=1):
                    fields[name][b, positions] = table[:, column].to(torch.int32)
        return cls(modality=modality, images=images, **fields)

    def appended(self, real: torch.Tensor) -> "TokenLayout":
        """This layout with ``real.shape[1]`` more positions at the end: text where ``real``, else padding."""
        extra = torch.where(real.bool().cpu(), int(Modality.TEXT), int(Modality.PAD)).to(torch.int8)
        none = torch.full(real.shape, -1, dtype=torch.int32)
        return TokenLayout(
            modality=torch.cat([self.modality, extra], 1),
            image=torch.cat([self.image, none], 1),
            view=torch.cat([self.view, none], 1),
            row=torch.cat([self.row, none], 1),
            col=torch.cat([self.col, none], 1),
            images=self.images,
        )

    # ---- queries ------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.modality.shape[0]

    @property
    def seq_len(self) -> int:
        return self.modality.shape[1]

    def mask(self, modality: Modality | str) -> torch.Tensor:
        """Boolean ``(batch, seq)`` mask of positions holding ``modality`` (a :class:`Modality` or its name)."""
        return self.modality == int(Modality.of(modality))

    def check_row(self, row: int) -> int:
        """``row`` if the batch has it (negative ones count from the end), else one line."""
        if not -self.batch_size <= row < self.batch_size:
            raise MmlensError(f"row {row} is out of range for a batch of {self.batch_size} row(s)")
        return row

    def image_positions(self, row: int = 0, image: int | None = None, view: int | None = None) -> torch.Tensor:
        """Positions of image-patch tokens in batch row ``row`` (optionally one image / view)."""
        keep = self.modality[self.check_row(row)] == int(Modality.IMAGE)
        if image is not None:
            keep &= self.image[row] == image
        if view is not None:
            keep &= self.view[row] == view
        return keep.nonzero().flatten()

    def text_positions(self, row: int = 0) -> torch.Tensor:
        """Positions of text tokens in batch row ``row``."""
        return (self.modality[self.check_row(row)] == int(Modality.TEXT)).nonzero().flatten()

    def token_boxes(self, row: int = 0) -> dict[int, tuple[int, Box]]:
        """Map each image position of ``row`` to ``(image, box)``, its patch's :class:`~mmlens.box.Box` in original pixels."""
        boxes = {}
        for position in self.image_positions(row).tolist():
            image, view = int(self.image[row, position]), int(self.view[row, position])
            grid = self.images[row][image].views[view]
            x0, y0, x1, y1 = grid.box
            width, height = (x1 - x0) / grid.cols, (y1 - y0) / grid.rows
            r, c = int(self.row[row, position]), int(self.col[row, position])
            boxes[position] = (image, Box(x0 + c * width, y0 + r * height, x0 + (c + 1) * width, y0 + (r + 1) * height))
        return boxes

    def grid(self, scores: torch.Tensor, row: int = 0, image: int = 0, view: int = 0) -> np.ndarray:
        """Scores of one view laid on its patch grid, ``(rows, cols)``; NaN where no token sits."""
        return self.cells(row).grid(_as_numpy(scores), image, view)

    def cells(self, row: int = 0) -> "PatchCells":
        """Where row ``row``'s image tokens sit on every view's grid, found once (for many grids of one layout)."""
        return PatchCells(self, row)

    def to_heatmaps(self, scores: torch.Tensor | np.ndarray, views: str = "all") -> list[list[np.ndarray]]:
        """Per-token scores to one pixel heatmap per image, at the image's original size.

        ``scores`` is ``(seq,)`` for a one-row batch or ``(batch, seq)``. Each view
        is painted over the pixels it covers; where views overlap (tiles and a
        global view), the heatmap is their mean. ``views`` picks ``"all"``,
        ``"global"`` (whole-image views only) or ``"tile"`` (tiles only).
        Pixels no view covers (outside a centre crop) are NaN.
        """
        check_choice(views, ("all", "global", "tile"), "views")
        scores = _as_numpy(scores)
        if scores.ndim == 1:
            scores = scores[None]
        if scores.shape != tuple(self.modality.shape):
            raise MmlensError(f"scores of shape {scores.shape} for a layout of shape {tuple(self.modality.shape)} "
                              f"(one score per token, per batch row)")
        maps: list[list[np.ndarray]] = []
        for b in range(self.batch_size):
            row_maps = []
            cells = self.cells(b)  # once per row, not once per view
            for i, info in enumerate(self.images[b]):
                total = np.zeros(info.size, dtype=np.float64)
                count = np.zeros(info.size, dtype=np.float64)
                for v, grid_view in enumerate(info.views):
                    if not _view_selected(grid_view, views):
                        continue
                    grid = cells.grid(scores[b], i, v)
                    _paint(grid, grid_view.box, total, count)
                with np.errstate(invalid="ignore", divide="ignore"):
                    row_maps.append((total / count).astype(np.float32))
            maps.append(row_maps)
        return maps

    def describe(self, row: int = 0, cells: "PatchCells | None" = None) -> dict:
        """A JSON-ready summary of one row: counts per modality and each image's views.

        Each view's ``"box"`` is ``[x0, y0, x1, y1]`` in original pixels, as
        :meth:`Box.to_json <mmlens.box.Box.to_json>` writes it (rounded to
        hundredths); ``"size"`` is ``[height, width]``. ``cells``: the row's
        :meth:`cells`, when the caller has found them already.
        """
        counts = np.bincount(self.modality[self.check_row(row)].numpy() - min(Modality), minlength=len(Modality)).tolist()
        cells = self.cells(row) if cells is None else cells
        return {
            "seq_len": self.seq_len,
            "tokens": {m.name.lower(): counts[m - min(Modality)] for m in Modality},
            "images": [
                {
                    "size": list(info.size),
                    "views": [
                        {"kind": v.kind, "grid": [v.rows, v.cols], "box": [round(x, 2) for x in v.box],
                         "tokens": len(cells.views[i][j][1])}
                        for j, v in enumerate(info.views)
                    ],
                }
                for i, info in enumerate(self.images[row])
            ],
        }


class PatchCells:
    """One batch row's image tokens on their views' patch grids: positions, rows and columns per view, in numpy.

    Laying many score vectors of one layout out (every method and answer
    token of an explanation) then costs one scatter per view, not a mask over
    the sequence each time.

    Example:
        >>> cells = layout.cells(0)
        >>> cells.grid(np.arange(6.0), image=0, view=0).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
        >>> cells.top(np.array([9.0, 1, 5, 2, 3, 9]))["position"]  # the best image token; text never counts
        2
    """

    def __init__(self, layout: TokenLayout, row: int = 0) -> None:
        self.modality = layout.modality[layout.check_row(row)].numpy()
        self.is_image = self.modality == int(Modality.IMAGE)
        self._where = tuple(a[row].numpy() for a in (layout.image, layout.view, layout.row, layout.col))
        image, view, rows, cols = self._where
        self.views: list[list[tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]]] = []
        for i, info in enumerate(layout.images[row]):  # per image, per view: (grid shape, positions, rows, cols)
            self.views.append([])
            for v, grid in enumerate(info.views):
                positions = np.flatnonzero(self.is_image & (image == i) & (view == v))
                self.views[i].append(((grid.rows, grid.cols), positions, rows[positions], cols[positions]))

    def grid(self, scores: np.ndarray, image: int = 0, view: int = 0) -> np.ndarray:
        """``scores`` (one per position) on one view's grid, float32; NaN where no token sits."""
        shape, positions, rows, cols = self.views[image][view]
        out = np.full(shape, np.nan, dtype=np.float32)
        out[rows, cols] = scores[positions]
        return out

    def positions(self, image: int = 0, view: int = 0) -> np.ndarray:
        """Each cell's sequence position on one view's grid, int64; -1 where no token sits."""
        shape, positions, rows, cols = self.views[image][view]
        out = np.full(shape, -1, dtype=np.int64)
        out[rows, cols] = positions
        return out

    def top(self, scores: np.ndarray) -> dict[str, int | float] | None:
        """The image token with the highest finite score (the first of ties): where it sits and its score."""
        values = np.where(self.is_image & np.isfinite(scores), scores, -np.inf)
        if not np.isfinite(values).any():
            return None
        p = int(values.argmax())
        image, view, row, col = (int(a[p]) for a in self._where)
        return {"image": image, "view": view, "row": row, "col": col, "position": p, "score": float(values[p])}


def _as_numpy(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores, dtype=np.float32)


def _view_selected(view: View, which: str) -> bool:
    if which == "all":
        return True
    if which == "global":
        return view.kind in ("global", "image")
    return view.kind == "tile"


def _paint(grid: np.ndarray, box: Box, total: np.ndarray, count: np.ndarray) -> None:
    """Add a patch grid, stretched over ``box`` (nearest cell per pixel centre), into the accumulators."""
    height, width = total.shape
    x0, y0, x1, y1 = box
    rows, cols = grid.shape
    ys = np.arange(max(0, int(np.floor(y0))), min(height, int(np.ceil(y1))))
    xs = np.arange(max(0, int(np.floor(x0))), min(width, int(np.ceil(x1))))
    # A pixel belongs to the cell that contains its centre.
    r = np.floor((ys + 0.5 - y0) / (y1 - y0) * rows).astype(int)
    c = np.floor((xs + 0.5 - x0) / (x1 - x0) * cols).astype(int)
    ys, r = ys[(r >= 0) & (r < rows)], r[(r >= 0) & (r < rows)]
    xs, c = xs[(c >= 0) & (c < cols)], c[(c >= 0) & (c < cols)]
    values = grid[np.ix_(r, c)]
    known = ~np.isnan(values)
    total[np.ix_(ys, xs)] += np.where(known, values, 0.0)
    count[np.ix_(ys, xs)] += known
