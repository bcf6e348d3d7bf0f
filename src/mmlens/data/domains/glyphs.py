"""Documents: dark letters on paper, one of them framed by a box, read like a scanned page.

2 to 4 distinct letters (5 x 7 bitmap glyphs drawn at 2x, 10 x 14 px) in
ink on light, slightly tinted paper with faint ruled lines; exactly one
letter has a 1 px rectangle drawn around it.

========== ==================================== ==========================
type       prompt                               answers
========== ==================================== ==========================
boxed      ``<image> what letter is in the box ?`` c e h k l t x z
first      ``<image> what is the first letter ?``  the left-most letter
========== ==================================== ==========================

Example:
    >>> from mmlens.data.domains import make_sample
    >>> s = make_sample("glyphs", "test", 2, "boxed")
    >>> s.answer == s.objects[s.target_objects[0]].shape
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmlens.data.domains.common import box_mask, free, jitter, mask_object, pick, to_image
from mmlens.data.sample import IMAGE_SLOT, ShapeObject
from mmlens.data.shapes import IMAGE_SIZE

NAME = "glyphs"
QUESTION_TYPES: tuple[str, ...] = ("boxed", "first")
_FONT = {  # 5 x 7 bitmaps, '#' is ink
    "c": ".###.#...##....#....#....#...#.###.",
    "e": "######....#....####.#....#....#####",
    "h": "#...##...##...#######...##...##...#",
    "k": "#...##..#.#.#..##...#.#..#..#.#...#",
    "l": "#....#....#....#....#....#....#####",
    "t": "#####..#....#....#....#....#....#..",
    "x": "#...##...#.#.#...#...#.#.#...##...#",
    "z": "#####....#...#...#...#...#....#####",
}
LETTERS: tuple[str, ...] = tuple(_FONT)
SCALE = 2
GLYPH_W, GLYPH_H = 5 * SCALE, 7 * SCALE
PAD = 3  # frame: 2 px of paper then a 1 px line around the glyph
FIRST_MARGIN = 4  # px: the first letter's centre is this far left of every other
PROMPTS = {"boxed": f"{IMAGE_SLOT} what letter is in the box ?", "first": f"{IMAGE_SLOT} what is the first letter ?"}
WORDS: tuple[str, ...] = tuple(sorted(set(LETTERS) | {w for p in PROMPTS.values() for w in p.split()} - {IMAGE_SLOT}))
PATCH_CLASSES: tuple[str, ...] = LETTERS + tuple(f"boxed-{c}" for c in LETTERS)
POOLED: dict[str, int] = {"glyphs.boxed": len(LETTERS), "glyphs.first": len(LETTERS), "glyphs.count": 5,
                          **{f"glyphs.has-{c}": 2 for c in LETTERS}}
_BITMAPS = {c: np.kron(np.array([ch == "#" for ch in bits]).reshape(7, 5), np.ones((SCALE, SCALE), bool))
            for c, bits in _FONT.items()}


@dataclass
class Glyph:
    """One letter: its name and the top-left corner of its glyph."""

    letter: str
    x: int
    y: int


@dataclass
class Page:
    """Paper colour, ink colour, ruled-line spacing, letters and which one is framed."""

    paper: tuple[int, int, int]
    ink: tuple[int, int, int]
    ruling: int
    texture_seed: int
    glyphs: list[Glyph] = field(default_factory=list)
    boxed: int = 0


def make_scene(rng: np.random.Generator) -> Page:
    """A random page with 2-4 distinct letters, one framed.

    Example:
        >>> 2 <= len(make_scene(np.random.default_rng(0)).glyphs) <= 4
        True
    """
    grey = int(rng.integers(205, 250))
    paper = jitter((grey, grey - int(rng.integers(0, 12)), grey - int(rng.integers(0, 25))), rng, 6)
    ink = jitter(pick(rng, [(20, 20, 25), (25, 35, 110), (60, 30, 30)]), rng, 15)
    page = Page(paper, ink, int(rng.integers(6, 11)), int(rng.integers(0, 2**31 - 1)))
    n = int(rng.integers(2, 5))
    letters = rng.permutation(len(LETTERS))[:n]
    placed: list[tuple[int, int, int, int]] = []
    for k in letters:
        for _ in range(100):
            x = int(rng.integers(PAD, IMAGE_SIZE - GLYPH_W - PAD + 1))
            y = int(rng.integers(PAD, IMAGE_SIZE - GLYPH_H - PAD + 1))
            cell = (x - PAD, y - PAD, x + GLYPH_W + PAD, y + GLYPH_H + PAD)
            if free(cell, placed, 1):
                placed.append(cell)
                page.glyphs.append(Glyph(LETTERS[int(k)], x, y))
                break
    page.boxed = int(rng.integers(0, len(page.glyphs)))
    return page


def _frame(g: Glyph) -> np.ndarray:
    outer = box_mask(g.x - PAD, g.y - PAD, g.x + GLYPH_W + PAD, g.y + GLYPH_H + PAD)
    inner = box_mask(g.x - PAD + 1, g.y - PAD + 1, g.x + GLYPH_W + PAD - 1, g.y + GLYPH_H + PAD - 1)
    return outer & ~inner


def render(page: Page):
    """Draw a page; return the image and one object per letter (box = the glyph's box).

    Example:
        >>> img, objs = render(make_scene(np.random.default_rng(0)))
        >>> img.size, objs[0].shape in LETTERS
        ((64, 64), True)
    """
    n = IMAGE_SIZE
    rng = np.random.default_rng(page.texture_seed)
    img = np.broadcast_to(np.asarray(page.paper, np.float32), (n, n, 3)).copy()
    img += rng.normal(0.0, 3.0, size=(n, n, 1)).astype(np.float32)  # paper grain
    img[page.ruling - 1::page.ruling] -= 18.0  # faint ruled lines
    objects: list[ShapeObject] = []
    for i, g in enumerate(page.glyphs):
        mask = np.zeros((n, n), dtype=bool)
        mask[g.y:g.y + GLYPH_H, g.x:g.x + GLYPH_W] = _BITMAPS[g.letter]
        img[mask] = page.ink
        if i == page.boxed:
            img[_frame(g)] = page.ink
        objects.append(mask_object(g.letter, "ink", mask))
    return to_image(img), objects


def _first(page: Page) -> int | None:
    """Index of the left-most letter, or None when another is within :data:`FIRST_MARGIN` px."""
    xs = sorted((g.x, i) for i, g in enumerate(page.glyphs))
    if len(xs) > 1 and xs[1][0] - xs[0][0] < FIRST_MARGIN:
        return None
    return xs[0][1]


def ask(page: Page, qtype: str, rng: np.random.Generator) -> tuple[str, str, list[int]] | None:
    """``(prompt, answer, target indices)`` of a ``qtype`` question, or None when it has no answer.

    Example:
        >>> page = make_scene(np.random.default_rng(0))
        >>> ask(page, "boxed", np.random.default_rng(0))[2] == [page.boxed]
        True
    """
    if qtype == "boxed":
        return PROMPTS["boxed"], page.glyphs[page.boxed].letter, [page.boxed]
    if qtype == "first":
        i = _first(page)
        return None if i is None else (PROMPTS["first"], page.glyphs[i].letter, [i])
    raise ValueError(f"unknown question type {qtype!r}")


def regions(page: Page, objects: list[ShapeObject]) -> list[tuple[np.ndarray, int]]:
    """Per-patch label regions: each glyph's box, as letter or framed letter."""
    out = []
    for i, g in enumerate(page.glyphs):
        cls = LETTERS.index(g.letter) + (len(LETTERS) if i == page.boxed else 0)
        out.append((box_mask(g.x, g.y, g.x + GLYPH_W, g.y + GLYPH_H), cls))
    return out


def pooled(page: Page) -> dict[str, int]:
    """Whole-image labels: the framed and first letters, the count, which letters are present."""
    present = {g.letter for g in page.glyphs}
    first = _first(page)
    out = {"glyphs.boxed": LETTERS.index(page.glyphs[page.boxed].letter), "glyphs.count": len(page.glyphs),
           **{f"glyphs.has-{c}": int(c in present) for c in LETTERS}}
    out["glyphs.first"] = -100 if first is None else LETTERS.index(page.glyphs[first].letter)
    return out
