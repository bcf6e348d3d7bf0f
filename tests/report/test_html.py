"""The HTML report is one self-contained file showing every method and answer token."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.report import write_html_report

METHODS = ["attention", "rollout"]


@pytest.fixture(scope="module")
def explanation(tiny_llava: mmlens.Model) -> mmlens.Explanation:
    pixels = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return mmlens.explain(tiny_llava, "<image> what colour ?", [Image.fromarray(pixels)], methods=METHODS,
                          max_new_tokens=2)


@pytest.fixture(scope="module")
def page(explanation, tmp_path_factory) -> str:
    path = write_html_report(explanation, tmp_path_factory.mktemp("report") / "report.html")
    assert path.name == "report.html" and list(path.parent.iterdir()) == [path]  # one file, nothing beside it
    return path.read_text(encoding="utf-8")


def test_page_is_self_contained(page):
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_page_shows_every_answer_token_and_method(page, explanation):
    for token in explanation.answer_tokens:
        assert html.escape(token.strip()) in page
    for method in METHODS:
        assert f'data-m="{method}"' in page and f">{method}</button>" in page
    assert html.escape(explanation.prompt) in page


def test_embedded_images_decode(page, explanation):
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    overlays = len(METHODS) * len(explanation.answer_tokens) * len(explanation.images)
    assert len(uris) == len(explanation.images) + overlays  # originals, then one overlay each
    for uri in uris:
        image = Image.open(io.BytesIO(base64.b64decode(uri)))
        image.load()
        assert image.format == "PNG" and min(image.size) > 8


def test_one_view_per_method_and_token_first_one_visible(page, explanation):
    views = re.findall(r'<div class="view" data-m="([^"]+)" data-t="(\d+)"( hidden)?>', page)
    assert len(views) == len(METHODS) * len(explanation.answer_tokens)
    assert [(m, t) for m, t, hidden in views if not hidden] == [(METHODS[0], "0")]


def test_several_samples_and_scalar_extras_in_captions(explanation, tmp_path):
    other = dataclasses.replace(explanation, extras={"attention": {"completeness_error": torch.tensor([0.0123, 0.5]),
                                                                   "per_layer": torch.zeros(2, 3, 9)}})
    page = write_html_report([explanation, other], tmp_path / "two.html").read_text(encoding="utf-8")
    assert 'id="sample-0"' in page and 'id="sample-1"' in page
    assert "completeness error 0.0123" in page and "completeness error 0.5" in page
    assert "per layer" not in page  # bulky tensors stay out of captions
    assert re.search(r"attention · \d+ ms per sample", page)
