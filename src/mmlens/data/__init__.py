"""Data for mmlens: the :class:`Sample` every method consumes, and the shapes world.

Example:
    >>> from mmlens.data import make_sample
    >>> s = make_sample("test", 0)
    >>> "<image>" in s.prompt
    True
"""

from mmlens.data.sample import IMAGE_SLOT, Sample, ShapeObject, ShapesSample
from mmlens.data.shapes import counterfactual, make_dataset, make_sample, patch_labels

__all__ = [
    "IMAGE_SLOT", "Sample", "ShapeObject", "ShapesSample",
    "counterfactual", "make_dataset", "make_sample", "patch_labels",
]
