"""Figures say what they show: colour-bar names, R² apart from accuracy, group labels, embedded pages."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import mmlens
from mmlens.audit import bye_filter
from mmlens.report.audit_pages import entropy_figure, plain_value, write_audit_page
from mmlens.report.figures import save_overlays
from mmlens.report.fingerprint_pages import fingerprint_page, probe_accuracy_figure, save_figure, score_figure
from mmlens.report.neurons import top_activations_figure
from mmlens.report.score_names import score_label


def test_r2_probes_get_their_own_axis_that_shows_negative_values():
    curves = {"colour": {"accuracy": [0.5, 0.9], "control": [0.2, 0.3]},
              "count (R^2)": {"accuracy": [-1.05, 0.4], "control": [-0.44, -7.0]}}
    figure = probe_accuracy_figure(curves)
    accuracy, r2 = figure.axes
    assert accuracy.get_ylabel() == "held-out accuracy" and r2.get_ylabel() == "held-out R²"
    assert r2.get_ylim()[0] < -1.05  # the negative R² is on the axis
    assert any(t.get_text() == "-7" for t in r2.texts)  # below the floor: marked with its value
    labels = [t.get_text() for t in r2.get_legend().get_texts()]
    assert "count" in labels and not any("count" in t.get_text() for t in accuracy.get_legend().get_texts())


def test_suspects_without_a_group_have_no_empty_parentheses():
    rows = [{"suspect": "pruned", "score": 0.9, "interval": [0.8, 1.0], "group": ""},
            {"suspect": "other", "score": 0.2, "interval": [0.1, 0.3], "group": "unrelated"}]
    axes = score_figure(rows, "t").axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["pruned", "other (unrelated)"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["unrelated"]


def test_fingerprint_page_embeds_its_figures(tmp_path):
    save_figure(score_figure([{"suspect": "s", "score": 0.5, "interval": [0.4, 0.6]}], "t"), tmp_path / "scores.png")
    rows = [{"suspect": "s", "probe_set": "off-task", "score": 0.5, "interval": [0.4, 0.6], "samples": 4, "dropped": 0}]
    page = fingerprint_page("v", rows, ["scores.png"], folder=tmp_path)
    assert 'src="data:image/png;base64,' in page and 'src="scores.png"' not in page


@pytest.fixture(scope="module")
def bye() -> tuple:
    rng = np.random.default_rng(0)
    h = rng.normal(3.0, 0.05, (200, 3))
    h[:20, 1] = rng.normal(1.0, 0.05, 20)
    return bye_filter(h, [f"s{i}" for i in range(200)]), h


def test_entropy_figure_has_labels_a_title_a_legend_and_the_cut(bye):
    result, h = bye
    figure = entropy_figure(result, h)
    assert figure.get_suptitle().startswith("BYE audit")
    assert all(axes.get_xlabel() and axes.get_ylabel() == "samples" for axes in figure.axes)
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert any(text.startswith("sensitive layer") for text in legend)
    assert any(text.startswith("cut: scores below") for text in legend)
    score_axes = figure.axes[-1]
    assert any(line.get_linestyle() == "--" for line in score_axes.lines)


def test_audit_page_is_self_contained_and_plain(bye, tmp_path):
    result, h = bye
    page = write_audit_page(tmp_path, result, h, None).read_text()
    assert "src='data:image/png;base64," in page and "src='entropy.png'" not in page
    assert "&quot;" not in page and "<td>L1</td>" in page
    assert plain_value(["L3", "L4"]) == "L3, L4" and plain_value(0.123456) == "0.1235"


def test_top_activations_figure_has_a_colour_bar():
    top = SimpleNamespace(site="lm.L0.neurons", index=3, values=np.array([2.0, 1.0]), sample_ids=["a", "b"],
                          images=[Image.new("RGB", (8, 8)), Image.new("RGB", (16, 8))],
                          heatmaps=[np.ones((8, 8)), np.zeros((8, 16))], patches=[(0, 1), (0, 0)],
                          boxes=[(4, 0, 8, 4), (0, 0, 4, 4)])
    figure = top_activations_figure(top)
    bar = figure.axes[-1]
    assert bar.get_ylabel() == "activation of lm.L0.neurons[3]"
    assert [image.get_clim() for axes in figure.axes[:-1] for image in axes.images[1:]] == [(0.0, 1.0)] * 2


@pytest.fixture(scope="module")
def explanation(tiny_llava: mmlens.Model) -> mmlens.Explanation:
    return mmlens.explain(tiny_llava, "<image> what colour ?", [Image.new("RGB", (40, 40), "red")],
                          methods=["attention", "gradient_x_input"], max_new_tokens=1)


def test_overlay_colour_bars_name_the_score(explanation, tmp_path, monkeypatch):
    from mmlens.report import figures

    labels = {}
    draw = figures.overlay_figure

    def recording(*args, **kwargs):
        figure = draw(*args, **kwargs)
        labels[args[2].split(" · ")[0]] = figure.axes[1].get_ylabel()
        return figure

    monkeypatch.setattr(figures, "overlay_figure", recording)
    save_overlays(explanation, tmp_path)
    assert labels["attention"] == "attention weight (mean over heads, layers)"
    assert labels["gradient_x_input"].startswith("gradient × input:") and "score of" in labels["gradient_x_input"]


def test_contrast_overlays_say_vs_in_title_and_file_name(explanation, tmp_path):
    contrast = dataclasses.replace(explanation, foil="blue")
    paths = save_overlays(contrast, tmp_path)
    assert paths and all("_vs_blue_img" in p.name for p in paths)
    assert score_label("gradient_x_input", "red", "blue") == "gradient × input: logit('red') − logit('blue')"
