"""What the explanation report says: what was explained, one chip per image, visible newlines, 0-based numbers,
colour maps that put zero where the eye expects it."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pytest
from PIL import Image

import mmlens
from mmlens.report import overlay_figure, write_html_report
from mmlens.report.figures import visible_token
from mmlens.report.html import shaded_words, what_was_explained


@pytest.fixture(scope="module")
def forced(tiny_llava: mmlens.Model) -> mmlens.Explanation:
    pixels = np.random.default_rng(3).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return mmlens.explain(tiny_llava, prompt="<image> what colour ?", images=[Image.fromarray(pixels)],
                          methods=["rollout", "gradient_x_input"], answer="red", foil="blue")


@pytest.fixture(scope="module")
def page(forced, tmp_path_factory) -> str:
    return write_html_report(forced, tmp_path_factory.mktemp("forced") / "report.html").read_text(encoding="utf-8")


def test_report_says_what_was_explained(forced, page):
    lines = dict(what_was_explained(forced))
    assert lines["answer"].startswith(forced.model_answer) and "the model's own" in lines["answer"]
    assert lines["target"].startswith("red") and "teacher-forced" in lines["target"]
    assert lines["foil"].startswith("blue")
    for label, text in lines.items():
        assert f'<dt>{label}</dt><dd class="{label}">{text}</dd>' in html.unescape(page)
    assert "Target tokens</span>" in page
    assert forced.IMAGE_SHARE in html.unescape(page)  # the one definition, stated on the page


def test_images_and_tokens_are_numbered_from_zero(page, forced):
    assert "Sample 0" in page and "Sample 1" not in page
    assert "image 0 ·" in page and "image 1" not in page
    alts = re.findall(r'alt="(\w+) heatmap, token (\d+), image (\d+)"', page)
    assert {(token, image) for _, token, image in alts} == {("0", "0")}


@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-llava-next"])
def test_tiled_image_is_one_chip_with_its_tiles_on_hover(name, noise):
    model = mmlens.load(name)
    explanation = mmlens.explain(model, prompt="<image> what colour ?", images=[noise(300, 500)],
                                 methods=["rollout"], max_new_tokens=1)
    words = shaded_words(explanation, "rollout", 0)
    chips = [w for w in words if w["kind"] == "chip"]
    views = explanation.layout.images[0][0].views
    assert len(views) > 1 and len(chips) == 1
    share = explanation.image_share("rollout", 0)
    assert chips[0]["text"].startswith(f"image 0 · {100 * share:.0f}%")
    hover = chips[0]["title"].splitlines()
    assert len(hover) == 1 + len(views) and all(f"{v.kind} {k} (" in hover[1 + k] for k, v in enumerate(views))
    # Every view's share adds up to the image's.
    parts = [float(re.search(r"· (\d+)%$", line).group(1)) for line in hover[1:]]
    assert abs(sum(parts) - 100 * share) <= len(parts)
    shown = "".join(w["text"] for w in words)
    assert "\n" not in shown
    if name == "tiny-idefics3":  # its prompt puts newline tokens between tile rows
        assert "↵" in shown


def test_newlines_and_blanks_are_visible():
    assert visible_token("Ċ") == "↵" and visible_token("\n") == "↵" and visible_token("▁") == "␣"
    assert visible_token("▁red") == "red" and visible_token("▁red", strip=False) == " red"


def test_signed_maps_are_diverging_around_white_and_others_sequential_from_zero():
    image = Image.new("RGB", (16, 16), "green")
    signed = np.linspace(-1.0, 3.0, 256).reshape(16, 16)
    figure = overlay_figure(image, signed, "signed")
    shown = figure.axes[0].images[1]
    assert shown.get_cmap().name.startswith("RdBu_r") and shown.get_clim() == (-3.0, 3.0)
    assert np.allclose(shown.get_cmap()(0.5)[:3], 1.0, atol=0.06)  # zero is (near) white, not cyan
    positive = np.linspace(0.5, 2.0, 256).reshape(16, 16)
    shown = overlay_figure(image, positive, "positive").axes[0].images[1]
    assert shown.get_cmap().name.startswith("Reds") and shown.get_clim() == (0.0, 2.0)
    # A signed method keeps its diverging map even where one token's scores are all positive.
    shown = overlay_figure(image, positive, "forced", signed=True).axes[0].images[1]
    assert shown.get_cmap().name.startswith("RdBu_r") and shown.get_clim() == (-2.0, 2.0)


def test_words_and_table_take_non_finite_text_scores(forced, tmp_path):
    # A NaN on a prompt word is shown unshaded with zero width in the table, not an error.
    text = forced.layout.text_positions(0)
    scores = {m: s.clone() for m, s in forced.scores.items()}
    scores["rollout"][0, text[0]] = math.nan
    broken = mmlens.Explanation(**{**forced.__dict__, "scores": scores})
    words = [w for w in shaded_words(broken, "rollout", 0) if w["kind"] == "word"]
    assert len(words) == int((text <= broken.positions[0]).sum()) and words[0]["style"] == ""
    assert "nan" in words[0]["title"]
    page = write_html_report(broken, tmp_path / "report.html").read_text(encoding="utf-8")
    assert ">nan<" in page
