"""Token-level attribution: why did the model answer this?

One method per file, all returning :class:`~mmlens.attribution.base.Attribution`
scores that :func:`explain` gathers into an :class:`Explanation`. What the
answer tokens are (:class:`~mmlens.readout.Targets`) lives in :mod:`mmlens.readout`.

Example:
    >>> import mmlens
    >>> sorted(METHODS)[:3]
    ['attention', 'gradient_x_input', 'integrated_gradients']
"""

from mmlens.attribution.api import METHODS, explain, explain_batch
from mmlens.attribution.base import Attribution
from mmlens.attribution.explanation import Explanation

__all__ = ["METHODS", "Attribution", "Explanation", "explain", "explain_batch"]
