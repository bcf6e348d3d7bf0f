"""Shapes-world samples on the tiny LLaVA, shared by the causal tests."""

import pytest

from mmlens.data.shapes import make_sample


@pytest.fixture(scope="module")
def samples():
    return [make_sample("test", 0, "colour"), make_sample("test", 1, "shape")]


@pytest.fixture(scope="module")
def clean(tiny_llava, samples):
    return tiny_llava.prepare([s.prompt for s in samples], [[s.image] for s in samples])
