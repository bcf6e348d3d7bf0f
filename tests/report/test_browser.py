"""Each HTML report, written the way its command writes it on the shipped model, works in a real browser.

The commands' functions are called in-process (same code as ``mmlens explain``,
``mmlens lens``, ``mmlens trace``) with small settings; the page opens from
``file://`` in headless chromium (see tests/browser.py), must raise no script
error nor reach for the network, and must show its figures. ``mmlens neurons``
writes PNGs and JSON only, no page; ``mmlens demo`` is ``mmlens explain``.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from mmlens.cli.explain import explain
from mmlens.cli.lens import lens
from mmlens.cli.trace import trace

VISIBLE_HEATMAP = "section.sample .view:not([hidden]) .overlays img"


def open_report(page, path: Path) -> None:
    assert path.is_file(), path
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")


def loaded_images(page, selector: str) -> list[int]:
    """naturalWidth of every image matched, after each has finished decoding."""
    return page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : 0)")


def check_screenshot(page, path: Path) -> None:
    """A full-page screenshot that is a real PNG with real content (not a blank or one-colour page)."""
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.width >= 800 and image.height >= 400, image.size
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 256  # heatmaps and text, not a flat page


def run_command(command, **given) -> None:
    """Call a typer command function as the command line would: every option not given takes its default."""
    import inspect

    import typer

    defaults = {name: p.default.default if isinstance(p.default, typer.models.ParameterInfo) else p.default
                for name, p in inspect.signature(command).parameters.items()}
    command(**{**defaults, **given})


def test_explain_report_switches_heatmap_on_token_and_method_click(browser_page, tmp_path):
    page = browser_page
    run_command(explain, method=["attention", "rollout"], max_new_tokens=2, out=tmp_path)
    open_report(page, tmp_path / "report.html")
    tokens = page.locator("section.sample button.tok")
    assert tokens.count() >= 2, "the report should show two answer tokens"
    shown = page.locator(VISIBLE_HEATMAP)
    assert shown.count() == 1 and shown.is_visible()
    assert all(width > 0 for width in loaded_images(page, "img")) and loaded_images(page, VISIBLE_HEATMAP)[0] > 0
    first = shown.get_attribute("src")

    tokens.nth(1).click()
    page.mouse.move(0, 0)  # leave the chip: the click pinned the second token, hover no longer decides
    assert "active" in (tokens.nth(1).get_attribute("class") or "")
    assert "active" not in (tokens.nth(0).get_attribute("class") or "")
    second = page.locator(VISIBLE_HEATMAP)
    assert second.count() == 1 and second.is_visible()
    assert second.get_attribute("src") != first
    assert "token 1" in second.get_attribute("alt")  # numbered from 0, like the files
    pinned = second.get_attribute("src")

    page.locator("section.sample button.method", has_text="rollout").click()
    page.mouse.move(0, 0)
    switched = page.locator(VISIBLE_HEATMAP)
    assert switched.count() == 1 and switched.get_attribute("src") not in (first, pinned)
    assert switched.get_attribute("alt").startswith("rollout heatmap, token 1")

    tokens.nth(0).hover()  # hovering previews the first token, leaving returns to the pinned one
    assert "token 0" in page.locator(VISIBLE_HEATMAP).get_attribute("alt")
    page.mouse.move(0, 0)
    assert "token 1" in page.locator(VISIBLE_HEATMAP).get_attribute("alt")

    check_screenshot(page, tmp_path / "explain_page.png")
    assert page.js_errors == []


def check_inside_page(page, path: Path, shot: Path, figures: int) -> None:
    """The page loads clean, shows at least ``figures`` decoded figures, each visible once scrolled to."""
    open_report(page, path)
    images = page.locator("section.inside figure img")
    assert images.count() >= figures
    assert all(width > 0 for width in loaded_images(page, "section.inside figure img"))
    for k in range(images.count()):  # the page has no controls: scroll through it instead
        images.nth(k).scroll_into_view_if_needed()
        assert images.nth(k).is_visible()
    assert page.locator("section.inside table tr").count() > 1
    check_screenshot(page, shot)
    assert page.js_errors == []


def test_lens_report_renders(browser_page, tmp_path):
    run_command(lens, top_k=3, window=1, out=tmp_path)
    check_inside_page(browser_page, tmp_path / "lens.html", tmp_path / "lens_page.png", figures=5)


def test_trace_report_renders(browser_page, tmp_path):
    components = ["resid", "mlp"]
    run_command(trace, corrupt="noise", noise=3.0, window=1, component=components, seed=0, out=tmp_path)
    check_inside_page(browser_page, tmp_path / "trace.html", tmp_path / "trace_page.png", figures=len(components))
