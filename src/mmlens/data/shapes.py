"""The shapes world: seeded scenes of coloured shapes, with ground truth.

Every scene holds 1 to 4 non-overlapping objects (4 shapes x 5 colours x 2
sizes) on a plain or textured background. Questions have one-word answers:

========== ============================================== =====================
type       prompt                                         answers
========== ============================================== =====================
colour     ``<image> what colour is the circle ?``        red green blue ...
shape      ``<image> what shape is the red object ?``     circle square ...
exist      ``<image> is there a blue square ?``           yes no
position   ``<image> is the cross on the left or right ?`` left right top bottom
count      ``<image> how many circles are there ?``       zero one ... four
========== ============================================== =====================

Sample ``i`` of a split is drawn from ``numpy.random.default_rng(offset + i)``
with the split's offset from :data:`SPLIT_OFFSETS`: the seed ranges never meet,
so ``test`` is held out from ``train`` by construction. :func:`counterfactual`
re-renders the same scene with one object recoloured or removed.

Example:
    >>> s = make_sample("test", 3, question_type="colour")
    >>> s.prompt.startswith("<image> what colour is the")
    True
    >>> cf = counterfactual(s, "remove")
    >>> cf.answer is None   # the asked object is gone
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mmlens.box import Box
from mmlens.data.sample import IMAGE_SLOT, ShapeObject, ShapesSample

IMAGE_SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 195),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES: dict[str, int] = {"small": 12, "large": 18}
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes", "checker")
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "exist", "position", "count")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 100_000_000, "test": 200_000_000}
# An object is asked about for position only when its centre is this far (px)
# from the image's middle line, so the answer is never a coin toss.
POSITION_MARGIN = 6.0
_GAP = 2  # minimum free pixels between two objects' boxes


@dataclass
class SceneObject:
    """What is needed to draw one object: its kind and top-left corner."""

    colour: str
    shape: str
    size: str
    x: int
    y: int
    rgb: tuple[int, int, int]


@dataclass
class Scene:
    """A background description plus objects; :func:`render` draws it."""

    background: str
    base_rgb: tuple[int, int, int]
    texture_seed: int
    objects: list[SceneObject] = field(default_factory=list)


@dataclass
class Question:
    """A structured question; the referent is the object(s) matching colour/shape."""

    type: str
    colour: str | None = None
    shape: str | None = None
    axis: str | None = None  # "x" or "y" for position questions

    def prompt(self) -> str:
        """The question as a prompt with the image slot, words space-separated."""
        ref = " ".join(w for w in (self.colour, self.shape) if w)
        if self.type == "colour":
            return f"{IMAGE_SLOT} what colour is the {self.shape} ?"
        if self.type == "shape":
            return f"{IMAGE_SLOT} what shape is the {self.colour} object ?"
        if self.type == "exist":
            return f"{IMAGE_SLOT} is there a {ref} ?"
        if self.type == "position":
            where = "on the left or right" if self.axis == "x" else "at the top or bottom"
            return f"{IMAGE_SLOT} is the {ref} {where} ?"
        if self.type == "count":
            what = PLURALS[self.shape] if self.shape else f"{self.colour} objects"
            return f"{IMAGE_SLOT} how many {what} are there ?"
        raise ValueError(f"unknown question type {self.type!r}")


def vocabulary() -> list[str]:
    """Every word a shapes-world prompt or answer can contain, sorted.

    Example:
        >>> "circle" in vocabulary() and "?" in vocabulary()
        True
    """
    words = set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(NUMBER_WORDS) | set(POSITIONS)
    words |= {"yes", "no"}
    for q in (Question("colour", shape="circle"), Question("shape", colour="red"),
              Question("exist", "red", "circle"), Question("position", shape="circle", axis="x"),
              Question("position", shape="circle", axis="y"), Question("count", shape="circle"),
              Question("count", colour="red")):
        words |= set(q.prompt().split())
    words.discard(IMAGE_SLOT)
    return sorted(words)


# ---------------------------------------------------------------- rendering

def _shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean ``s x s`` mask of a shape filling its box."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2.0
    if shape == "square":
        return np.ones((s, s), dtype=bool)
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= (s / 2.0) ** 2
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(xx - c) <= (yy + 1.0) / 2.0
    if shape == "cross":
        half = s / 6.0
        return (np.abs(xx - c) <= half) | (np.abs(yy - c) <= half)
    raise ValueError(f"unknown shape {shape!r}")


_MASKS = {(sh, sz): _shape_mask(sh, px) for sh in SHAPES for sz, px in SIZES.items()}


def _background(scene: Scene) -> np.ndarray:
    """The ``H x W x 3`` float background of a scene (before objects)."""
    n = IMAGE_SIZE
    base = np.asarray(scene.base_rgb, dtype=np.float32)
    img = np.broadcast_to(base, (n, n, 3)).copy()
    if scene.background == "plain":
        return img
    rng = np.random.default_rng(scene.texture_seed)
    yy, xx = np.mgrid[0:n, 0:n]
    amp = float(rng.uniform(18, 32))
    if scene.background == "noise":
        img += rng.normal(0.0, amp * 0.6, size=(n, n, 1)).astype(np.float32)
    elif scene.background == "stripes":
        period = int(rng.integers(4, 11))
        coord = (xx, yy, xx + yy)[int(rng.integers(0, 3))]
        img += np.where((coord // (period // 2 + 1)) % 2 == 0, amp, -amp)[..., None].astype(np.float32)
    elif scene.background == "checker":
        cell = int(rng.integers(4, 11))
        img += np.where(((xx // cell) + (yy // cell)) % 2 == 0, amp, -amp)[..., None].astype(np.float32)
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    return img


def render(scene: Scene) -> tuple[Image.Image, list[ShapeObject]]:
    """Draw a scene; return the image and its objects with boxes and masks.

    Example:
        >>> img, objs = render(make_scene(np.random.default_rng(0)))
        >>> img.size
        (64, 64)
    """
    img = _background(scene)
    objects: list[ShapeObject] = []
    for o in scene.objects:
        local = _MASKS[(o.shape, o.size)]
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        mask[o.y:o.y + local.shape[0], o.x:o.x + local.shape[1]] = local
        img[mask] = o.rgb
        ys, xs = np.nonzero(mask)
        box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(ShapeObject(o.colour, o.shape, o.size, box, mask))
    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), objects


# ---------------------------------------------------------------- scenes

def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    noise = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + noise, 0, 255))  # type: ignore[return-value]


def _fits(x: int, y: int, s: int, placed: list[SceneObject]) -> bool:
    for o in placed:
        t = SIZES[o.size]
        if x < o.x + t + _GAP and o.x < x + s + _GAP and y < o.y + t + _GAP and o.y < y + s + _GAP:
            return False
    return True


def make_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A random scene: 1-4 objects, no two alike in both colour and shape.

    Backgrounds are low-saturation greys (plain or textured) so that no
    background pixel reads as an object colour.

    Example:
        >>> 1 <= len(make_scene(np.random.default_rng(1)).objects) <= 4
        True
    """
    background = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    grey = int(rng.integers(85, 176))
    base = _jitter((grey, grey, grey), rng, 12)
    scene = Scene(background, base, int(rng.integers(0, 2**31 - 1)))
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    kinds: set[tuple[str, str]] = set()
    for _ in range(200):  # rejection sampling; 4 objects always fit in 64 px
        if len(scene.objects) == n:
            break
        colour = list(COLOURS)[int(rng.integers(0, len(COLOURS)))]
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        size = list(SIZES)[int(rng.integers(0, len(SIZES)))]
        s = SIZES[size]
        x, y = (int(v) for v in rng.integers(1, IMAGE_SIZE - s, size=2))
        if (colour, shape) in kinds or not _fits(x, y, s, scene.objects):
            continue
        kinds.add((colour, shape))
        scene.objects.append(SceneObject(colour, shape, size, x, y, _jitter(COLOURS[colour], rng, 12)))
    return scene


# ---------------------------------------------------------------- questions

def _matches(scene: Scene, q: Question) -> list[int]:
    return [i for i, o in enumerate(scene.objects)
            if (q.colour is None or o.colour == q.colour) and (q.shape is None or o.shape == q.shape)]


def answer_question(scene: Scene, q: Question) -> tuple[str | None, list[int]]:
    """The answer to ``q`` in ``scene`` and the objects it depends on.

    The answer is ``None`` when the question has no answer in this scene (its
    referent is missing or ambiguous, or too close to the middle line).

    Example:
        >>> sc = Scene("plain", (128, 128, 128), 0, [SceneObject("red", "circle", "small", 2, 2, (215, 40, 40))])
        >>> answer_question(sc, Question("colour", shape="circle"))
        ('red', [0])
    """
    hits = _matches(scene, q)
    if q.type == "exist":
        return ("yes" if hits else "no"), hits
    if q.type == "count":
        return NUMBER_WORDS[len(hits)], hits
    if len(hits) != 1:
        return None, hits
    o = scene.objects[hits[0]]
    if q.type == "colour":
        return o.colour, hits
    if q.type == "shape":
        return o.shape, hits
    if q.type == "position":
        s = SIZES[o.size]
        centre = (o.x if q.axis == "x" else o.y) + s / 2.0
        offset = centre - IMAGE_SIZE / 2.0
        if abs(offset) < POSITION_MARGIN:
            return None, hits
        if q.axis == "x":
            return ("left" if offset < 0 else "right"), hits
        return ("top" if offset < 0 else "bottom"), hits
    raise ValueError(f"unknown question type {q.type!r}")


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(0, len(items)))] if items else None


def make_question(scene: Scene, qtype: str, rng: np.random.Generator) -> Question | None:
    """A question of type ``qtype`` that has an answer in ``scene``, or None."""
    objs = scene.objects
    shape_counts = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    colour_counts = {c: sum(o.colour == c for o in objs) for c in COLOURS}
    if qtype == "colour":
        o = _pick(rng, [o for o in objs if shape_counts[o.shape] == 1])
        return Question("colour", shape=o.shape) if o else None
    if qtype == "shape":
        o = _pick(rng, [o for o in objs if colour_counts[o.colour] == 1])
        return Question("shape", colour=o.colour) if o else None
    if qtype == "exist":
        if rng.random() < 0.5:
            o = _pick(rng, objs)
            return Question("exist", o.colour, o.shape)
        present = {(o.colour, o.shape) for o in objs}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        # Half the negatives are hard: both the colour and the shape are in
        # the image, only not together, so the model must bind them.
        hard = [(c, s) for c, s in absent if colour_counts[c] and shape_counts[s]]
        c, s = _pick(rng, hard if hard and rng.random() < 0.5 else absent)
        return Question("exist", c, s)
    if qtype == "position":
        axis = "x" if rng.random() < 0.5 else "y"
        cands = []
        for o in objs:
            ref = Question("position", None if shape_counts[o.shape] == 1 else o.colour, o.shape, axis)
            if answer_question(scene, ref)[0] is not None:
                cands.append(ref)
        return _pick(rng, cands)
    if qtype == "count":
        if rng.random() < 0.5:
            present = [s for s in SHAPES if shape_counts[s]]
            shape = _pick(rng, present) if rng.random() < 0.8 else _pick(rng, list(SHAPES))
            return Question("count", shape=shape)
        present = [c for c in COLOURS if colour_counts[c]]
        colour = _pick(rng, present) if rng.random() < 0.8 else _pick(rng, list(COLOURS))
        return Question("count", colour=colour)
    raise ValueError(f"unknown question type {qtype!r}; known: {QUESTION_TYPES}")


def _build(sample_id: str, scene: Scene, q: Question, meta: dict) -> ShapesSample:
    image, objects = render(scene)
    answer, targets = answer_question(scene, q)
    meta = {**meta, "scene": scene, "question": q}
    return ShapesSample(id=sample_id, image=image, prompt=q.prompt(), answer=answer, meta=meta,
                        objects=objects, target_objects=targets, question_type=q.type)


def make_sample(split: str, index: int, question_type: str | None = None) -> ShapesSample:
    """Sample ``index`` of ``split`` ("train", "val" or "test"), deterministic.

    With ``question_type`` None the type is drawn uniformly.

    Example:
        >>> a, b = make_sample("train", 7), make_sample("train", 7)
        >>> a.prompt == b.prompt and a.image.tobytes() == b.image.tobytes()
        True
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; known: {sorted(SPLIT_OFFSETS)}")
    if not 0 <= index < 100_000_000:
        raise ValueError("index must be in [0, 1e8)")
    rng = np.random.default_rng(SPLIT_OFFSETS[split] + index)
    qtype = question_type or QUESTION_TYPES[int(rng.integers(0, len(QUESTION_TYPES)))]
    while True:  # a few scenes (e.g. four circles) admit no question of a type
        scene = make_scene(rng)
        q = make_question(scene, qtype, rng)
        if q is not None:
            return _build(f"shapes-{split}-{index}", scene, q, {"split": split, "index": index})


def make_dataset(split: str, n: int, start: int = 0, question_type: str | None = None) -> list[ShapesSample]:
    """Samples ``start .. start + n - 1`` of a split.

    Example:
        >>> len(make_dataset("test", 5))
        5
    """
    return [make_sample(split, i, question_type) for i in range(start, start + n)]


def counterfactual(sample: ShapesSample, kind: str, object_index: int | None = None,
                   colour: str | None = None) -> ShapesSample:
    """The same scene and question with one object recoloured or removed.

    ``kind`` is ``"recolour"`` or ``"remove"``; ``object_index`` defaults to the
    first target object. The answer and targets are recomputed, so they may be
    ``None`` (e.g. asking the colour of a removed circle). Everything outside
    the changed object's mask stays pixel-identical.

    Example:
        >>> s = make_sample("test", 0, question_type="colour")
        >>> counterfactual(s, "recolour").answer != s.answer
        True
    """
    scene: Scene = sample.meta["scene"]
    q: Question = sample.meta["question"]
    i = sample.target_objects[0] if object_index is None else object_index
    if not 0 <= i < len(scene.objects):
        raise ValueError(f"object_index {i} out of range for {len(scene.objects)} objects")
    objs = list(scene.objects)
    if kind == "remove":
        del objs[i]
    elif kind == "recolour":
        taken = {(o.colour, o.shape) for o in objs}
        options = [c for c in COLOURS if c != objs[i].colour and (c, objs[i].shape) not in taken]
        new = colour or options[(sum(map(ord, sample.id)) + i) % len(options)]
        objs[i] = dataclasses.replace(objs[i], colour=new, rgb=COLOURS[new])
    else:
        raise ValueError(f"unknown counterfactual kind {kind!r}; use 'recolour' or 'remove'")
    meta = {**sample.meta, "counterfactual": {"kind": kind, "object_index": i, "of": sample.id}}
    return _build(f"{sample.id}-{kind}{i}", dataclasses.replace(scene, objects=objs), q, meta)


def patch_labels(objects: list[ShapeObject], grid: int = 8, size: int = IMAGE_SIZE,
                 min_cover: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch ground truth: which colour and which shape covers each patch.

    Returns two ``grid x grid`` int arrays: colour index into :data:`COLOURS`
    and shape index into :data:`SHAPES`, each ``-1`` for background (no object
    covers at least ``min_cover`` of the patch).

    Example:
        >>> s = make_sample("test", 0)
        >>> patch_labels(s.objects)[0].shape
        (8, 8)
    """
    p = size // grid
    colours = np.full((grid, grid), -1, dtype=np.int64)
    shapes = np.full((grid, grid), -1, dtype=np.int64)
    best = np.full((grid, grid), min_cover * p * p - 1e-9)
    for o in objects:
        cover = o.mask.reshape(grid, p, grid, p).sum(axis=(1, 3))
        win = cover > best
        best = np.where(win, cover, best)
        colours[win] = list(COLOURS).index(o.colour)
        shapes[win] = SHAPES.index(o.shape)
    return colours, shapes
