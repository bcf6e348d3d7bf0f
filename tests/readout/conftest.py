"""A small two-row batch with targets, shared by the readout and attribution tests."""

import pytest

from mmlens.readout import build_targets
from tests.conftest import noise_image

PROMPTS = ["<image> what colour is the circle ?", "<image> what shape ?"]


@pytest.fixture(scope="module")
def pair(tiny_llava):
    images = [[noise_image(64, 64, 1)], [noise_image(120, 200, 2)]]
    batch = tiny_llava.prepare(PROMPTS, images)
    return batch, images


@pytest.fixture(scope="module")
def targets(tiny_llava, pair):
    return build_targets(tiny_llava, pair[0], answer=["red circle", "square"])
