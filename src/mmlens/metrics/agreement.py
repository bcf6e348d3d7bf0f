"""Do two attribution methods agree? Rank correlation of their scores.

Example:
    >>> import numpy as np
    >>> rank_agreement(np.array([0.1, 0.5, 0.2]), np.array([1.0, 9.0, 3.0]))
    1.0
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mmlens.errors import MmlensError, check_enum
from mmlens.layout import Modality

if TYPE_CHECKING:  # metrics read the result type only; they never import a method
    from mmlens.attribution.explanation import Explanation


class PositionSet(str, Enum):
    """Which positions of the sequence two methods are compared over."""

    IMAGE = "image"  # image-patch tokens
    TEXT = "text"  # text tokens the target can see (prompt, earlier answer tokens)
    ALL = "all"  # every non-padding position the target can see


def rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors over the same positions.

    Ties share their average rank (as :func:`scipy.stats.spearmanr`). Pairs with
    a NaN on either side are dropped. NaN when fewer than two pairs remain or
    either side is constant (no ranking to compare).

    Example:
        >>> rank_agreement(np.arange(5.0), -np.arange(5.0))
        -1.0
    """
    x, y = _as_vector(a), _as_vector(b)
    if x.shape != y.shape:
        raise MmlensError(f"scores of shapes {x.shape} and {y.shape} do not pair up")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    from scipy.stats import rankdata  # here: scipy.stats takes a second to import, every command would pay it

    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (y.size + 1) / 2
    return float(np.clip(np.dot(rx, ry) / np.sqrt(np.dot(rx, rx) * np.dot(ry, ry)), -1.0, 1.0))


def agreement_matrix(
    explanation: Explanation,
    methods: Sequence[str] | None = None,
    target: int = 0,
    positions: PositionSet | str | Sequence[int] = PositionSet.IMAGE,
) -> np.ndarray:
    """``(methods, methods)`` Spearman agreement of methods' scores for answer token ``target``.

    ``methods`` defaults to all of the explanation's; ``positions`` is
    ``"image"``, ``"text"``, ``"all"`` or explicit sequence positions. The
    diagonal is 1 (NaN for a method whose scores are constant there).

    Example:
        >>> explanation = mmlens.explain(model, "<image> what colour ?", [image],  # doctest: +SKIP
        ...                              methods=["occlusion", "integrated_gradients"], answer="red")
        >>> agreement_matrix(explanation).shape  # doctest: +SKIP
        (2, 2)
    """
    names = list(explanation.methods if methods is None else methods)
    keep = compared_positions(explanation, target, positions)
    vectors = [explanation.scores_of(name, target).detach().float().cpu().numpy()[keep] for name in names]
    matrix = np.full((len(names), len(names)), np.nan)
    for i in range(len(names)):
        for j in range(i, len(names)):
            matrix[i, j] = matrix[j, i] = rank_agreement(vectors[i], vectors[j])
    return matrix


def compared_positions(
    explanation: Explanation, target: int = 0, positions: PositionSet | str | Sequence[int] = PositionSet.IMAGE
) -> np.ndarray:
    """The sequence positions :func:`agreement_matrix` compares, as an index array.

    Example:
        >>> compared_positions(explanation, 0, "image")[:3]  # doctest: +SKIP
        array([1, 2, 3])
    """
    if not isinstance(positions, (str, PositionSet)):
        return np.asarray(list(positions), dtype=np.int64)
    layout = explanation.layout
    visible = np.arange(layout.seq_len) <= explanation.positions[target]  # a target sees only its past
    kind = check_enum(positions, PositionSet, "position set")
    if kind is PositionSet.IMAGE:
        keep = layout.mask(Modality.IMAGE)[0].numpy()
    elif kind is PositionSet.TEXT:
        keep = layout.mask(Modality.TEXT)[0].numpy() & visible
    else:
        keep = ~layout.mask(Modality.PAD)[0].numpy() & visible
    return np.flatnonzero(keep)


def _as_vector(scores: np.ndarray) -> np.ndarray:
    values = scores.detach().float().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
    return values.astype(np.float64).ravel()
