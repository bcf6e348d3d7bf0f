"""MMEL-style aggregation: the weighted combination, weights as JSON, fitting on validation samples, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmlens
from mmlens.attribution.grad_eclip import tower_maps
from mmlens.attribution.mmel import SHIPPED, LayerWeights, combine, fit_layer_weights, load_weights, mmel
from mmlens.data.shapes import make_sample
from mmlens.readout import build_targets
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def shapes():
    return mmlens.load("shapes-llava")


@pytest.fixture(scope="module")
def colour(shapes):
    sample = make_sample("val", 0, "colour")
    batch = shapes.prepare(sample.prompt, [sample.image])
    return sample, build_targets(shapes, batch, answer=sample.answer)


def test_combine_scales_each_layer_to_its_maximum_per_row_and_target():
    a = torch.tensor([[[[[1.0, 3.0]]]], [[[[2.0, 0.0]]]]])  # (rows 2, targets 1, views 1, 1, 2)
    b = torch.tensor([[[[[5.0, 0.0]]]], [[[[0.0, 8.0]]]]])
    out = combine({0: a, 2: b}, [0, 2], [0.25, 0.75])
    torch.testing.assert_close(out[0].flatten(), torch.tensor([0.25 / 3 + 0.75, 0.25]))
    torch.testing.assert_close(out[1].flatten(), torch.tensor([0.25, 0.75]))


def test_mmel_is_the_weighted_sum_of_the_layers_grad_eclip_maps(shapes, colour):
    _, targets = colour
    weights = LayerWeights("shapes-llava", [0, 2], [0.3, 0.7])
    result = mmel(shapes, targets, weights)
    maps = tower_maps(shapes, targets, [0, 2])
    expected = sum(w * maps.grids[i] / maps.grids[i].flatten(2).amax(-1)[..., None, None, None]
                   for i, w in zip([0, 2], [0.3, 0.7]))
    torch.testing.assert_close(result.extras["patch_grids"], expected)
    assert result.extras["layers"] == [0, 2]
    assert float(result.scores.sum()) == pytest.approx(float(expected.sum()), rel=1e-5)


def test_weights_round_trip_through_json_and_the_shipped_file_loads(tmp_path, shapes, colour):
    path = LayerWeights("m", [1, 2], [0.5, 0.5], score=0.2).save(tmp_path / "w.json")
    LayerWeights("other", [0], [1.0]).save(path)  # several models share one file
    assert set(json.loads(path.read_text())) == {"m", "other"}
    assert load_weights("m", path).layers == [1, 2]
    shipped = load_weights("shapes-llava")
    assert shipped is not None and SHIPPED.exists() and abs(sum(shipped.weights) - 1) < 1e-5
    assert mmel(shapes, colour[1]).extras["layers"] == shipped.layers  # the shipped weights are the default


def test_without_weights_the_layers_that_reach_the_answer_weigh_equally(tiny_llava):
    targets = build_targets(tiny_llava, tiny_llava.prepare("<image> what ?", [noise_image(64, 64)]), answer="red")
    result = mmel(tiny_llava, targets)
    assert result.extras["layers"] == [0] and result.extras["weights"] == [1.0]  # tiny-llava reads layer 0 only


def test_fitting_on_val_samples_never_scores_below_uniform_weights(shapes):
    samples = [make_sample("val", i, ("colour", "shape")[i % 2]) for i in range(6)]
    fitted = fit_layer_weights(shapes, [s.prompt for s in samples], [s.image for s in samples],
                               [s.answer for s in samples], [s.target_mask() for s in samples], batch_size=3)
    assert fitted.layers == [0, 1, 2] and fitted.samples == 6
    assert min(fitted.weights) >= 0 and sum(fitted.weights) == pytest.approx(1.0, abs=1e-5)
    assert fitted.score >= fitted.uniform_score - 1e-9 and 0 < fitted.score <= 1


def test_bad_weights_are_one_line(tmp_path, shapes, colour):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cases = [
        (lambda: load_weights("shapes-llava", bad), "is not JSON"),
        (lambda: load_weights("shapes-llava", tmp_path / "none.json"), "no MMEL weights file"),
        (lambda: LayerWeights.from_json({"model": "m", "layers": [0], "weights": [0.5, 0.5]}), "one weight per layer"),
        (lambda: LayerWeights.from_json({"model": "m", "layers": [0], "weights": [-1.0]}), "non-negative"),
        (lambda: LayerWeights.from_json({"model": "m", "layers": [0]}), "weights"),
        (lambda: mmel(shapes, colour[1], LayerWeights("shapes-llava", [7], [1.0])), "tower has 3 layers"),
        (lambda: fit_layer_weights(shapes, ["a"], [], ["b"], [np.zeros((2, 2), bool)]), "as many prompts"),
    ]
    for call, message in cases:
        with pytest.raises(mmlens.MmlensError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_anyres_towers_combine_and_fit_like_any_other():
    # LLaVA-OneVision: base view plus unpadded tiles; both layers reach the answer (it reads the last one).
    model = mmlens.load("tiny-llava-onevision")
    images = [noise_image(16, 64), noise_image(64, 48, 1)]
    batch = model.prepare(["<image> what ?"] * 2, [[image] for image in images])
    result = mmel(model, build_targets(model, batch, answer=["red", "blue"]))
    assert result.extras["layers"] == [0, 1] and result.extras["patch_shapes"][0] == [[4, 4], [2, 8]]
    total = float(torch.nansum(result.extras["patch_grids"]))
    assert total > 0 and float(result.scores.sum()) == pytest.approx(total, rel=1e-5)
    masks = [np.zeros(image.size[::-1], dtype=bool) for image in images]
    for mask in masks:
        mask[:8, :16] = True
    fitted = fit_layer_weights(model, ["<image> what ?"] * 2, images, ["red", "blue"], masks)
    assert fitted.layers == [0, 1] and sum(fitted.weights) == pytest.approx(1.0, abs=1e-5)
