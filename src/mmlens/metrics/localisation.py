"""Does a heatmap point at the right place? Pointing game and energy in box.

Conventions (all functions here):

- ``heatmap`` is ``(height, width)`` in original image pixels, as
  :meth:`Explanation.heatmaps` returns; NaN pixels (no view covers them) are
  ignored.
- ``boxes`` are ground-truth regions as :class:`~mmlens.box.Box` (or any
  four numbers in its order), ``(x0, y0, x1, y1)`` pixel coordinates: ``x``
  counts columns from the left edge, ``y`` rows from the top edge, and ``x1``,
  ``y1`` are exclusive, as in slicing ``heatmap[y0:y1, x0:x1]``. Floats are
  allowed: a pixel belongs to a box when its centre ``(x + 0.5, y + 0.5)``
  lies inside it.
- Instead of boxes, ``mask=`` takes a boolean ``(height, width)`` region.
- One box alone (a :class:`~mmlens.box.Box` or four numbers) counts as a list of one.

Example:
    >>> import numpy as np
    >>> heatmap = np.zeros((100, 100)); heatmap[40, 60] = 1.0
    >>> pointing_game(heatmap, [(50, 30, 70, 50)])
    True
    >>> round(energy_in_box(heatmap, [(0, 0, 50, 100)]), 2)
    0.0
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmlens.box import Box
from mmlens.errors import MmlensError

POINTING_TOLERANCE = 15  # pixels, as in Zhang et al. (2016)


def pointing_game(
    heatmap: np.ndarray,
    boxes: Sequence[Box] | None = None,
    tolerance: int = POINTING_TOLERANCE,
    mask: np.ndarray | None = None,
) -> bool:
    """Hit when the heatmap's maximum lies in a ground-truth region grown by ``tolerance`` pixels.

    ``tolerance`` is in whole pixels (fractions are dropped). Boxes grow by
    it on every side; a mask grows by the same square neighbourhood
    (Chebyshev distance), so a box and its mask agree.
    Ties: a hit when any maximal pixel is inside, as when the maximum is one
    whole upsampled patch. A heatmap with no finite values or one constant
    value points nowhere: a miss.

    Example:
        >>> heatmap = np.zeros((50, 50)); heatmap[10, 25] = 1.0  # x = 25, y = 10
        >>> [pointing_game(heatmap, [(0, 0, 20, 20)], tolerance=t) for t in (10, 5)]
        [True, False]
    """
    values = _as_heatmap(heatmap)
    finite = np.isfinite(values)
    if not finite.any() or np.nanmax(values) == np.nanmin(values):
        return False
    peak = finite & (values == np.nanmax(values))
    region = region_mask(values.shape, boxes, mask, tolerance)
    return bool((peak & region).any())


def energy_in_box(
    heatmap: np.ndarray,
    boxes: Sequence[Box] | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Share of positive attribution mass inside the union of the boxes (or the mask).

    Negative values are clipped at 0 and NaN ignored; NaN when the heatmap has
    no positive mass at all.

    Example:
        >>> heatmap = np.ones((10, 10)); heatmap[:, 5:] = -1.0
        >>> energy_in_box(heatmap, [(0, 0, 5, 5)])
        0.5
    """
    values = np.clip(np.nan_to_num(_as_heatmap(heatmap), nan=0.0), 0.0, None)
    total = values.sum()
    if total <= 0:
        return float("nan")
    region = region_mask(values.shape, boxes, mask)
    return float(values[region].sum() / total)


def region_mask(
    shape: tuple[int, int],
    boxes: Sequence[Box] | None = None,
    mask: np.ndarray | None = None,
    tolerance: int = 0,
) -> np.ndarray:
    """Boolean ``(height, width)`` union of ``boxes`` (or ``mask``), grown by ``tolerance`` whole pixels.

    Example:
        >>> region_mask((4, 6), [(1, 0, 3, 2)]).astype(int)
        array([[0, 1, 1, 0, 0, 0],
               [0, 1, 1, 0, 0, 0],
               [0, 0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0, 0]])
    """
    if (boxes is None) == (mask is None):
        raise MmlensError("give exactly one of boxes and mask")
    if tolerance < 0:
        raise MmlensError(f"tolerance must be non-negative, got {tolerance}")
    tolerance = int(np.floor(tolerance))  # whole pixels keep growth symmetric and equal for boxes and masks
    if mask is not None:
        region = np.asarray(mask, dtype=bool)
        if region.shape != tuple(shape):
            raise MmlensError(f"mask of shape {region.shape} for a heatmap of shape {tuple(shape)}")
        if not tolerance:
            return region.copy()
        from scipy.ndimage import maximum_filter  # here, not at import: scipy is slow to import

        return maximum_filter(region, size=2 * tolerance + 1, mode="constant", cval=False)
    region = np.zeros(shape, dtype=bool)
    for box in _box_list(boxes):
        corners = Box.of([float(v) for v in box])  # one line for three numbers or an inverted box
        region |= corners.mask(tuple(shape), grow=tolerance)
    return region


def _box_list(boxes: Box | Sequence) -> list:
    """``boxes`` as a list: one box alone (a Box or four numbers) is a list of one; anything else one line.

    Example:
        >>> _box_list(Box(0, 0, 4, 4)), _box_list([(0, 0, 4, 4)])
        ([Box(x0=0, y0=0, x1=4, y1=4)], [(0, 0, 4, 4)])
    """
    if isinstance(boxes, Box) or (isinstance(boxes, (list, tuple, np.ndarray)) and len(boxes) == 4
                                  and all(np.isscalar(v) for v in boxes)):
        return [boxes]
    try:
        listed = list(boxes)
    except TypeError:
        listed = None
    if listed is None or not all(isinstance(b, (list, tuple, np.ndarray)) for b in listed):
        raise MmlensError(f"boxes are a list of Box (x0, y0, x1, y1), or one Box; got {boxes!r}")
    return listed


def _as_heatmap(heatmap: np.ndarray) -> np.ndarray:
    values = heatmap.detach().float().cpu().numpy() if hasattr(heatmap, "detach") else np.asarray(heatmap)
    values = values.astype(np.float64)
    if values.ndim != 2:
        raise MmlensError(f"a heatmap is (height, width), got shape {values.shape}")
    return values
