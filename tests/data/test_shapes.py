"""The shapes world: determinism, geometry, ground truth and counterfactuals."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.data.sample import IMAGE_SLOT, ShapesSample
from mmlens.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    NUMBER_WORDS,
    QUESTION_TYPES,
    SHAPES,
    counterfactual,
    make_dataset,
    make_sample,
    patch_labels,
    render,
    vocabulary,
)

SAMPLES = make_dataset("test", 300)


def _pixels(s: ShapesSample) -> np.ndarray:
    return np.asarray(s.image).astype(int)


def test_deterministic_and_splits_differ() -> None:
    a, b = make_sample("train", 42), make_sample("train", 42)
    assert (a.prompt, a.answer, a.image.tobytes()) == (b.prompt, b.answer, b.image.tobytes())
    assert make_sample("test", 42).image.tobytes() != a.image.tobytes()
    assert len({s.image.tobytes() for s in SAMPLES}) == len(SAMPLES)


def test_variety() -> None:
    assert {s.question_type for s in SAMPLES} == set(QUESTION_TYPES)
    assert {s.meta["scene"].background for s in SAMPLES} == set(BACKGROUNDS)
    assert {len(s.objects) for s in SAMPLES} == {1, 2, 3, 4}
    assert {o.shape for s in SAMPLES for o in s.objects} == set(SHAPES)
    assert {o.colour for s in SAMPLES for o in s.objects} == set(COLOURS)
    assert {o.size for s in SAMPLES for o in s.objects} == {"small", "large"}


def test_objects_do_not_overlap_and_boxes_are_tight() -> None:
    for s in SAMPLES:
        total = np.zeros((64, 64), int)
        for o in s.objects:
            total += o.mask
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert total.max() == 1


def test_masks_agree_with_pixels() -> None:
    for s in SAMPLES[:100]:
        px = _pixels(s)
        scene = s.meta["scene"]
        for o, spec in zip(s.objects, scene.objects):
            assert (px[o.mask] == spec.rgb).all()
            nearest = min(COLOURS, key=lambda c: np.abs(np.subtract(COLOURS[c], spec.rgb)).sum())
            assert nearest == o.colour
        # Outside every mask the image is the bare background.
        bare, _ = render(type(scene)(scene.background, scene.base_rgb, scene.texture_seed, []))
        outside = ~np.any([o.mask for o in s.objects], axis=0)
        assert (px[outside] == np.asarray(bare).astype(int)[outside]).all()


def _expected(s: ShapesSample) -> str | None:
    """The answer recomputed from boxes and labels, independently of the generator."""
    q = s.meta["question"]
    hits = [i for i, o in enumerate(s.objects)
            if (q.colour in (None, o.colour)) and (q.shape in (None, o.shape))]
    if q.type == "exist":
        return "yes" if hits else "no"
    if q.type == "count":
        return NUMBER_WORDS[len(hits)]
    assert len(hits) == 1, "the referent of a generated question is unique"
    o = s.objects[hits[0]]
    if q.type == "colour":
        return o.colour
    if q.type == "shape":
        return o.shape
    x, y = o.centre
    if q.axis == "x":
        assert abs(x - 32) >= 6
        return "left" if x < 32 else "right"
    assert abs(y - 32) >= 6
    return "top" if y < 32 else "bottom"


def test_answers_and_targets_are_correct() -> None:
    vocab = set(vocabulary())
    for s in SAMPLES:
        assert s.prompt.startswith(IMAGE_SLOT + " ") and s.prompt.count(IMAGE_SLOT) == 1
        assert set(s.prompt.split()[1:]) <= vocab and s.answer in vocab
        assert s.answer == _expected(s), s.prompt
        q = s.meta["question"]
        for i, o in enumerate(s.objects):
            matches = q.colour in (None, o.colour) and q.shape in (None, o.shape)
            assert (i in s.target_objects) == matches


def test_exist_has_hard_negatives_and_balance() -> None:
    exist = make_dataset("test", 200, question_type="exist")
    answers = [s.answer for s in exist]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65
    hard = [s for s in exist if s.answer == "no"
            and any(o.colour == s.meta["question"].colour for o in s.objects)
            and any(o.shape == s.meta["question"].shape for o in s.objects)]
    assert len(hard) > 10


@pytest.mark.parametrize("kind", ["remove", "recolour"])
def test_counterfactuals_change_only_the_object(kind: str) -> None:
    for i in range(40):
        s = make_sample("test", i, question_type="colour")
        cf = counterfactual(s, kind)
        target = s.objects[s.target_objects[0]].mask
        changed = np.any(_pixels(s) != _pixels(cf), axis=-1)
        assert changed.any() and not changed[~target].any()
        if kind == "remove":
            assert cf.answer is None and len(cf.objects) == len(s.objects) - 1
        else:
            assert cf.answer not in (None, s.answer) and cf.answer == _expected(cf)


def test_removing_another_object_keeps_the_answer() -> None:
    for i in range(40):
        s = make_sample("test", i, question_type="count")
        others = [j for j in range(len(s.objects)) if j not in s.target_objects]
        if others:
            assert counterfactual(s, "remove", others[0]).answer == s.answer
        if s.target_objects:
            cf = counterfactual(s, "remove", s.target_objects[0])
            assert NUMBER_WORDS.index(cf.answer) == NUMBER_WORDS.index(s.answer) - 1


def test_patch_labels_follow_masks() -> None:
    for s in SAMPLES[:50]:
        colours, shapes = patch_labels(s.objects)
        assert ((colours >= 0) == (shapes >= 0)).all()
        for o in s.objects:
            cover = o.mask.reshape(8, 8, 8, 8).sum(axis=(1, 3))
            full = cover == 64  # a patch fully inside an object carries its labels
            assert (colours[full] == list(COLOURS).index(o.colour)).all()
            assert (shapes[full] == SHAPES.index(o.shape)).all()
