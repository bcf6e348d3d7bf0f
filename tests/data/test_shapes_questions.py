"""What a shapes-world question asks about: the object's pixels and words."""

import numpy as np
from PIL import Image

from mmlens.data.sample import Sample
from mmlens.data.shapes import make_sample
from mmlens.data.shapes_questions import object_region, object_words, prompt_object_words, sample_from_source


def test_object_region_is_the_asked_objects_mask():
    s = make_sample("test", 0, "colour")
    target = s.objects[s.target_objects[0]]
    assert np.array_equal(object_region(s), target.mask)
    assert object_words(s) == [target.shape]


def test_samples_without_an_asked_object():
    plain = Sample(id="a", image=Image.new("RGB", (8, 8)), prompt="<image> hi")
    assert object_region(plain) is None and object_words(plain) == []
    absent = next(s for s in (make_sample("test", i, "exist") for i in range(40)) if s.answer == "no")
    assert object_region(absent) is None
    assert object_words(absent) == prompt_object_words(absent.prompt)


def test_prompt_words_and_sources():
    assert prompt_object_words("<image> is there a red circle ?") == ["red", "circle"]
    assert prompt_object_words("<image> how many crosses ?") == []
    s = sample_from_source("mmlens.data.shapes.make_sample('test', 13, 'colour')")
    assert s.id == "shapes-test-13" and s.question_type == "colour"
    assert sample_from_source("a photo of a cat") is None
