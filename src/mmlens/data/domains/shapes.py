"""The shapes world (:mod:`mmlens.data.shapes`) as a domain of the multi-domain world.

Questions, answers and images are exactly the shapes world's: sample ``i``
of a split here is ``mmlens.data.shapes.make_sample(split, i)``.

Example:
    >>> from mmlens.data.domains import make_sample
    >>> from mmlens.data import shapes as world
    >>> make_sample("shapes", "test", 4).prompt == world.make_sample("test", 4).prompt
    True
"""

from __future__ import annotations

import numpy as np

from mmlens.data import shapes as world
from mmlens.data.sample import ShapeObject

NAME = "shapes"
QUESTION_TYPES: tuple[str, ...] = world.QUESTION_TYPES
WORDS: tuple[str, ...] = tuple(world.vocabulary())
_PAIRS = [(c, s) for c in world.COLOURS for s in world.SHAPES]
PATCH_CLASSES: tuple[str, ...] = tuple(f"{c}-{s}" for c, s in _PAIRS)
# Whole-image labels, as in shapes-llava's stage 1: how many of each colour
# and shape, and for each (colour, shape) pair: present, left, right, top, bottom.
_FLAGS = ("present", "left", "right", "top", "bottom")
POOLED: dict[str, int] = {**{f"shapes.n-{k}": 5 for k in (*world.COLOURS, *world.SHAPES)},
                          **{f"shapes.{c}-{s}-{f}": 2 for c, s in _PAIRS for f in _FLAGS}}

make_scene = world.make_scene


def render(scene: world.Scene):
    """The shapes world's renderer (image, objects with boxes and masks)."""
    return world.render(scene)


def ask(scene: world.Scene, qtype: str, rng: np.random.Generator) -> tuple[str, str, list[int]] | None:
    """``(prompt, answer, target indices)`` of a ``qtype`` question, or None.

    Example:
        >>> sc = world.make_scene(np.random.default_rng(0))
        >>> ask(sc, "exist", np.random.default_rng(0))[1] in ("yes", "no")
        True
    """
    q = world.make_question(scene, qtype, rng)
    if q is None:
        return None
    answer, targets = world.answer_question(scene, q)
    return q.prompt(), answer, targets


def regions(scene: world.Scene, objects: list[ShapeObject]) -> list[tuple[np.ndarray, int]]:
    """Per-patch label regions: each object's mask, labelled with its (colour, shape) pair."""
    return [(o.mask, _PAIRS.index((o.colour, o.shape))) for o in objects]


def pooled(scene: world.Scene) -> dict[str, int]:
    """Whole-image labels: colour and shape counts, and each pair's presence and sides."""
    out = {f"shapes.n-{k}": 0 for k in (*world.COLOURS, *world.SHAPES)}
    out.update({f"shapes.{c}-{s}-{f}": 0 for c, s in _PAIRS for f in _FLAGS})
    for o in scene.objects:
        out[f"shapes.n-{o.colour}"] += 1
        out[f"shapes.n-{o.shape}"] += 1
        half = world.SIZES[o.size] / 2.0
        x, y = o.x + half, o.y + half
        for f, v in zip(_FLAGS, (True, x < 32, x >= 32, y < 32, y >= 32)):
            out[f"shapes.{o.colour}-{o.shape}-{f}"] = int(v)
    return out
