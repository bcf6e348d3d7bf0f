from __future__ import annotations

import pytest

from mmlens.data.readers import WorldReader, open_reader, register_world
from mmlens.data.sample import Sample
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError


def test_shapes_world_by_split_and_range():
    reader = open_reader("shapes:train[4:7]")
    samples = list(reader)
    assert [s.id for s in samples] == ["shapes-train-4", "shapes-train-5", "shapes-train-6"]
    assert samples[0].prompt == make_sample("train", 4).prompt


def test_registered_world_and_clear_errors():
    from PIL import Image

    register_world("blank", lambda split, i: Sample(f"b{i}", Image.new("RGB", (8, 8)), "<image> hi"))
    assert [s.id for s in open_reader("blank:any[0:2]")] == ["b0", "b1"]
    with pytest.raises(MmlensError, match="unknown split"):
        WorldReader("shapes", "nope", 0, 3)
    with pytest.raises(MmlensError, match="empty range"):
        WorldReader("shapes", "test", 5, 2)


def test_multi_domain_world_by_split_and_range():
    reader = open_reader("domains:val[4:8]")
    samples = list(reader)
    assert [s.id.split("-")[0] for s in samples] == ["shapes", "glyphs", "cells", "maps"]
    assert all(s.id.endswith(f"-val-{i}") for s, i in zip(samples, range(4, 8)))
    assert all("<image>" in s.prompt and s.answer for s in samples)
