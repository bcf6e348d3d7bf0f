"""Ground truth of each domain: the answer is what the image shows."""

from __future__ import annotations

import numpy as np

from mmlens.data.domains import cells, glyphs, make_sample, maps
from mmlens.data.domains import shapes as shapes_domain
from mmlens.data.shapes import make_sample as shapes_sample


def test_shapes_domain_is_the_shapes_world() -> None:
    for i in range(10):
        a, b = make_sample("shapes", "test", i), shapes_sample("test", i)
        assert (a.id, a.prompt, a.answer, a.image.tobytes()) == (b.id, b.prompt, b.answer, b.image.tobytes())
    assert len(shapes_domain.PATCH_CLASSES) == 20


def test_glyphs_boxed_letter_is_framed_and_ink_matches_the_bitmap() -> None:
    for i in range(30):
        s = make_sample("glyphs", "test", i, "boxed")
        page = s.meta["scene"]
        g = page.glyphs[page.boxed]
        assert s.answer == g.letter == s.objects[s.target_objects[0]].shape
        px = np.asarray(s.image).astype(int)
        ink = px[s.objects[s.target_objects[0]].mask].mean(0)
        paper = px[np.ones((64, 64), bool) & ~np.any([o.mask for o in s.objects], axis=0)].mean(0)
        assert (paper - ink).mean() > 100  # dark ink on light paper
        top = g.y - glyphs.PAD  # the frame's top line is ink
        assert np.abs(px[top, g.x:g.x + glyphs.GLYPH_W] - ink).max() < 60


def test_glyphs_first_letter_is_the_leftmost() -> None:
    for i in range(30):
        s = make_sample("glyphs", "test", i, "first")
        xs = [o.box.x0 for o in s.objects]
        assert s.objects[s.target_objects[0]].box.x0 == min(xs) and s.answer in glyphs.LETTERS


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


def test_maps_answers_follow_the_geometry() -> None:
    for i in range(40):
        s = make_sample("maps", "test", i)
        t = s.meta["scene"]
        if s.question_type == "field":
            x0, y0, x1, y1 = s.objects[s.target_objects[0]].box
            dx, dy = (x0 + x1) / 2 - 32, (y0 + y1) / 2 - 32
            side = ("east" if dx > 0 else "west") if abs(dx) > abs(dy) else ("south" if dy > 0 else "north")
            assert s.answer == side
        elif s.question_type == "orient":
            o = s.objects[s.target_objects[0]]
            wide = o.box.width > o.box.height
            assert s.answer == ("horizontal" if wide else "vertical")
        else:
            assert s.answer == ("yes" if t.road.orient != t.river.orient else "no")
    assert set(maps.SIDES) <= set(maps.WORDS)
