"""Line maps seen from above: roads, rivers and fields on terrain, read like remote sensing.

Mottled green terrain; a crop field (a striped tan rectangle near one edge),
a river (a wavy blue band) and a road (a straight grey line), each present
with probability 0.7 and at least one of them. River and road run across the
whole image, horizontally or vertically; where they are parallel they keep
10 px apart, where they are not the road bridges the river.

========== ============================================== =========================
type       prompt                                         answers
========== ============================================== =========================
orient     ``<image> which way does the road run ?``       horizontal vertical
           (or ``the river``)
field      ``<image> where is the field ?``                north south east west
cross      ``<image> does the road cross the river ?``     yes no
========== ============================================== =========================

Example:
    >>> from mmlens.data.domains import make_sample
    >>> s = make_sample("maps", "test", 0, "field")
    >>> s.answer in SIDES and s.objects[s.target_objects[0]].shape == "field"
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmlens.data.domains.common import box_mask, jitter, mask_object, pick, to_image
from mmlens.data.sample import IMAGE_SLOT, ShapeObject
from mmlens.data.shapes import IMAGE_SIZE

NAME = "maps"
QUESTION_TYPES: tuple[str, ...] = ("orient", "field", "cross")
ORIENTATIONS: tuple[str, ...] = ("horizontal", "vertical")
SIDES: tuple[str, ...] = ("north", "south", "east", "west")
FEATURES: tuple[str, ...] = ("road", "river", "field")
_PROMPTS = (f"{IMAGE_SLOT} which way does the road run ?", f"{IMAGE_SLOT} which way does the river run ?",
            f"{IMAGE_SLOT} where is the field ?", f"{IMAGE_SLOT} does the road cross the river ?")
WORDS: tuple[str, ...] = tuple(sorted(set(ORIENTATIONS) | set(SIDES) | {"yes", "no"}
                                      | {w for p in _PROMPTS for w in p.split()} - {IMAGE_SLOT}))
PATCH_CLASSES: tuple[str, ...] = FEATURES
POOLED: dict[str, int] = {"maps.road": 3, "maps.river": 3, "maps.field": 5}
ROAD_WIDTH, RIVER_WIDTH = 3, 4


@dataclass
class Line:
    """A road or river across the image: orientation, centre offset (px), and the river's wave."""

    orient: str
    offset: int
    amplitude: float = 0.0
    period: float = 1.0
    phase: float = 0.0


@dataclass
class Terrain:
    """Ground colour and texture seed; the optional field (side, box), river and road."""

    ground: tuple[int, int, int]
    texture_seed: int
    field_side: str | None
    field_box: tuple[int, int, int, int] | None
    river: Line | None
    road: Line | None


def _field(rng: np.random.Generator) -> tuple[str, tuple[int, int, int, int]]:
    """A side and a field box whose centre is far off the middle towards that side only."""
    side = SIDES[int(rng.integers(0, 4))]
    w, h = (int(v) for v in rng.integers(12, 19, size=2))
    along = int(rng.integers(24, 41))  # centre coordinate along the edge, near the middle
    depth = int(rng.integers(2, 6))  # distance from the edge
    if side in ("north", "south"):
        x0 = along - w // 2
        y0 = depth if side == "north" else IMAGE_SIZE - depth - h
    else:
        y0 = along - h // 2
        x0 = depth if side == "west" else IMAGE_SIZE - depth - w
    return side, (x0, y0, x0 + w, y0 + h)


def make_scene(rng: np.random.Generator) -> Terrain:
    """A random terrain with at least one of field, river and road.

    Example:
        >>> t = make_scene(np.random.default_rng(2))
        >>> any(x is not None for x in (t.field_box, t.river, t.road))
        True
    """
    ground = jitter((85, 125, 65), rng, 18)
    seed = int(rng.integers(0, 2**31 - 1))
    while True:
        has = rng.random(3) < 0.7
        if has.any():
            break
    side, box = _field(rng) if has[0] else (None, None)
    river = road = None
    if has[1]:
        river = Line(ORIENTATIONS[int(rng.integers(0, 2))], int(rng.integers(12, 53)),
                     float(rng.uniform(1.5, 3.5)), float(rng.uniform(14, 30)), float(rng.uniform(0, 6.3)))
    if has[2]:
        orient = ORIENTATIONS[int(rng.integers(0, 2))]
        offsets = [o for o in range(8, 57) if river is None or river.orient != orient or abs(o - river.offset) >= 10]
        road = Line(orient, int(pick(rng, offsets)))
    return Terrain(ground, seed, side, box, river, road)


def _line_mask(line: Line, width: int) -> np.ndarray:
    n = IMAGE_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    along, across = (xx, yy) if line.orient == "horizontal" else (yy, xx)
    centre = line.offset + line.amplitude * np.sin(2 * np.pi * along / line.period + line.phase)
    return np.abs(across + 0.5 - centre) <= width / 2.0


def render(t: Terrain):
    """Draw a terrain; return the image and its features (field, river, road) as objects.

    Example:
        >>> img, objs = render(make_scene(np.random.default_rng(2)))
        >>> img.size
        (64, 64)
    """
    n = IMAGE_SIZE
    rng = np.random.default_rng(t.texture_seed)
    blotch = np.kron(rng.normal(0.0, 1.0, size=(8, 8)), np.ones((8, 8)))  # mottled ground
    img = np.asarray(t.ground, np.float32) + (12.0 * blotch + rng.normal(0.0, 4.0, size=(n, n)))[..., None]
    layers: list[tuple[str, str, np.ndarray]] = []
    if t.field_box is not None:
        m = box_mask(*t.field_box)
        img[m] = jitter((200, 175, 100), rng, 15)
        rows = m & (np.arange(n)[:, None] % 3 == 0)  # crop rows
        img[rows] -= 30.0
        layers.append(("field", "tan", m))
    if t.river is not None:
        m = _line_mask(t.river, RIVER_WIDTH)
        img[m] = jitter((45, 90, 185), rng, 15)
        layers.append(("river", "blue", m))
    if t.road is not None:
        m = _line_mask(t.road, ROAD_WIDTH)
        img[m] = jitter((140, 140, 135), rng, 12)
        layers.append(("road", "grey", m))
    objects: list[ShapeObject] = []
    for i, (kind, tint, m) in enumerate(layers):
        visible = m.copy()
        for _, _, above in layers[i + 1:]:
            visible &= ~above
        objects.append(mask_object(kind, tint, visible, "large"))
    return to_image(img), objects


def _index(t: Terrain, kind: str) -> int:
    """Index of a feature among the rendered objects (drawn field, river, road)."""
    present = [k for k, x in (("field", t.field_box), ("river", t.river), ("road", t.road)) if x is not None]
    return present.index(kind)


def ask(t: Terrain, qtype: str, rng: np.random.Generator) -> tuple[str, str, list[int]] | None:
    """``(prompt, answer, target indices)`` of a ``qtype`` question, or None when the feature is missing.

    Example:
        >>> ask(make_scene(np.random.default_rng(2)), "orient", np.random.default_rng(0))[1] in ORIENTATIONS
        True
    """
    if qtype == "orient":
        kinds = [k for k, x in (("road", t.road), ("river", t.river)) if x is not None]
        kind = pick(rng, kinds)
        if kind is None:
            return None
        line = t.road if kind == "road" else t.river
        return f"{IMAGE_SLOT} which way does the {kind} run ?", line.orient, [_index(t, kind)]
    if qtype == "field":
        if t.field_side is None:
            return None
        return f"{IMAGE_SLOT} where is the field ?", t.field_side, [_index(t, "field")]
    if qtype == "cross":
        if t.road is None or t.river is None:
            return None
        answer = "yes" if t.road.orient != t.river.orient else "no"
        return f"{IMAGE_SLOT} does the road cross the river ?", answer, [_index(t, "road"), _index(t, "river")]
    raise ValueError(f"unknown question type {qtype!r}")


def regions(t: Terrain, objects: list[ShapeObject]) -> list[tuple[np.ndarray, int]]:
    """Per-patch label regions: each feature's visible pixels (road over river over field)."""
    return [(o.mask, FEATURES.index(o.shape)) for o in objects]


def pooled(t: Terrain) -> dict[str, int]:
    """Whole-image labels: road and river orientation (0 = none), field side (0 = none)."""
    def orient(line: Line | None) -> int:
        return 0 if line is None else 1 + ORIENTATIONS.index(line.orient)
    return {"maps.road": orient(t.road), "maps.river": orient(t.river),
            "maps.field": 0 if t.field_side is None else 1 + SIDES.index(t.field_side)}
