"""In a real browser: the explanation report shows what was explained, one chip per tiled image, visible newlines."""

from __future__ import annotations

from pathlib import Path

import mmlens
from mmlens.cli.samples import shipped_example
from mmlens.report import write_html_report
from tests.report.test_browser import check_screenshot, open_report

VISIBLE = "section.sample .view:not([hidden])"


def test_page_shows_the_models_answer_target_and_foil(browser_page, tmp_path):
    prompt, images = shipped_example("shapes-llava")
    explanation = mmlens.explain(mmlens.load("shapes-llava"), prompt=prompt, images=images,
                                 methods=["gradient_x_input"], answer="red", foil="blue")
    open_report(browser_page, write_html_report(explanation, tmp_path / "report.html"))
    facts = browser_page.locator("dl.explained")
    assert facts.is_visible()
    assert facts.locator("dd.answer").inner_text() == "purple (the model's own)"
    assert facts.locator("dd.target").inner_text().startswith("red (teacher-forced")
    assert facts.locator("dd.foil").inner_text().startswith("blue")
    assert browser_page.locator("section.sample .row .label", has_text="Target tokens").is_visible()
    assert "Image share: sum of |score|" in browser_page.locator("p.definition").inner_text()
    assert browser_page.locator(f"{VISIBLE} .overlays img").get_attribute("alt") == \
        "gradient_x_input heatmap, token 0, image 0"
    check_screenshot(browser_page, tmp_path / "forced.png")
    assert browser_page.js_errors == []


def test_tiled_image_is_one_chip_whose_hover_lists_tiles(browser_page, tmp_path, noise):
    model = mmlens.load("tiny-idefics3")
    explanation = mmlens.explain(model, prompt="<image> what colour ?", images=[noise(300, 500)],
                                 methods=["rollout"], max_new_tokens=1)
    open_report(browser_page, write_html_report(explanation, tmp_path / "tiles.html"))
    chips = browser_page.locator(f"{VISIBLE} .words .chip")
    assert chips.count() == 1
    views = explanation.layout.images[0][0].views
    assert chips.inner_text() == f"image 0 · {100 * explanation.image_share('rollout', 0):.0f}% · {len(views)} views"
    tiles = chips.locator(".tiles")
    assert not tiles.is_visible()
    chips.hover()  # hovering the chip lists the image's views, each with its share
    assert tiles.is_visible()
    hover = tiles.inner_text().splitlines()
    assert len(hover) == 1 + len(views) and hover[1].strip().startswith("tile 0")
    assert hover[-1].strip().startswith(f"global {len(views) - 1}")
    check_screenshot(browser_page, Path(tmp_path) / "tiles_hover.png")
    browser_page.mouse.move(0, 0)
    assert not tiles.is_visible()
    strip = browser_page.locator(f"{VISIBLE} .words")
    assert "↵" in strip.inner_text() and "\n" not in strip.inner_text().strip()
    line = browser_page.locator(f"{VISIBLE} .words span.word").first.bounding_box()["height"]
    assert strip.bounding_box()["height"] < 3 * line  # no blank rows from newline tokens
    check_screenshot(browser_page, Path(tmp_path) / "tiles.png")
    assert browser_page.js_errors == []
