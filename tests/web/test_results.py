"""The explain endpoint's JSON against the explanation's own: the same numbers, read once per layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import mmlens
from mmlens.layout import Modality
from mmlens.web.results import explanation_json, position_grids, top_patch


@pytest.fixture(scope="module")
def explanations(shipped) -> list[mmlens.Explanation]:
    image = Image.open(mmlens.zoo.example_image())
    tiled = mmlens.load("tiny-idefics3")  # tiles and a global view: several views per image
    return [
        mmlens.explain(shipped, "<image> what colour is the circle ?", [image],
                       methods=["attention", "gradient_x_input"], max_new_tokens=2),
        mmlens.explain(shipped, "<image> what colour is the circle ?", [image], methods=["rollout"],
                       answer="red", foil="blue"),
        mmlens.explain(tiled, tiled.place_images("what colour ?", 1), [Image.new("RGB", (96, 64), "red")],
                       methods=["gradient_x_input"], max_new_tokens=2),
    ]


def reference_top(e: mmlens.Explanation, method: str, j: int) -> dict | None:
    """The strongest image token, found with torch over the whole sequence (the definition, not the fast path)."""
    values = e.scores[method][j].float().clone()
    image = e.layout.mask(Modality.IMAGE)[0]
    values[~image | ~torch.isfinite(values)] = -math.inf
    if not torch.isfinite(values).any():
        return None
    p = int(values.argmax())
    return {"image": int(e.layout.image[0, p]), "view": int(e.layout.view[0, p]), "row": int(e.layout.row[0, p]),
            "col": int(e.layout.col[0, p]), "position": p, "score": round(float(values[p]), 6)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_explanation_json_has_to_json_numbers(explanations, dtype):
    for e in explanations:
        e = mmlens.Explanation(**{**e.__dict__, "scores": {m: s.to(dtype) for m, s in e.scores.items()}})
        if dtype == torch.float64:  # off float32's grid: the prompt keeps float64, the grids float32, as to_json
            e.scores = {m: s + 1e-9 * torch.arange(s.numel(), dtype=dtype).reshape(s.shape) for m, s in e.scores.items()}
        got, recorded = explanation_json(e), e.to_json()
        assert {k: v for k, v in got["layout"].items() if k != "positions"} == recorded["layout"]
        for method, entry in recorded["methods"].items():
            assert got["methods"][method]["milliseconds"] == entry["milliseconds"]
            assert got["methods"][method]["signed"] == e.signed(method)
            for j, target in enumerate(entry["targets"]):
                mine = got["methods"][method]["targets"][j]
                assert mine["grids"] == target["images"] and mine["prompt"] == target["prompt"]
                assert (mine["position"], mine["image_share"]) == (target["position"], target["image_share"])
                assert mine["top"] == reference_top(e, method, j) == top_patch(e.layout, e.scores[method][j])


def test_position_grids_lay_out_every_image_token(explanations):
    for e in explanations:
        grids = position_grids(e.layout)
        positions = torch.arange(e.layout.seq_len, dtype=torch.float32)
        for i, info in enumerate(e.layout.images[0]):
            for v in range(len(info.views)):
                expected = e.layout.grid(positions, 0, i, v)
                got = np.array([[np.nan if p is None else p for p in row] for row in grids[i][v]], dtype=float)
                np.testing.assert_array_equal(got, expected)
        found = sorted(p for image in grids for view in image for row in view for p in row if p is not None)
        assert found == e.layout.image_positions(0).tolist()
    assert len(grids[0]) > 1  # the tiled model's image has several views


def test_top_patch_skips_non_finite_and_text_scores(explanations):
    e = explanations[0]
    scores = e.scores["attention"][0].clone()
    text = e.layout.text_positions(0)
    scores[text] = 1e6  # text tokens never count
    image = e.layout.image_positions(0)
    scores[image[0]] = math.inf
    scores[image[1]] = math.nan
    scores[image[2]] = 1e5
    assert top_patch(e.layout, scores)["position"] == int(image[2])
    scores[image] = math.nan
    assert top_patch(e.layout, scores) is None
