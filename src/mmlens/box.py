"""One pixel rectangle for every API, option and file: :class:`Box`, ``(x0, y0, x1, y1)``.

``x`` counts columns from the left edge of the original image, ``y`` rows from
its top edge; ``x1`` and ``y1`` are exclusive, as in slicing
``pixels[y0:y1, x0:x1]``. Floats are allowed: a pixel belongs to a box when
its centre ``(x + 0.5, y + 0.5)`` lies inside it. A :class:`Box` is a named
tuple, so it unpacks as ``x0, y0, x1, y1 = box`` and is written to JSON as
the list ``[x0, y0, x1, y1]``.

Example:
    >>> box = Box.parse("10,20,51,61")
    >>> box
    Box(x0=10.0, y0=20.0, x1=51.0, y1=61.0)
    >>> Box.from_json(box.to_json()) == box
    True
    >>> (box.width, box.height)
    (41.0, 41.0)
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from mmlens.errors import MmlensError


class Box(NamedTuple):
    """A rectangle of original-image pixels: ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def of(cls, value: Sequence[float]) -> "Box":
        """Any four numbers in ``(x0, y0, x1, y1)`` order as a checked :class:`Box`.

        Example:
            >>> Box.of((0, 0, 8, 8))
            Box(x0=0, y0=0, x1=8, y1=8)
        """
        values = list(value)
        if len(values) != 4:
            raise MmlensError(f"a box is four numbers x0, y0, x1, y1; got {values!r}")
        box = cls(*values)
        if box.x1 < box.x0 or box.y1 < box.y0:
            raise MmlensError(f"box {tuple(values)} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
        return box

    @classmethod
    def parse(cls, text: str) -> "Box":
        """``"x0,y0,x1,y1"`` (pixels) to a non-empty :class:`Box`, with a one-line error for anything else.

        Example:
            >>> Box.parse("1, 2, 3, 4")
            Box(x0=1.0, y0=2.0, x1=3.0, y1=4.0)
        """
        try:
            x0, y0, x1, y1 = (float(part.strip()) for part in text.split(","))
        except ValueError:
            raise MmlensError(f"a box is x0,y0,x1,y1 in pixels, got {text!r}") from None
        if x1 <= x0 or y1 <= y0:
            raise MmlensError(f"box {text!r} is empty: x1 must exceed x0 and y1 exceed y0")
        return cls(x0, y0, x1, y1)

    @classmethod
    def from_json(cls, value: Any) -> "Box":
        """The list ``[x0, y0, x1, y1]`` (or a ``{"x0": ..}`` mapping) that :meth:`to_json` writes.

        Example:
            >>> Box.from_json({"x0": 1, "y0": 2, "x1": 3, "y1": 4})
            Box(x0=1.0, y0=2.0, x1=3.0, y1=4.0)
        """
        if isinstance(value, dict):
            value = [value[k] for k in cls._fields]
        return cls.of([float(v) for v in value])

    def to_json(self) -> list[float]:
        """``[x0, y0, x1, y1]`` as plain numbers.

        Example:
            >>> Box(0, 0, 8, 8).to_json()
            [0, 0, 8, 8]
        """
        return [v if isinstance(v, int) else float(v) for v in self]

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def centre(self) -> tuple[float, float]:
        """Centre ``(x, y)`` in pixels."""
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    def mask(self, size: tuple[int, int], grow: float = 0) -> np.ndarray:
        """Boolean ``(height, width)`` mask of the pixels whose centres lie in the box grown by ``grow`` pixels.

        Example:
            >>> Box(1, 0, 3, 2).mask((3, 4)).astype(int)
            array([[0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]])
        """
        height, width = size
        ys, xs = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
        x0, y0, x1, y1 = (float(v) for v in self)
        return (xs >= x0 - grow) & (xs < x1 + grow) & (ys >= y0 - grow) & (ys < y1 + grow)
