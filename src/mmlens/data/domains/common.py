"""What every domain of the multi-domain world shares: samples, splits, patch labels.

A domain is a module with this interface (see :mod:`.glyphs` for a small one):

- ``NAME``, ``QUESTION_TYPES`` and ``WORDS`` (every prompt and answer word);
- ``PATCH_CLASSES``: names of the per-patch classes (background excluded);
- ``POOLED``: ``slot -> number of classes`` of whole-image labels;
- ``make_scene(rng)``, ``render(scene) -> (image, objects)``;
- ``ask(scene, qtype, rng) -> (prompt, answer, target indices) | None``;
- ``regions(scene, objects) -> [(mask, class index)]`` and
  ``pooled(scene) -> {slot: class}``, the stage-1 labels of a vision tower.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng(offset + i)``
with the shapes world's offsets (train 0, val 1e8, test 2e8), so ``test``
never meets training data.

Example:
    >>> from mmlens.data.domains import make_sample
    >>> s = make_sample("glyphs", "test", 0, "boxed")
    >>> s.domain, s.prompt
    ('glyphs', '<image> what letter is in the box ?')
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mmlens.box import Box
from mmlens.data.sample import ShapeObject, ShapesSample
from mmlens.data.shapes import IMAGE_SIZE, SPLIT_OFFSETS
from mmlens.errors import MmlensError, check_choice

GRID = 8  # 8 x 8 patches of 8 x 8 pixels
IGNORE = -100  # cross_entropy's ignore_index: "no label here"


@dataclass
class DomainSample(ShapesSample):
    """A :class:`~mmlens.data.sample.ShapesSample` that knows its domain.

    ``objects`` hold each object's box and mask (``colour`` is its tint,
    ``shape`` its kind: a letter, ``cell``, ``road`` ...), ``target_objects``
    the objects the answer depends on.

    Example:
        >>> from mmlens.data.domains import make_sample
        >>> make_sample("cells", "test", 1).domain
        'cells'
    """

    domain: str = ""


def check_split(split: str, index: int) -> int:
    """The seed of sample ``index`` of ``split``; a one-line error for bad input.

    Example:
        >>> check_split("val", 3)
        100000003
    """
    check_choice(split, sorted(SPLIT_OFFSETS), "split")
    if not 0 <= index < 100_000_000:
        raise MmlensError(f"sample index must be in [0, 1e8); got {index}")
    return SPLIT_OFFSETS[split] + index


def build_sample(module: ModuleType, split: str, index: int, question_type: str | None = None) -> DomainSample:
    """Sample ``index`` of ``split`` of one domain module (deterministic).

    Example:
        >>> from mmlens.data.domains import cells
        >>> build_sample(cells, "test", 0).id
        'cells-test-0'
    """
    rng = np.random.default_rng(check_split(split, index))
    types = module.QUESTION_TYPES
    if question_type is not None:
        check_choice(question_type, types, f"question type (for {module.NAME})")
    qtype = question_type or types[int(rng.integers(0, len(types)))]
    for _ in range(1000):  # a few scenes admit no question of a type
        scene = module.make_scene(rng)
        asked = module.ask(scene, qtype, rng)
        if asked is not None:
            break
    else:  # pragma: no cover - every domain finds one within a few tries
        raise MmlensError(f"{module.NAME}: no {qtype} question in 1000 scenes")
    prompt, answer, targets = asked
    image, objects = module.render(scene)
    meta = {"split": split, "index": index, "scene": scene, "domain": module.NAME}
    return DomainSample(id=f"{module.NAME}-{split}-{index}", image=image, prompt=prompt, answer=answer,
                        meta=meta, objects=objects, target_objects=targets, question_type=qtype,
                        domain=module.NAME)


def mask_object(kind: str, tint: str, mask: np.ndarray, size: str = "small") -> ShapeObject:
    """A :class:`ShapeObject` with the tight box of ``mask``.

    Example:
        >>> m = np.zeros((64, 64), bool); m[2:5, 3:9] = True
        >>> mask_object("road", "grey", m).box
        Box(x0=3, y0=2, x1=9, y1=5)
    """
    ys, xs = np.nonzero(mask)
    box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return ShapeObject(tint, kind, size, box, mask)


def box_mask(x0: int, y0: int, x1: int, y1: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean ``size x size`` mask of a box (ends exclusive, clipped to the image)."""
    m = np.zeros((size, size), dtype=bool)
    m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return m


def cover_labels(regions: list[tuple[np.ndarray, int]], grid: int = GRID, size: int = IMAGE_SIZE,
                 min_cover: float = 0.25) -> np.ndarray:
    """Per-patch class: the region covering most of each patch, ``-1`` when none covers ``min_cover``.

    Example:
        >>> cover_labels([(box_mask(0, 0, 16, 8), 3)])[0, :3].tolist()
        [3, 3, -1]
    """
    p = size // grid
    labels = np.full((grid, grid), -1, dtype=np.int64)
    best = np.full((grid, grid), min_cover * p * p - 1e-9)
    for mask, cls in regions:
        cover = mask.reshape(grid, p, grid, p).sum(axis=(1, 3))
        win = cover > best
        best = np.where(win, cover, best)
        labels[win] = cls
    return labels


def pick(rng: np.random.Generator, items: list) -> Any:
    """One item drawn uniformly, or None from an empty list."""
    return items[int(rng.integers(0, len(items)))] if items else None


def jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    """``rgb`` moved by up to ``amount`` per channel, clipped to 0-255."""
    noise = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + noise, 0, 255))  # type: ignore[return-value]


def free(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], gap: int) -> bool:
    """True when ``box`` keeps ``gap`` pixels from every placed box (all ``(x0, y0, x1, y1)``)."""
    x0, y0, x1, y1 = box
    return all(x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0
               for a0, b0, a1, b1 in placed)


def to_image(pixels: np.ndarray):
    """A float ``H x W x 3`` array as an RGB PIL image (rounded, clipped)."""
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
