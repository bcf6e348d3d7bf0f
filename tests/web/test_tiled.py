"""The pages over a tiled model (tiny-llava-next: a global view and tiles per image), in headless Chromium."""

from __future__ import annotations

from typing import Iterator

import pytest

from mmlens.web import create_app
from mmlens.web.live import LiveServer
from tests.web.test_browser import PROMPT, open_page, wide_image


@pytest.fixture(scope="module")
def tiled() -> Iterator[LiveServer]:
    with LiveServer(create_app("tiny-llava-next")) as server:
        yield server


def test_every_view_is_drawn_and_named(browser_page, tiled, tmp_path):
    page = browser_page
    open_page(page, tiled, "/ask")
    page.wait_for_function("document.querySelectorAll('.method-choice:checked').length === 3")
    page.set_input_files("#upload", str(wide_image(tmp_path, (240, 60))))
    page.fill("#prompt", PROMPT)
    page.fill("#tokens", "1")
    page.click("#ask")
    page.wait_for_selector("#heatmaps canvas")
    views = page.evaluate("ask.data.layout.images[0].views.map(v => v.kind + ' view ' + v.grid.join('×'))")
    assert len(views) == 2 and views[0].startswith("global")
    figure = page.locator('#heatmaps figure[data-m="attention"]')
    assert figure.locator("canvas").count() == 2  # every view, not only the first
    assert figure.locator(".view-name").all_inner_texts() == views
    assert page.locator("#heatmaps canvas").count() == 3 * 2
    caption = page.inner_text("#caption")
    assert "strongest patch: " in caption and any(v in caption for v in views)  # which view it refers to
    tile = figure.locator('canvas[data-view="1"]')
    box = tile.bounding_box()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
    assert views[1] in page.inner_text("#patch")

    page.click("nav.pages >> text=Look inside")
    page.wait_for_function("document.querySelectorAll('#example option').length > 1")
    page.set_input_files("#upload", str(wide_image(tmp_path, (240, 60))))
    page.fill("#prompt", PROMPT)
    page.click("#ask")
    page.wait_for_selector("#lens:not([hidden])")
    stages = page.locator("#word-grid .stage")
    assert stages.count() == 2
    for k in range(2):  # each view's words cover the whole wide picture (its box), not its left quarter
        stage, cells = stages.nth(k).bounding_box(), stages.nth(k).locator(".cells").bounding_box()
        assert abs(cells["width"] - (stage["width"] - 2)) < 2 and stage["width"] > 3 * stage["height"]
    assert page.js_errors == []
