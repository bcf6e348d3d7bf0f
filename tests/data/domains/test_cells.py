"""Cells: stained and clear cells; counts follow the image."""

from __future__ import annotations

import numpy as np

from mmlens.data.domains import cells, make_sample


def test_cells_counts() -> None:
    for i in range(30):
        s = make_sample("cells", "test", i, "stained")
        kinds = [o.colour for o in s.objects]
        assert s.answer == str(kinds.count("stained")) and all(kinds[t] == "stained" for t in s.target_objects)
        px = np.asarray(s.image).astype(int)
        for o in s.objects:  # stained cells are dark, clear ones pale inside
            inner = px[o.mask].mean()
            assert inner < 130 if o.colour == "stained" else inner > 170
    assert {make_sample("cells", "test", i, "count").answer for i in range(60)} == set(cells.DIGITS[1:])
