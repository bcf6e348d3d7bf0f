"""The redundant pool: its layout, copies that differ a little, and the dataset spec."""

from __future__ import annotations

import numpy as np

from mmlens.audit.redundant_pool import DEFAULT, PoolLayout
from mmlens.data.readers import open_reader


def test_layout_ids_and_bases():
    pool = PoolLayout(bases=3, copies=4, unique=2)
    rows = [pool.sample(k) for k in range(pool.size)]
    assert pool.size == 14 and len({r.id for r in rows}) == 14
    assert [r.meta["base"] for r in rows[:4]] == [0, 0, 0, 0] and rows[-1].meta["base"] is None
    assert all(r.answer is not None for r in rows)


def test_copies_are_small_changes_of_one_scene_with_the_same_question():
    pool = PoolLayout(bases=5, copies=6, unique=1)
    first, copy, other = pool.sample(0), pool.sample(3), pool.sample(6)
    a, b, c = (np.asarray(s.image, float) for s in (first, copy, other))
    assert copy.prompt == first.prompt
    assert [o.colour + o.shape for o in copy.meta["scene"].objects] == \
           [o.colour + o.shape for o in first.meta["scene"].objects]
    assert 0 < np.abs(a - b).mean() < 0.25 * np.abs(a - c).mean()


def test_pool_is_a_dataset_and_deterministic():
    import mmlens.audit.redundant_pool  # noqa: F401  (registers the world)

    rows = list(open_reader(f"redundant-pool:train[{DEFAULT.size - 2}:{DEFAULT.size}]"))
    assert [r.id for r in rows] == [DEFAULT.sample(DEFAULT.size - 2).id, DEFAULT.sample(DEFAULT.size - 1).id]
    assert rows[0].image.tobytes() == DEFAULT.sample(DEFAULT.size - 2).image.tobytes()
