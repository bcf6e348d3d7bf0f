"""Model.prepare refuses what cannot run: empty prompts, prompts longer than the model's positions."""

import time

import pytest

import mmlens
from mmlens.errors import MmlensError
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def shapes_llava() -> mmlens.Model:
    return mmlens.load("shapes-llava")


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_an_empty_prompt_is_refused(tiny_llava, prompt):
    with pytest.raises(MmlensError, match="the prompt is empty"):
        tiny_llava.prepare(prompt, [noise_image(32, 32)])


def test_max_positions_reads_the_text_config(shapes_llava, tiny_llava):
    assert shapes_llava.max_positions == 256
    assert tiny_llava.max_positions == tiny_llava.hf.config.text_config.max_position_embeddings


def test_a_prompt_over_the_models_positions_is_refused(shapes_llava):
    prompt = "<image> " + " ".join(["red"] * 406)  # <s> + 64 image tokens + 406 words = 471 tokens
    with pytest.raises(MmlensError, match=r"471 tokens long \(64 of them image tokens\).*limit of 256"):
        shapes_llava.prepare(prompt, [noise_image(64, 64)])
    shapes_llava.prepare("<image> " + " ".join(["red"] * 191), [noise_image(64, 64)])  # 256: fits


def test_a_huge_prompt_fails_fast(shapes_llava):
    start = time.perf_counter()
    with pytest.raises(MmlensError, match="over shapes-llava's limit of 256 positions"):
        shapes_llava.prepare("<image> " + " ".join(["red"] * 50_000), [noise_image(64, 64)])
    assert time.perf_counter() - start < 10  # tokenising only: no forward pass, no 40 GB attention matrix


def test_an_answer_past_the_positions_is_refused_or_cut(shapes_llava):
    batch = shapes_llava.prepare("<image> " + " ".join(["red"] * 189), [noise_image(64, 64)])  # 254 tokens
    with pytest.raises(MmlensError, match="with its answer is 257 tokens long"):
        shapes_llava.append_tokens(batch, batch.input_ids[:, :3])
    assert shapes_llava.generate(batch, max_new_tokens=8).shape[1] <= 2
