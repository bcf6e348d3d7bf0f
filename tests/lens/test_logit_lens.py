"""Logit lens on every layer and position: the last layer is the model's own output, entropies are exact."""

import pytest
import torch

import mmlens
from mmlens.lens import logit_lens
from mmlens.readout import logits as readout_logits
from mmlens.readout import unembed
from tests.conftest import noise_image

PROMPTS = ["<image> what colour is the circle ?", "<image> what shape ?"]


@pytest.fixture(scope="module")
def batch(tiny_llava):
    return tiny_llava.prepare(PROMPTS, [[noise_image(64, 64, 1)], [noise_image(80, 120, 2)]])


@pytest.fixture(scope="module")
def lens(tiny_llava, batch):
    return logit_lens(tiny_llava, batch, top_k=4)


def test_last_layer_is_the_models_output_distribution(tiny_llava, batch, lens):
    with torch.no_grad():
        probs = torch.softmax(tiny_llava.forward(batch).logits.float(), -1)
    top = probs.topk(4, dim=-1)
    torch.testing.assert_close(lens.top_probs[-1], top.values, rtol=1e-5, atol=1e-6)
    assert torch.equal(lens.top_ids[-1, :, -1], top.indices[:, -1])
    # With no answer given, the lens follows the model's own answer: rank 1 at the last layer.
    assert lens.answer_rank[-1].tolist() == [1, 1]
    torch.testing.assert_close(lens.answer_prob[-1], top.values[:, -1, 0], rtol=1e-5, atol=1e-6)


def test_entropy_matches_a_direct_computation(tiny_llava, batch, lens):
    with torch.no_grad(), mmlens.capture(tiny_llava, "lm.L0.resid") as captured:
        tiny_llava.forward(batch)
        p = torch.softmax(unembed(tiny_llava, captured["lm.L0.resid"]).double(), -1)
    entropy = -(p * p.log()).sum(-1)
    assert lens.layer_names[1] == "L0"
    torch.testing.assert_close(lens.entropy[1].double(), entropy, rtol=1e-4, atol=1e-5)


def test_given_answer_rank_and_probability(tiny_llava, batch, lens):
    token = int(lens.top_ids[-1, 0, -1, 1])  # the model's second choice for row 0
    word = tiny_llava.tokenizer.convert_ids_to_tokens(token)
    other = logit_lens(tiny_llava, batch, answer=torch.tensor([token, token]))
    assert int(other.answer_rank[-1, 0]) == 2
    torch.testing.assert_close(other.answer_prob[-1, 0], lens.top_probs[-1, 0, -1, 1])
    assert other.vocabulary[token] == word


def test_word_grid_covers_every_image_patch(lens, batch):
    words, probs = lens.word_grid(layer=2, row=1)
    assert words.shape == probs.shape and all(w for w in words.flatten())
    assert len(batch.layout.image_positions(1)) == words.size
    payload = lens.to_json(top_k=2)
    assert len(payload["rows"][0]["layers"]) == len(lens.layer_names)
    assert len(payload["rows"][0]["layers"][0]["top"][0]) == 2


def test_another_family_last_layer_equals_output():
    model = mmlens.load("tiny-qwen2-vl")
    batch = model.prepare("<image> what colour ?", [noise_image(56, 56, 3)])
    lens = logit_lens(model, batch, top_k=3)
    with torch.no_grad():
        probs = torch.softmax(model.forward(batch).logits.float(), -1)
    torch.testing.assert_close(lens.top_probs[-1, 0], probs[0].topk(3, -1).values, rtol=1e-5, atol=1e-6)
    assert int(lens.answer_rank[-1, 0]) == 1


@pytest.mark.parametrize("position", [-1, 5])
def test_positions_unembedded_a_block_at_a_time_give_the_same_lens(tiny_llava, batch, lens, position, monkeypatch):
    whole = lens if position == -1 else logit_lens(tiny_llava, batch, top_k=4, position=position)
    vocabulary = tiny_llava.hf.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(readout_logits, "_UNEMBED_ELEMENTS", 2 * 3 * vocabulary)  # three positions a block
    blocks = logit_lens(tiny_llava, batch, top_k=4, position=position)
    assert torch.equal(blocks.top_ids, whole.top_ids) and blocks.position == whole.position
    for name in ("top_probs", "entropy", "answer_prob"):
        torch.testing.assert_close(getattr(blocks, name), getattr(whole, name))
    assert torch.equal(blocks.answer_rank, whole.answer_rank) and torch.equal(blocks.answer_ids, whole.answer_ids)
