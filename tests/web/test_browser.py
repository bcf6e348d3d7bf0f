"""The pages in headless Chromium against a real uvicorn server on 127.0.0.1 (shared ``browser_page`` fixture)."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

import mmlens
from mmlens.data.shapes import QUESTION_TYPES
from mmlens.report.neurons import TOWERS

PROMPT = "<image> what colour is the circle ?"


def open_page(page, live, path: str):
    """Go to ``path``; the shared fixture refuses the network, so this server (and only it) is let through."""
    page.route(f"{live.url}/**", lambda route: route.continue_())
    page.goto(f"{live.url}{path}")
    page.wait_for_function("document.querySelectorAll('#example option').length > 1")


def ask(page, tokens: int = 2) -> None:
    """Upload the shipped example image, type the prompt, ask for ``tokens`` answer tokens, wait for the answer."""
    page.set_input_files("#upload", str(mmlens.zoo.example_image()))
    page.fill("#prompt", PROMPT)
    page.fill("#tokens", str(tokens))
    page.click("#ask")
    page.wait_for_selector("#token-strip button >> nth=1")


def heat_cells(shot: bytes, rows: int = 8, cols: int = 8) -> np.ndarray:
    """How red each patch of a heatmap screenshot is (red minus green at the cell's centre; grey image: 0)."""
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=float)
    border = (pixels.shape[1] - 256) / 2  # the canvas is 256 px, inside a 1 px border
    cell = 256 / cols
    out = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            y, x = int(border + (r + 0.5) * cell), int(border + (c + 0.5) * cell)
            out[r, c] = pixels[y, x, 0] - pixels[y, x, 1]
    return out


def test_ask_click_tokens_switch_methods_hover(browser_page, live):
    page = browser_page
    open_page(page, live, "/ask")
    ask(page)
    tokens = page.locator("#token-strip button").all_inner_texts()
    assert tokens == ["purple", "circle"]
    canvas = page.locator('canvas[data-m="attention"]')
    first = canvas.screenshot()
    page.click("#token-strip button >> nth=1")
    page.wait_for_selector('#heatmaps[data-token="1"]')
    second = canvas.screenshot()
    assert first != second  # the heatmap changed with the token
    assert "active" in page.locator("#token-strip button >> nth=1").get_attribute("class")

    # The reddest patch on screen is the one the API ranks first.
    input_id = page.evaluate("ask.input")
    body = {"input": input_id, "methods": ["attention"], "max_new_tokens": 2}
    data = httpx.post(f"{live.url}/api/explain", json=body, timeout=60).json()
    for shot, t in ((first, 0), (second, 1)):
        top = data["methods"]["attention"]["targets"][t]["top"]
        cells = heat_cells(shot)
        assert np.unravel_index(cells.argmax(), cells.shape) == (top["row"], top["col"])

    # Switching methods recolours the prompt words and marks the method.
    words = page.inner_html("#words")
    page.click('#method-strip button[data-m="rollout"]')
    assert "active" in page.locator('#method-strip button[data-m="rollout"]').get_attribute("class")
    assert page.inner_html("#words") != words and "rollout" in page.inner_text("#caption")

    # Hovering a patch shows its score and position.
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 1 + 16, box["y"] + 1 + 48)  # row 1, column 0 (cells are 32 px)
    assert "row 1, col 0" in page.inner_text("#patch") and "position" in page.inner_text("#patch")
    assert page.js_errors == []


def test_lens_page_and_tracing_with_progress(browser_page, live):
    page = browser_page
    open_page(page, live, "/inside")
    page.click("#ask")
    page.wait_for_selector("#lens:not([hidden])")
    assert page.locator("#word-grid span").count() == 64
    assert "purple" in page.inner_text("#lens-answer")
    page.fill("#layer", "0")
    page.dispatch_event("#layer", "input")
    assert page.inner_text("#layer-name") == "embed"
    page.click("#trace")
    page.wait_for_selector("#trace-result:not([hidden])", timeout=120_000)
    assert int(page.get_attribute("#trace-progress", "max")) > 1
    assert page.locator("#trace-figures img").count() == 3
    assert page.js_errors == []


def test_model_and_neurons_pages(browser_page, live):
    page = browser_page
    open_page(page, live, "/model")
    page.wait_for_function("document.getElementById('facts').children.length > 0")
    assert "llava" in page.inner_text("#facts")
    page.click("#ask")
    page.wait_for_selector("#layout:not([hidden])")
    assert page.locator("#positions span.image").count() == 64
    page.click("nav.pages >> text=Neurons")
    page.fill("#samples", "2")
    page.click("#find")
    page.wait_for_selector("#neurons:not([hidden])", timeout=120_000)
    assert page.locator("#neuron-figures img").count() >= 1
    # Domain neurons (checked by default): one row per question type, towers as columns, the most specific listed.
    assert page.locator("#domain-part").is_visible()
    assert page.locator("#domain-counts tr").count() == 1 + len(QUESTION_TYPES)
    assert page.locator("#domain-counts th").all_inner_texts() == ["domain", *TOWERS]
    assert page.locator("#domain-top tr").count() > 1
    # On two samples per type the most specific neurons fire alike in every domain, and the page says so.
    assert "of a possible 1.609" in page.inner_text("#domain-warning")
    # The strongest image neuron's top patches show first; a click on another decoder neuron shows its own.
    first = page.inner_text("#top-name")
    assert page.locator("#top-figure img").count() == 1 and page.locator("#top-patches tr").count() > 1
    picking = "pick({site: 'lm.L0.neurons', index: 0}); document.getElementById('busy').textContent"
    assert page.evaluate(picking).startswith("finding")  # not the last job's "done…"
    page.wait_for_selector("#busy", state="hidden")
    text_row = page.locator("#strongest tr.pick", has_text="text").first
    neuron = text_row.locator("td").nth(1).inner_text()
    text_row.click()
    page.wait_for_function(f"document.getElementById('top-name').textContent.includes({neuron!r})")
    assert page.inner_text("#top-name") != first and page.locator("#top-figure img").count() == 1
    assert page.js_errors == []


def test_errors_show_as_one_line(browser_page, live, tmp_path):
    page = browser_page
    open_page(page, live, "/ask")
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    page.set_input_files("#upload", str(notes))
    page.fill("#prompt", PROMPT)
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "not an image file (or an unsupported format): notes.png (422)"
    assert page.locator("#result").is_hidden()


def test_circuit_page_runs_and_shows_the_graph(browser_page, live, tmp_path):
    page = browser_page
    open_page(page, live, "/circuit")
    page.click("#ask")
    page.wait_for_selector("#circuit:not([hidden])", timeout=120_000)
    assert int(page.get_attribute("#circuit-progress", "max")) == 3
    graph = page.locator("#circuit-graph img")
    assert graph.count() == 1 and page.evaluate("document.querySelector('#circuit-graph img').naturalWidth") > 300
    shot = graph.screenshot(path=str(tmp_path / "circuit_graph.png"))
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=float)
    assert pixels.shape[0] > 300 and (pixels.std(axis=(0, 1)) > 10).all()  # a drawn figure, not a blank box
    assert page.locator("#components tr").count() == 1 + 20  # header, 4 layers x (4 heads + MLP)
    assert page.locator("#components td").nth(1).inner_text() in {f"L{i}.{p}" for i in range(4)
                                                                   for p in ("H0", "H1", "H2", "H3", "MLP")}
    assert "edges recover" in page.inner_text("#circuit-facts")
    assert page.js_errors == []


def wide_image(tmp_path, size=(256, 64)):
    """A wide picture in three bands (red, white, green), saved as PNG: its view is a centre crop on shapes-llava."""
    image = Image.new("RGB", size, "white")
    third = size[0] // 3
    image.paste((255, 0, 0), (0, 0, third, size[1]))
    image.paste((0, 128, 0), (size[0] - third, 0, size[0], size[1]))
    path = tmp_path / "wide.png"
    image.save(path)
    return path


def test_trace_runs_on_the_input_the_form_shows(browser_page, live, tmp_path):
    page = browser_page
    open_page(page, live, "/ask")
    page.set_input_files("#upload", str(wide_image(tmp_path)))  # /ask's input: the wide picture
    page.fill("#tokens", "1")
    page.click("#ask")
    page.wait_for_selector("#token-strip button")
    page.click("nav.pages >> text=Look inside")
    page.wait_for_function("document.querySelectorAll('#example option').length > 1")
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/api/trace") else None)
    page.click("#trace")  # without "Look inside": the form shows the shipped example, so that is what is traced
    assert page.evaluate("document.getElementById('trace').disabled")  # no second job from a second click
    page.wait_for_selector("#trace-result:not([hidden])", timeout=120_000)
    assert not page.evaluate("document.getElementById('trace').disabled")
    key = sent[0]["input"]
    traced = Image.open(io.BytesIO(httpx.get(f"{live.url}/api/inputs/{key}/image/0").content)).convert("RGB")
    example = Image.open(mmlens.zoo.example_image()).convert("RGB")
    assert traced.size == example.size and np.array_equal(np.asarray(traced), np.asarray(example))
    assert page.get_attribute("#trace-image", "src") == f"/api/inputs/{key}/image/0"
    facts = page.inner_text("#trace-input")
    assert PROMPT in facts and "purple" in facts and "corrupted" in facts
    assert page.js_errors == []


def test_word_grid_sits_on_the_views_box(browser_page, live, tmp_path):
    page = browser_page
    open_page(page, live, "/inside")
    page.set_input_files("#upload", str(wide_image(tmp_path)))
    page.fill("#prompt", PROMPT)
    page.click("#ask")
    page.wait_for_selector("#lens:not([hidden])")
    placed = page.evaluate("""() => {
        const stage = document.querySelector('#word-grid .stage'), cells = stage.querySelector('.cells');
        const image = inside.lens.images[0], zoom = parseFloat(stage.style.width) / image.size[1];
        return {box: image.views[0].box, height: parseFloat(stage.style.height) / zoom,
                cells: [cells.offsetLeft, cells.offsetTop, cells.offsetLeft + cells.offsetWidth,
                        cells.offsetTop + cells.offsetHeight].map(v => v / zoom)};
    }""")
    assert placed["box"] == [96.0, 0.0, 160.0, 64.0]  # the processor's centre crop of the 256 x 64 picture
    np.testing.assert_allclose(placed["cells"], placed["box"], atol=1.5)  # the words sit on the crop, not top-left
    assert abs(placed["height"] - 64) < 1  # and the picture keeps its shape
    assert page.locator("#word-grid .cells span").count() == 64
    assert page.js_errors == []


def test_ask_marks_old_results_and_names_refused_fields(browser_page, live, tmp_path):
    page = browser_page
    open_page(page, live, "/ask")
    ask(page)
    assert page.locator("#legend").is_visible() and "largest |score|" in page.inner_text("#legend")
    assert "strongest patch: image view 8×8, row" in page.inner_text("#caption")
    page.click("#ask")  # a new request: the old result is marked stale while it runs
    assert "stale" in page.get_attribute("#result", "class") and page.locator("#stale-note").is_visible()
    page.wait_for_function("!document.getElementById('result').classList.contains('stale')")
    assert page.locator("#stale-note").is_hidden()

    page.fill("#tokens", "0")  # refused by name, not ignored; the old result goes
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("answer tokens: ") and "(got 0)" in page.inner_text("#error")
    assert page.locator("#result").is_hidden()

    page.fill("#tokens", "1")
    page.fill("#prompt", "")  # an uploaded image with no question: no stand-in question
    page.click("#ask")
    page.wait_for_function("document.getElementById('error').textContent.startsWith('type a prompt')")
    page.set_input_files("#upload", [])
    page.select_option("#example", "")
    page.fill("#prompt", PROMPT)
    page.click("#ask")
    page.wait_for_function("document.getElementById('error').textContent.startsWith('choose an image file')")
    assert not page.evaluate("document.getElementById('ask').disabled")
    assert [e for e in page.js_errors if "422" not in e] == []  # the refused request is logged by the browser


def test_pages_fit_a_narrow_window(browser_page, live):
    page = browser_page
    page.set_viewport_size({"width": 420, "height": 900})
    open_page(page, live, "/ask")
    ask(page)
    wide = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    assert page.evaluate(wide)
    page.click("nav.pages >> text=Look inside")
    page.wait_for_function("document.querySelectorAll('#example option').length > 1")
    page.click("#ask")
    page.wait_for_selector("#lens:not([hidden])")
    assert page.evaluate(wide)
    for path in ("/circuit", "/neurons", "/model"):
        open_page(page, live, path) if path != "/neurons" else page.goto(f"{live.url}{path}")
        assert page.evaluate(wide), path
    assert page.js_errors == []
