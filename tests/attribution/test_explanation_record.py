"""What an explanation says it explained: answers end where they end, target and foil are recorded, one image share."""

from __future__ import annotations

import json
import math

import pytest
import torch

import mmlens
from mmlens.cli.explain import _summary
from mmlens.cli.samples import shipped_example
from mmlens.readout.targets import DEFAULT_ANSWER_LENGTH, answer_length, greedy_answers, stop_token_ids


@pytest.fixture(scope="module")
def shapes() -> mmlens.Model:
    return mmlens.load("shapes-llava")


@pytest.fixture(scope="module")
def example() -> tuple[str, list]:
    return shipped_example("shapes-llava")


def test_the_shipped_model_answers_one_word(shapes, example):
    # It was trained on one-word answers and never emits </s>: its generation config records the length.
    assert answer_length(shapes) == 1 and shapes.hf.generation_config.max_new_tokens == 1
    prompt, images = example
    explanation = mmlens.explain(shapes, prompt=prompt, images=images, methods=["attention"])
    assert len(explanation.answer_tokens) == 1 and explanation.answer == "purple"
    assert explanation.model_answer == "purple" and not explanation.teacher_forced


def test_generation_stops_at_the_models_end_tokens(tiny_llama):
    batch = tiny_llama.prepare("a red circle")
    assert answer_length(tiny_llama) == DEFAULT_ANSWER_LENGTH
    free = tiny_llama.generate(batch, max_new_tokens=4)[0].tolist()
    config = tiny_llama.hf.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [free[2]]  # the generation config's own end token, not the tokenizer's
    try:
        assert free[2] in stop_token_ids(tiny_llama)
        explanation = mmlens.explain(tiny_llama, prompt="a red circle", images=[], methods=["attention"],
                                     max_new_tokens=4)
        cut = next(i for i, t in enumerate(free) if t == free[2])
        assert len(explanation.answer_tokens) == max(cut, 1)
    finally:
        config.eos_token_id = saved


def test_target_and_foil_are_recorded_with_the_models_own_answer(shapes, example):
    prompt, images = example
    forced = mmlens.explain(shapes, prompt=prompt, images=images, methods=["attention"], answer="red",
                            foil="blue")
    assert forced.answer == "red" and forced.target == "red" and forced.foil == "blue"
    assert forced.model_answer == greedy_answers(shapes, shapes.prepare(prompt, images))[0] == "purple"
    assert forced.teacher_forced
    payload = json.loads(json.dumps(forced.to_json()))
    assert {k: payload[k] for k in ("answer", "model_answer", "target", "foil", "teacher_forced")} == {
        "answer": "red", "model_answer": "purple", "target": "red", "foil": "blue", "teacher_forced": True}

    contrast = mmlens.explain(shapes, prompt=prompt, images=images, methods=["attention"], foil="blue")
    assert not contrast.teacher_forced and contrast.target is None and contrast.foil == "blue"
    assert contrast.model_answer == contrast.answer == "purple"


def test_terminal_report_and_json_share_one_image_share(tiny_llava, noise):
    explanation = mmlens.explain(tiny_llava, prompt="<image> what colour ?", images=[noise(48, 64)],
                                 methods=["rollout", "gradient_x_input"], max_new_tokens=2)
    payload = explanation.to_json()
    for method in explanation.methods:
        share = explanation.image_share(method, 0)
        assert 0.0 < share < 1.0
        assert _summary(explanation, method)[0] == f"{share:.0%}"
        assert math.isclose(payload["methods"][method]["targets"][0]["image_share"], share, abs_tol=1e-6)
        # The definition, by hand: |score| on image tokens over |score| on image and text tokens seen.
        scores = explanation.scores[method][0].abs()
        seen = torch.arange(scores.numel()) <= explanation.positions[0]
        image = seen & explanation.layout.mask(mmlens.Modality.IMAGE)[0]
        text = seen & explanation.layout.mask(mmlens.Modality.TEXT)[0]
        assert math.isclose(share, float(scores[image].sum() / scores[image | text].sum()), rel_tol=1e-5)
    assert "special tokens left out" in payload["image_share"] == explanation.IMAGE_SHARE
    assert not explanation.signed("rollout") and explanation.signed("gradient_x_input")


def test_json_is_strict_even_where_patch_grids_are_padded_with_nan(tiny_llava, noise):
    # LLaVA-NeXT's base and tile grids differ in size, so extras pad them with NaN; JSON has no NaN.
    explanation = mmlens.explain(tiny_llava, prompt="<image> what colour ?", images=[noise(48, 64)],
                                 methods=["rollout"], max_new_tokens=1)
    explanation.extras["rollout"] = {"patch_grids": torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])}
    explanation.milliseconds.pop("rollout", None)
    payload = json.loads(json.dumps(explanation.to_json(), allow_nan=False))
    assert payload["methods"]["rollout"]["extras"]["patch_grids"] == [[1.0, None], [None, 2.0]]
    assert payload["methods"]["rollout"]["milliseconds"] is None
