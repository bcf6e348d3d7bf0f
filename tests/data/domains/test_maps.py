"""Maps: roads, rivers and fields; answers follow the geometry."""

from __future__ import annotations

from mmlens.data.domains import make_sample, maps


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
