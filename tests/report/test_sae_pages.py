"""SAE latent pages: crops with heat, the page files, and the pages in headless chromium (index, one latent)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmlens.report.sae_pages import heat_crop, latent_page_name, write_sae_pages
from mmlens.sae.codes import store_samples
from mmlens.sae.dashboard import build_dashboards, unembedding_of
from mmlens.sae.labels import concept_table
from mmlens.store import Store
from tests.report.test_browser import check_screenshot, loaded_images, open_report
from tests.sae.shapes_fixtures import concept_sae, shapes_model, shapes_store  # noqa: F401


@pytest.fixture(scope="module")
def pages(shapes_store, concept_sae, shapes_model, tmp_path_factory):
    sae, _ = concept_sae
    store = Store.open(shapes_store)
    load = store_samples(store)
    boards = build_dashboards(sae, store, [0, 6, 12], unembedding=unembedding_of(shapes_model),
                              concepts=concept_table(store.tokens, load), n_images=5)
    folder = tmp_path_factory.mktemp("sae-pages")
    return write_sae_pages(boards, folder, load, facts={"site": sae.site}), boards


def test_heat_crop_colours_only_active_patches_and_outlines_the_top_one():
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    heat = np.zeros((8, 8))
    heat[0, 0] = 2.0
    crop = np.asarray(heat_crop(image, heat, (0, 0), scale=2.0, crop_patches=2, side=64))
    assert crop.shape == (64, 64, 3)
    hot, cold = crop[8:24, 8:24], crop[40:56, 40:56]  # inside the top patch, inside an inactive one
    assert hot[..., 0].mean() > hot[..., 2].mean() + 40  # red over grey
    assert (cold == 128).all()  # untouched
    assert (crop[0, :32] < 40).all()  # black outline along the top patch


def test_index_links_every_latent_page(pages):
    index, boards = pages
    html = index.read_text()
    for board in boards:
        assert f'href="{latent_page_name(board.latent)}"' in html
        assert (index.parent / latent_page_name(board.latent)).is_file()
    assert "colour:red" in html  # latent 0's label


def test_pages_in_a_browser(browser_page, pages, tmp_path):
    index, boards = pages
    page = browser_page
    open_report(page, index)
    assert page.locator("table.latents tr").count() == 1 + len(boards)
    page.locator("table.latents a", has_text="0").first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith(latent_page_name(0))
    crops = page.locator("figure.crop img")
    assert crops.count() == len(boards[0].top_images) >= 3  # one crop per sample holding red (at most 5)
    assert all(width > 0 for width in loaded_images(page, "figure.crop img"))
    assert all(width > 0 for width in loaded_images(page, "img.histogram"))
    label = page.locator("p.label")
    assert label.is_visible() and label.inner_text().startswith("colour:red")
    assert page.locator("table.promoted tr").count() == 1 + len(boards[0].promoted)
    check_screenshot(page, tmp_path / "latent.png")
    open_report(page, index.parent / latent_page_name(12))  # a latent that never fires says so
    assert page.get_by_text("no image patch activates this latent").is_visible()
    assert page.js_errors == []
