"""Overlay PNGs, data URIs and layer grids render headless and look as intended."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

import mmlens
from mmlens.report.figures import layer_grid_figure, overlay_figure, png_data_uri, safe_token, save_overlays

METHODS = ["attention", "rollout"]


@pytest.fixture(scope="module")
def explanation(tiny_llava: mmlens.Model) -> mmlens.Explanation:
    pixels = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return mmlens.explain(tiny_llava, "<image> and <image> what colour ?",
                          [Image.fromarray(pixels), Image.new("RGB", (40, 40), "red")], methods=METHODS,
                          max_new_tokens=2)


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def test_save_overlays_one_png_per_method_token_and_image(explanation, tmp_path):
    paths = save_overlays(explanation, tmp_path)
    tokens, images = len(explanation.answer_tokens), len(explanation.images)
    assert len(paths) == len(METHODS) * tokens * images == len(set(paths))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    for method in METHODS:
        for j, token in enumerate(explanation.answer_tokens):
            for i in range(images):
                assert tmp_path / f"{method}_t{j}_{safe_token(token)}_img{i}.png" in paths
    for path in paths:
        assert re.fullmatch(r"[A-Za-z_]+_t\d+_[A-Za-z0-9_]+_img\d+\.png", path.name)
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 200 <= image.width <= 1000 and 100 <= image.height <= 1000


def test_nan_region_shows_the_plain_image():
    green = (0, 128, 0)
    heatmap = np.full((40, 80), np.nan, dtype=np.float32)
    heatmap[:, 40:] = np.linspace(0.0, 1.0, 40)[None, :]  # left half uncovered
    figure = overlay_figure(Image.new("RGB", (80, 40), green), heatmap, "half", alpha=0.5)
    figure.canvas.draw()
    rendered = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)
    axes = figure.axes[0]

    def pixel(x: float, y: float) -> np.ndarray:  # data coordinates to a rendered pixel
        px, py = axes.transData.transform((x, y))
        return rendered[rendered.shape[0] - int(round(py)), int(round(px))]

    for x, y in [(10, 10), (20, 30), (30, 20)]:
        assert np.abs(pixel(x, y) - green).max() <= 3, "NaN pixels must show the image unchanged"
    for x, y in [(50, 10), (70, 30)]:
        assert np.abs(pixel(x, y) - green).max() > 20, "covered pixels must be tinted by the heatmap"


def test_overlay_rejects_a_heatmap_of_another_size():
    with pytest.raises(ValueError, match="heatmap of shape"):
        overlay_figure(Image.new("RGB", (32, 32)), np.zeros((16, 16)), "wrong")


def test_overlay_downsamples_big_images():
    figure = overlay_figure(Image.new("RGB", (2000, 1000)), np.random.rand(1000, 2000), "big", max_side=100)
    assert figure.axes[0].images[1].get_array().shape == (50, 100)


@pytest.mark.parametrize("source", ["figure", "floats", "uint8", "pil", "palette"])
def test_png_data_uri_decodes(source):
    if source in ("figure", "palette"):
        thing = layer_grid_figure(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], "t", "v")
    else:
        thing = {"floats": np.random.rand(5, 7, 3), "uint8": np.zeros((5, 7), dtype=np.uint8),
                 "pil": Image.new("RGB", (7, 5))}[source]
    image = _decode(png_data_uri(thing, palette=source == "palette"))
    assert image.format == "PNG"
    if source not in ("figure", "palette"):
        assert image.size == (7, 5)


def test_layer_grid_figure_shapes_and_labels():
    matrix = np.random.default_rng(0).normal(size=(6, 3))
    rows, cols = [f"L{i}" for i in range(6)], ["resid", "attn", "mlp"]
    figure = layer_grid_figure(matrix, rows, cols, "restored effect", "Δ probability")
    grid, bar = figure.axes
    assert grid.images[0].get_array().shape == (6, 3)
    assert [t.get_text() for t in grid.get_xticklabels()] == cols
    assert [t.get_text() for t in grid.get_yticklabels()] == rows
    assert grid.get_title() == "restored effect" and bar.get_ylabel() == "Δ probability"
    low, high = grid.images[0].get_clim()
    assert low == pytest.approx(-high)  # signed data is centred on zero
    figure.canvas.draw()
    width, height = figure.canvas.get_width_height()
    assert width > 200 and height > 200


def test_layer_grid_figure_thins_many_layer_labels_and_checks_sizes():
    figure = layer_grid_figure(np.random.rand(80, 2), [str(i) for i in range(80)], ["a", "b"], "t", "v")
    assert len(figure.axes[0].get_yticklabels()) == 40
    with pytest.raises(ValueError, match="labels"):
        layer_grid_figure(np.zeros((2, 2)), ["a"], ["x", "y"], "t", "v")


def test_safe_token():
    assert safe_token("▁red") == "red" and safe_token("?") == "tok" and safe_token("a/b c") == "a_b_c"
