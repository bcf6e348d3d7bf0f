"""The unit of data every mmlens method consumes: one image, one prompt, one answer.

A :class:`Sample` is model-agnostic. Its prompt holds the slot marker
:data:`IMAGE_SLOT` where the image goes; each model adapter turns the marker
into that family's image tokens.

Example:
    >>> from PIL import Image
    >>> s = Sample(id="cat-1", image=Image.new("RGB", (64, 64)),
    ...            prompt="<image> what colour is the cat ?", answer="black")
    >>> s.prompt.count(IMAGE_SLOT)
    1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmlens.box import Box

IMAGE_SLOT = "<image>"


@dataclass
class Sample:
    """One image-question-answer example.

    Attributes:
        id: stable identifier, unique within its dataset.
        image: the image (RGB).
        prompt: text with :data:`IMAGE_SLOT` where the image goes.
        answer: the expected answer, or ``None`` when unknown or unanswerable.
        meta: free-form extra information (source, split, ...).

    Example:
        >>> Sample(id="a", image=Image.new("RGB", (8, 8)), prompt="<image> hi").answer is None
        True
    """

    id: str
    image: Image.Image
    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShapeObject:
    """One object of a shapes-world scene with its ground truth.

    ``box`` is a :class:`~mmlens.box.Box` ``(x0, y0, x1, y1)`` in whole pixels,
    ``x1``/``y1`` exclusive, the tight box of ``mask`` (a boolean ``H x W``
    array, True where the object's pixels are).

    Example:
        >>> m = np.zeros((4, 4), bool); m[1:3, 0:2] = True
        >>> ShapeObject("red", "square", "small", Box(0, 1, 2, 3), m).area
        4
    """

    colour: str
    shape: str
    size: str
    box: Box
    mask: np.ndarray

    @property
    def area(self) -> int:
        """Number of pixels the object covers."""
        return int(self.mask.sum())

    @property
    def centre(self) -> tuple[float, float]:
        """Centre ``(x, y)`` of the box, in pixels."""
        return Box.of(self.box).centre


@dataclass
class ShapesSample(Sample):
    """A shapes-world sample: a :class:`Sample` plus the scene's ground truth.

    Attributes:
        objects: every object in the image.
        target_objects: indices into ``objects`` the answer depends on (empty
            when the answer depends on an absence, e.g. "no" to an existence
            question).
        question_type: one of ``colour``, ``shape``, ``exist``, ``position``,
            ``count``.

    Example:
        >>> from mmlens.data.shapes import make_sample
        >>> s = make_sample("test", 0, question_type="colour")
        >>> s.answer == s.objects[s.target_objects[0]].colour
        True
    """

    objects: list[ShapeObject] = field(default_factory=list)
    target_objects: list[int] = field(default_factory=list)
    question_type: str = ""

    def target_mask(self) -> np.ndarray:
        """Union of the target objects' masks (all False when there is none)."""
        h, w = self.image.height, self.image.width
        out = np.zeros((h, w), dtype=bool)
        for i in self.target_objects:
            out |= self.objects[i].mask
        return out
