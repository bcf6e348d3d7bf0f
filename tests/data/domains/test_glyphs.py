"""Glyphs: letters on a page; the answer is what the page shows."""

from __future__ import annotations

import numpy as np

from mmlens.data.domains import glyphs, make_sample


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
