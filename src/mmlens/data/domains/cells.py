"""Microscope slides: round cells on a speckled stain, counted.

1 to 5 non-overlapping round cells (radius 4-6 px) on a pink, dotted
stain; each cell is either ``stained`` (dark purple with a darker nucleus)
or ``clear`` (a thin ring around a pale inside). Answers are digits, so
this domain's answer words are its own.

========== ============================================= ============
type       prompt                                        answers
========== ============================================= ============
count      ``<image> how many cells are on the slide ?``  1 2 3 4 5
stained    ``<image> how many stained cells are there ?`` 0 1 2 3 4 5
========== ============================================= ============

Example:
    >>> from mmlens.data.domains import make_sample
    >>> s = make_sample("cells", "test", 0, "count")
    >>> s.answer == str(len(s.objects))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmlens.data.domains.common import free, jitter, mask_object, to_image
from mmlens.data.sample import IMAGE_SLOT, ShapeObject
from mmlens.data.shapes import IMAGE_SIZE

NAME = "cells"
QUESTION_TYPES: tuple[str, ...] = ("count", "stained")
KINDS: tuple[str, ...] = ("stained", "clear")
MAX_CELLS = 5
DIGITS: tuple[str, ...] = tuple(str(k) for k in range(MAX_CELLS + 1))
PROMPTS = {"count": f"{IMAGE_SLOT} how many cells are on the slide ?",
           "stained": f"{IMAGE_SLOT} how many stained cells are there ?"}
WORDS: tuple[str, ...] = tuple(sorted(set(DIGITS) | {w for p in PROMPTS.values() for w in p.split()} - {IMAGE_SLOT}))
PATCH_CLASSES: tuple[str, ...] = KINDS
POOLED: dict[str, int] = {"cells.count": MAX_CELLS + 1, "cells.stained": MAX_CELLS + 1}
_GAP = 2


@dataclass
class Cell:
    """One cell: its kind, centre and radius."""

    kind: str
    x: int
    y: int
    r: int


@dataclass
class Slide:
    """Stain colour, the speckle texture's seed, and the cells."""

    stain: tuple[int, int, int]
    texture_seed: int
    cells: list[Cell] = field(default_factory=list)


def make_scene(rng: np.random.Generator) -> Slide:
    """A random slide: 1-5 cells, each stained or clear with probability 1/2.

    Example:
        >>> 1 <= len(make_scene(np.random.default_rng(1)).cells) <= 5
        True
    """
    slide = Slide(jitter((228, 186, 212), rng, 14), int(rng.integers(0, 2**31 - 1)))
    n = int(rng.integers(1, MAX_CELLS + 1))
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(300):  # rejection sampling; five cells always fit
        if len(slide.cells) == n:
            break
        r = int(rng.integers(4, 7))
        x, y = (int(v) for v in rng.integers(r + 1, IMAGE_SIZE - r - 1, size=2))
        box = (x - r, y - r, x + r + 1, y + r + 1)
        kind = KINDS[int(rng.integers(0, 2))]
        if free(box, placed, _GAP):
            placed.append(box)
            slide.cells.append(Cell(kind, x, y, r))
    return slide


def render(slide: Slide):
    """Draw a slide; return the image and one object per cell.

    Example:
        >>> img, objs = render(make_scene(np.random.default_rng(1)))
        >>> {o.shape for o in objs} <= {"cell"}
        True
    """
    n = IMAGE_SIZE
    rng = np.random.default_rng(slide.texture_seed)
    img = np.broadcast_to(np.asarray(slide.stain, np.float32), (n, n, 3)).copy()
    img += rng.normal(0.0, 4.0, size=(n, n, 1)).astype(np.float32)
    dots = rng.integers(0, n, size=(int(rng.integers(80, 200)), 2))  # the slide's speckle
    img[dots[:, 1], dots[:, 0]] -= np.asarray([40.0, 50.0, 30.0], np.float32)
    yy, xx = np.mgrid[0:n, 0:n]
    objects: list[ShapeObject] = []
    for c in slide.cells:
        d2 = (xx - c.x) ** 2 + (yy - c.y) ** 2
        disc = d2 <= c.r ** 2
        if c.kind == "stained":
            img[disc] = jitter((115, 50, 135), rng, 12)
            img[d2 <= (c.r / 2.0) ** 2] = jitter((60, 20, 80), rng, 10)
        else:
            img[disc] = jitter((246, 228, 240), rng, 6)
            img[disc & (d2 > (c.r - 1.2) ** 2)] = jitter((150, 85, 160), rng, 12)
        objects.append(mask_object("cell", c.kind, disc))
    return to_image(img), objects


def ask(slide: Slide, qtype: str, rng: np.random.Generator) -> tuple[str, str, list[int]] | None:
    """``(prompt, answer, target indices)`` of a ``qtype`` question; the targets are the counted cells.

    Example:
        >>> ask(make_scene(np.random.default_rng(1)), "count", np.random.default_rng(0))[0]
        '<image> how many cells are on the slide ?'
    """
    if qtype == "count":
        return PROMPTS["count"], str(len(slide.cells)), list(range(len(slide.cells)))
    if qtype == "stained":
        hits = [i for i, c in enumerate(slide.cells) if c.kind == "stained"]
        return PROMPTS["stained"], str(len(hits)), hits
    raise ValueError(f"unknown question type {qtype!r}")


def regions(slide: Slide, objects: list[ShapeObject]) -> list[tuple[np.ndarray, int]]:
    """Per-patch label regions: each cell's disc, labelled with its kind."""
    return [(o.mask, KINDS.index(c.kind)) for c, o in zip(slide.cells, objects)]


def pooled(slide: Slide) -> dict[str, int]:
    """Whole-image labels: how many cells, how many stained."""
    return {"cells.count": len(slide.cells), "cells.stained": sum(c.kind == "stained" for c in slide.cells)}
