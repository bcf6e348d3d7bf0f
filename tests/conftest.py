"""Shared fixtures: tiny models are built once per test session (all offline)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mmlens  # noqa: E402
from tests.browser import browser_page, chromium_browser  # noqa: E402, F401

# Tiny models run far faster on one thread than fighting over two busy cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llava() -> mmlens.Model:
    return mmlens.load("tiny-llava")


@pytest.fixture(scope="session")
def tiny_llama() -> mmlens.Model:
    return mmlens.load("tiny-llama")


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A random-noise RGB image: every patch differs from every other."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def noise() -> type:
    return noise_image
