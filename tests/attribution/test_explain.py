"""explain(): batches, several images, JSON, and batch invariance."""

import json

import numpy as np

import mmlens
from mmlens.attribution.api import METHODS
from tests.conftest import noise_image

FAST = ["attention", "rollout", "relevancy", "gradient_x_input", "integrated_gradients", "occlusion", "logit_lens", "logit_lens_msea"]


def test_a_batch_explains_each_row_as_it_would_alone(tiny_llava):
    images = [[noise_image(64, 64, 1)], [noise_image(120, 200, 2)]]
    prompts = ["<image> what colour is the circle ?", "<image> what shape ?"]
    together = mmlens.explain_batch(tiny_llava, prompts, images, methods=FAST, answers=["red circle", "square"])
    alone = mmlens.explain(tiny_llava, prompts[1], images[1], methods=FAST, answer="square")
    second = together[1]
    assert second.answer_tokens == alone.answer_tokens == ["square"]
    for method in FAST:
        np.testing.assert_allclose(second.image_grid(method, 0), alone.image_grid(method, 0), rtol=1e-3, atol=1e-5,
                                   err_msg=method)
        ours = [s for _, s in second.prompt_scores(method, 0)]
        theirs = [s for _, s in alone.prompt_scores(method, 0)]
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5, err_msg=method)


def test_two_images_each_get_a_heatmap_and_json_round_trips(tiny_llava):
    images = [noise_image(64, 64, 1), noise_image(50, 90, 2)]
    explanation = mmlens.explain(tiny_llava, "<image> <image> same colour ?", images, methods=["rollout", "rise"],
                                 max_new_tokens=2, options={"rise": {"masks": 32}})
    maps = explanation.heatmaps("rise", 0)
    assert [m.shape for m in maps] == [(64, 64), (50, 90)]
    data = json.loads(json.dumps(explanation.to_json()))
    assert {"model", "prompt", "answer", "methods"} <= set(data)
    target = data["methods"]["rollout"]["targets"][0]
    assert len(target["images"]) == 2 and len(target["images"][0][0]) == 4  # 4x4 grid rows
    assert [w for w, _ in target["prompt"]][:2] == ["same", "colour"]
    assert data["answer"] == explanation.answer


def test_every_family_explains(tiny_llava):
    for name in ["tiny-qwen2-vl", "tiny-idefics3", "tiny-llava-next"]:
        model = mmlens.load(name)
        explanation = mmlens.explain(model, "<image> what colour ?", [noise_image(64, 96)], answer="red",
                                     methods=["relevancy", "integrated_gradients", "occlusion"])
        for method in explanation.methods:
            heat = explanation.heatmaps(method, 0)[0]
            assert heat.shape == (64, 96) and np.isfinite(heat).any(), (name, method)
        assert explanation.extras["integrated_gradients"]["completeness_error"].max() < 0.01, name


def test_unknown_method_is_a_clear_error(tiny_llava):
    import pytest

    with pytest.raises(mmlens.MmlensError, match="unknown method"):
        mmlens.explain(tiny_llava, "<image> hi", [noise_image(32, 32)], methods=["magic"])
    assert "rise" in METHODS
