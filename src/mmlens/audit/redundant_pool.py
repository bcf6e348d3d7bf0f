"""A redundant training pool for data-selection checks: ``redundant-pool:train[0:5000]``.

Most of the pool is a few hundred shapes-world scenes, each repeated
``copies`` times with small changes (every object moved by up to
``shift`` pixels where it still fits, its colour re-jittered by up to 6 per
channel; same background, same question); the rest are unique scenes seen
once. A random subset keeps every repeated scene but loses most unique ones;
a selection that drops near-duplicates can keep them all.

Row ``k`` of the default layout (:data:`DEFAULT`): rows
``0 .. bases * copies - 1`` are the copies (base ``k // copies``, copy
``k % copies``), the remaining ``unique`` rows the unique scenes.
``meta["base"]`` names a row's scene (``None`` for a unique one) and
``meta["copy"]`` its copy number. Scenes come from train-split seeds from
:data:`POOL_BASE` on, which no zoo model trained on.

Example:
    >>> pool = PoolLayout(bases=2, copies=3, unique=1)
    >>> [pool.sample(k).meta["base"] for k in range(pool.size)]
    [0, 0, 0, 1, 1, 1, None]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mmlens.data.readers.worlds import register_world
from mmlens.data.sample import Sample
from mmlens.data.shapes import (IMAGE_SIZE, SIZES, SPLIT_OFFSETS, Scene, _build, _fits, _jitter, answer_question,
                                make_question, make_scene, QUESTION_TYPES)

POOL_BASE = 97_000_000  # train-split seeds of the pool (zoo recipes use < 9.7e7)
WORLD = "redundant-pool"


def _scene_and_question(seed: int):
    """A scene and a question about it from one seed (as ``make_sample`` draws them)."""
    rng = np.random.default_rng(SPLIT_OFFSETS["train"] + seed)
    qtype = QUESTION_TYPES[int(rng.integers(0, len(QUESTION_TYPES)))]
    while True:  # a few scenes admit no question of a type
        scene = make_scene(rng)
        q = make_question(scene, qtype, rng)
        if q is not None:
            return scene, q


def perturb(scene: Scene, rng: np.random.Generator, shift: int = 2) -> Scene:
    """The same scene with each object moved by up to ``shift`` px (where it still fits) and its colour re-jittered.

    Example:
        >>> s = make_scene(np.random.default_rng(3))
        >>> t = perturb(s, np.random.default_rng(4))
        >>> [o.colour for o in t.objects] == [o.colour for o in s.objects]
        True
    """
    placed = []
    for o in scene.objects:
        s = SIZES[o.size]
        dx, dy = (int(v) for v in rng.integers(-shift, shift + 1, size=2))
        x, y = o.x + dx, o.y + dy
        others = placed + [p for p in scene.objects[len(placed) + 1:]]
        if not (1 <= x < IMAGE_SIZE - s and 1 <= y < IMAGE_SIZE - s and _fits(x, y, s, others)):
            x, y = o.x, o.y  # a move that would leave the image or touch a neighbour is skipped
        placed.append(replace(o, x=x, y=y, rgb=_jitter(o.rgb, rng, 6)))
    return replace(scene, objects=placed)


@dataclass(frozen=True)
class PoolLayout:
    """How many scenes are repeated (``bases``), how often (``copies``) and how many are unique.

    The defaults (2,400 rows) are the pool of ``benchmarks/prism.py``.
    """

    bases: int = 200
    copies: int = 10
    unique: int = 400
    shift: int = 2

    @property
    def size(self) -> int:
        """Rows in the pool."""
        return self.bases * self.copies + self.unique

    def sample(self, k: int) -> Sample:
        """Row ``k`` of the pool (deterministic).

        Example:
            >>> PoolLayout(bases=1, copies=2, unique=0).sample(1).id
            'pool-b0000-c01'
        """
        if not 0 <= k < self.size:
            raise ValueError(f"row {k} is outside the pool (0 .. {self.size - 1})")
        repeated = self.bases * self.copies
        if k < repeated:
            base, copy = divmod(k, self.copies)
            scene, q = _scene_and_question(POOL_BASE + base)
            if copy:  # copy 0 is the scene itself
                moved = perturb(scene, np.random.default_rng([POOL_BASE + base, copy]), self.shift)
                # a position question whose object moved into the middle band keeps the unmoved layout
                scene = moved if answer_question(moved, q)[0] is not None else scene
            sample_id, meta = f"pool-b{base:04d}-c{copy:02d}", {"base": base, "copy": copy}
        else:
            u = k - repeated
            scene, q = _scene_and_question(POOL_BASE + self.bases + u)
            sample_id, meta = f"pool-u{u:05d}", {"base": None, "copy": 0}
        return _build(sample_id, scene, q, {**meta, "split": "train", "row": k})


DEFAULT = PoolLayout()


def pool_sample(split: str, k: int) -> Sample:
    """Row ``k`` of the default pool; the world function behind ``redundant-pool:train[a:b]``."""
    if split != "train":
        raise ValueError(f"the redundant pool has only a train split, not {split!r}")
    return DEFAULT.sample(k)


register_world(WORLD, pool_sample)
