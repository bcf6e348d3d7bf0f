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


def test_one_image_alone_is_a_list_of_one(tiny_llava, tmp_path):
    import numpy as np
    import torch

    path = tmp_path / "noise.png"
    noise_image(64, 64).save(path)
    expected = tiny_llava.prepare("<image> what ?", [path]).input_ids
    for one in (path, str(path), noise_image(64, 64), np.asarray(noise_image(64, 64)),
                torch.rand(3, 64, 64)):
        batch = tiny_llava.prepare("<image> what ?", one)
        assert torch.equal(batch.input_ids, expected) and len(batch.images[0]) == 1, type(one)


def test_what_is_not_an_image_is_one_line(tiny_llava):
    import torch

    with pytest.raises(MmlensError, match="images are a list of file paths, PIL images or arrays, got int"):
        tiny_llava.prepare("<image> what ?", 5)
    with pytest.raises(MmlensError, match=r"got shape \(2, 3, 8, 8\); give several images as a list"):
        tiny_llava.prepare("<image> what ?", torch.rand(2, 3, 8, 8))


def test_a_text_only_model_given_an_image_names_the_model(tiny_llama):
    with pytest.raises(MmlensError, match=rf"^{tiny_llama.name} is a text-only model: it takes no images$"):
        tiny_llama.prepare("<image> what ?", [noise_image(32, 32)])


def test_a_prompt_that_is_not_text_and_no_new_tokens_are_one_line(tiny_llava):
    with pytest.raises(MmlensError, match="prompts are a string or a list of strings, got int"):
        tiny_llava.prepare(5)
    with pytest.raises(MmlensError, match="max_new_tokens must be a whole number of at least 1, got 0"):
        tiny_llava.generate(tiny_llava.prepare("hello"), max_new_tokens=0)
