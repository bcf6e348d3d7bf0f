"""The world as a whole: domains, vocabulary, stage-1 labels, packed questions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmlens.data.domains import (
    DOMAINS, NAMES, PATCH_CLASSES, POOLED, domain_module, make_sample, more_questions, patch_labels,
    pooled_labels, question_types, vocabulary, world_sample,
)
from mmlens.errors import MmlensError


def test_four_domains_with_their_own_words() -> None:
    assert NAMES == ("shapes", "glyphs", "cells", "maps")
    answers = {d: {make_sample(d, "test", i).answer for i in range(80)} for d in NAMES}
    # every domain has answers no other domain gives (its own skill's words)
    for d in NAMES:
        others = set().union(*(answers[e] for e in NAMES if e != d))
        assert answers[d] - others, d
    vocab = vocabulary()
    assert all(w in vocab for d in NAMES for w in DOMAINS[d].WORDS)
    with pytest.raises(MmlensError, match="unknown domain"):
        domain_module("x-rays")


def test_image_statistics_differ_between_domains() -> None:
    means = {d: np.mean([np.asarray(make_sample(d, "test", i).image, float).mean((0, 1)) for i in range(20)], 0)
             for d in NAMES}
    for i, d in enumerate(NAMES):
        for e in NAMES[i + 1:]:
            assert np.abs(means[d] - means[e]).max() > 15, (d, e)


def test_world_sample_interleaves_domains() -> None:
    assert [world_sample("train", i).domain for i in range(8)] == list(NAMES) * 2
    assert world_sample("train", 6).id == "cells-train-6"


def test_every_question_type_occurs_with_several_answers() -> None:
    for d in NAMES:
        for qt in question_types(d):
            answers = Counter(make_sample(d, "val", i, qt).answer for i in range(60))
            assert len(answers) >= 2 and max(answers.values()) < 50, (d, qt, answers)


def test_stage1_labels_name_the_right_domain() -> None:
    for d in NAMES:
        s = make_sample(d, "test", 1)
        labels = patch_labels(s)
        assert labels.shape == (8, 8)
        assert {PATCH_CLASSES[k].split(".")[0] for k in labels[labels >= 0].tolist()} <= {d}
        pooled = pooled_labels(s)
        mine = [k.startswith(d + ".") for k in POOLED]
        assert (pooled[mine] >= 0).any() and (pooled[~np.asarray(mine)] == -100).all()
        assert all(v < POOLED[k] for k, v in zip(POOLED, pooled.tolist()))


def test_more_questions_are_distinct_and_answerable() -> None:
    for i in range(20):
        s = world_sample("train", i)
        extra = more_questions(s, 3, np.random.default_rng(i))
        prompts = [s.prompt] + [p for p, _ in extra]
        assert len(set(prompts)) == len(prompts) and all(a for _, a in extra)
