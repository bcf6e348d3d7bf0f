"""Shapes-world captions: grammar, word-to-object ground truth, scoring."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.data.captions import (
    CAPTION_PROMPT, NEW_WORDS, caption_of, make_caption_sample, parse_caption, relation, score_caption,
)
from mmlens.data.shapes import COLOURS, SHAPES, vocabulary
from mmlens.errors import MmlensError


@pytest.mark.parametrize("index", range(40))
def test_every_word_has_its_objects(index: int) -> None:
    s = make_caption_sample("train", index)
    c = s.meta["caption"]
    assert s.answer == c.text and s.prompt == CAPTION_PROMPT
    assert len(c.words) == len(c.refs) and sorted(c.order) == list(range(len(s.objects)))
    for word, refs in zip(c.words, c.refs):
        assert refs and all(0 <= r < len(s.objects) for r in refs)
        if word in COLOURS:
            assert refs == (refs[0],) and s.objects[refs[0]].colour == word
        elif word in SHAPES:
            assert refs == (refs[0],) and s.objects[refs[0]].shape == word
        elif word in ("left", "of", "above", "below"):
            p, q = refs
            assert relation(s.objects[p], s.objects[q]) == {"of": "left"}.get(word, word)
    # Objects are named left to right, each exactly once.
    xs = [s.objects[i].centre[0] for i in c.order]
    assert xs == sorted(xs)
    assert parse_caption(s.answer) == [(s.objects[i].colour, s.objects[i].shape) for i in c.order]


def test_relations_follow_geometry() -> None:
    seen = set()
    for index in range(300):
        s = make_caption_sample("train", index)
        c = s.meta["caption"]
        for a, b in zip(c.order, c.order[1:]):
            (ax, ay), (bx, by) = s.objects[a].centre, s.objects[b].centre
            word = relation(s.objects[a], s.objects[b])
            seen.add(word)
            if word == "left":
                assert bx - ax >= abs(by - ay)
            else:
                assert bx - ax < abs(by - ay) and (ay < by) == (word == "above")
    assert seen == {"left", "above", "below"}


def test_words_and_splits() -> None:
    words = {w for i in range(200) for w in make_caption_sample("train", i).answer.split()}
    words |= set(CAPTION_PROMPT.replace("<image>", "").split())
    assert words <= set(vocabulary()) | set(NEW_WORDS)
    assert set(NEW_WORDS) - {"of", "above", "below", "describe", "scene"} == set()
    a, b = make_caption_sample("test", 3), make_caption_sample("test", 3)
    assert a.answer == b.answer and a.image.tobytes() == b.image.tobytes()
    assert make_caption_sample("train", 3).image.tobytes() != a.image.tobytes()
    counts = {len(make_caption_sample("val", i).objects) for i in range(100)}
    assert counts == {1, 2, 3, 4}


def test_scoring() -> None:
    s = next(make_caption_sample("test", i) for i in range(50) if len(make_caption_sample("test", i).objects) >= 2)
    truth = s.answer
    assert score_caption(truth + " </s>", s.objects) == {
        "all_named": True, "named": len(s.objects), "objects": len(s.objects), "hallucinated": 0, "exact": True}
    first = truth.split(" ")[:3]  # only the first object
    partial = score_caption(" ".join(first), s.objects)
    assert not partial["all_named"] and partial["named"] == 1 and not partial["exact"]
    unused = next((c, sh) for c in COLOURS for sh in SHAPES if (c, sh) not in
                  [(o.colour, o.shape) for o in s.objects])
    extra = score_caption(truth + f" left of a {unused[0]} {unused[1]}", s.objects)
    assert extra["all_named"] and extra["hallucinated"] == 1 and not extra["exact"]
    assert parse_caption("red circle a blue") == []


def test_bad_input() -> None:
    with pytest.raises(MmlensError, match="unknown split"):
        make_caption_sample("dev", 0)
    with pytest.raises(MmlensError, match="index"):
        make_caption_sample("test", -1)
    with pytest.raises(MmlensError, match="at least one object"):
        caption_of([])
    assert np.asarray(make_caption_sample("test", 0).image).shape == (64, 64, 3)
