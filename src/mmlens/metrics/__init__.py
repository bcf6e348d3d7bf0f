"""Metrics for explanations, grouped by what they measure.

- :mod:`~mmlens.metrics.faithfulness`: deletion and insertion curves and AUCs;
- :mod:`~mmlens.metrics.localisation`: pointing game and energy in box;
- :mod:`~mmlens.metrics.agreement`: rank agreement between methods.

Hiding image tokens (the baselines) and the answer probability that remains
are shared readouts: :mod:`mmlens.readout`.

Example:
    >>> import numpy as np
    >>> heatmap = np.zeros((32, 32)); heatmap[5, 5] = 1.0
    >>> pointing_game(heatmap, [(0, 0, 8, 8)], tolerance=0)
    True
"""

from mmlens.metrics.agreement import PositionSet, agreement_matrix, compared_positions, rank_agreement
from mmlens.metrics.faithfulness import (
    DEFAULT_STEPS,
    FaithfulnessCurves,
    auc,
    deletion_insertion,
    deletion_insertion_batch,
    removal_counts,
    removal_order,
)
from mmlens.metrics.localisation import POINTING_TOLERANCE, energy_in_box, pointing_game, region_mask

__all__ = [
    "DEFAULT_STEPS",
    "POINTING_TOLERANCE",
    "FaithfulnessCurves",
    "PositionSet",
    "agreement_matrix",
    "auc",
    "compared_positions",
    "deletion_insertion",
    "deletion_insertion_batch",
    "energy_in_box",
    "pointing_game",
    "rank_agreement",
    "region_mask",
    "removal_counts",
    "removal_order",
]
