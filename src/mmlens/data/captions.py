"""Scene captions of the shapes world, with the object each word refers to.

A caption names every object once, as ``a <colour> <shape>``, in order of
the objects' centres from left to right (ties: top first), and joins each
object to the next one by its relation to it::

    <image> describe the scene ?  ->  a red circle left of a blue square above a green cross

The relation between consecutive objects ``p`` (earlier) and ``q`` (next,
never further left) is ``left of`` when the horizontal gap of their centres
is at least the vertical one, else ``above`` (``p`` higher) or ``below``.
Every word has ground truth: ``a``, the colour and the shape refer to their
object; the relation words refer to both objects they relate.

Sample ``i`` of a split draws its scene from the same seed as
:func:`mmlens.data.shapes.make_sample` (``SPLIT_OFFSETS[split] + i``), so
held-out captions never meet training scenes.

Example:
    >>> s = make_caption_sample("test", 0)
    >>> s.prompt
    '<image> describe the scene ?'
    >>> s.answer.split()[:1]
    ['a']
    >>> score_caption(s.answer, s.objects)["all_named"]
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmlens.data.sample import IMAGE_SLOT, ShapeObject, ShapesSample
from mmlens.data.shapes import COLOURS, SHAPES, SPLIT_OFFSETS, render, make_scene
from mmlens.errors import MmlensError, check_choice

CAPTION_PROMPT = f"{IMAGE_SLOT} describe the scene ?"
RELATIONS: dict[str, tuple[str, ...]] = {"left": ("left", "of"), "above": ("above",), "below": ("below",)}
# Words a caption prompt or caption may hold beyond the shapes-world vocabulary.
NEW_WORDS: tuple[str, ...] = ("above", "below", "describe", "of", "scene")
QUESTION_TYPE = "caption"


@dataclass
class Caption:
    """A caption's words and, per word, the indices of the objects it refers to.

    ``order`` lists object indices in the order the caption names them.

    Example:
        >>> c = Caption(["a", "red", "circle"], [(0,), (0,), (0,)], [0])
        >>> c.text
        'a red circle'
    """

    words: list[str]
    refs: list[tuple[int, ...]]
    order: list[int]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def relation(p: ShapeObject, q: ShapeObject) -> str:
    """How ``p`` stands to ``q`` (``q`` never further left): ``left``, ``above`` or ``below``.

    Example:
        >>> from mmlens.data.shapes import make_sample
        >>> objs = make_sample("test", 1).objects
        >>> relation(objs[0], objs[0])
        'left'
    """
    (px, py), (qx, qy) = p.centre, q.centre
    if qx - px >= abs(qy - py):
        return "left"
    return "above" if py < qy else "below"


def caption_of(objects: list[ShapeObject]) -> Caption:
    """The caption of a scene's objects (see the module docstring for the grammar).

    Example:
        >>> from mmlens.data.shapes import make_sample
        >>> c = caption_of(make_sample("test", 2).objects)
        >>> len(c.words) == len(c.refs)
        True
    """
    if not objects:
        raise MmlensError("a caption needs at least one object")
    order = sorted(range(len(objects)), key=lambda i: (objects[i].centre[0], objects[i].centre[1]))
    words: list[str] = []
    refs: list[tuple[int, ...]] = []
    for k, i in enumerate(order):
        if k > 0:
            prev = order[k - 1]
            for word in RELATIONS[relation(objects[prev], objects[i])]:
                words.append(word)
                refs.append((prev, i))
        o = objects[i]
        words += ["a", o.colour, o.shape]
        refs += [(i,), (i,), (i,)]
    return Caption(words, refs, order)


def make_caption_sample(split: str, index: int) -> ShapesSample:
    """Caption sample ``index`` of ``split``: the scene of seed ``SPLIT_OFFSETS[split] + index``.

    ``answer`` is the caption (without the end token); ``meta["caption"]``
    holds the :class:`Caption` with each word's objects; ``target_objects`` is
    every object; ``question_type`` is ``"caption"``.

    Example:
        >>> s = make_caption_sample("val", 5)
        >>> s.meta["caption"].text == s.answer and s.question_type
        'caption'
    """
    check_choice(split, sorted(SPLIT_OFFSETS), "split")
    if not 0 <= index < 100_000_000:
        raise MmlensError("index must be in [0, 1e8)")
    scene = make_scene(np.random.default_rng(SPLIT_OFFSETS[split] + index))
    image, objects = render(scene)
    caption = caption_of(objects)
    return ShapesSample(id=f"caption-{split}-{index}", image=image, prompt=CAPTION_PROMPT, answer=caption.text,
                        meta={"split": split, "index": index, "scene": scene, "caption": caption},
                        objects=objects, target_objects=list(range(len(objects))), question_type=QUESTION_TYPE)


def parse_caption(text: str) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a caption names, in order (``a <colour> <shape>`` phrases).

    Example:
        >>> parse_caption("a red circle left of a blue square </s>")
        [('red', 'circle'), ('blue', 'square')]
    """
    words = text.replace("</s>", " ").split()
    return [(words[k + 1], words[k + 2]) for k in range(len(words) - 2)
            if words[k] == "a" and words[k + 1] in COLOURS and words[k + 2] in SHAPES]


def score_caption(text: str, objects: list[ShapeObject]) -> dict[str, bool | int]:
    """How a generated caption matches the scene.

    ``all_named``: every object's colour and shape is named (the target
    metric); ``hallucinated``: pairs named that are not in the scene;
    ``exact``: the caption is exactly the ground truth.

    Example:
        >>> s = make_caption_sample("test", 0)
        >>> score_caption(s.answer, s.objects)["exact"]
        True
    """
    named = parse_caption(text)
    truth = [(o.colour, o.shape) for o in objects]
    return {
        "all_named": all(pair in named for pair in truth),
        "named": sum(pair in named for pair in truth),
        "objects": len(truth),
        "hallucinated": sum(pair not in truth for pair in named),
        "exact": " ".join(text.replace("</s>", " ").split()) == caption_of(objects).text,
    }
