"""Attention flow per modality, and knockout that zeroes exactly the blocked attention."""

import sys

import pytest
import torch

import mmlens
from mmlens.budget import row_bytes
from mmlens.errors import MmlensError
from mmlens.layout import Modality
from mmlens.lens import attention_flow, block_attention, knockout
from tests.conftest import noise_image

PROMPTS = ["<image> what colour is the circle ?", "<image> what shape ?"]


@pytest.fixture(scope="module")
def batch(tiny_llava):
    return tiny_llava.prepare(PROMPTS, [[noise_image(64, 64, 1)], [noise_image(80, 120, 2)]])


def test_flow_fractions_sum_to_one_per_head(tiny_llava, batch):
    flow = attention_flow(tiny_llava, batch)
    assert flow.fractions.shape[:3] == (tiny_llava.n_layers, 2, tiny_llava.hf.config.text_config.num_attention_heads)
    torch.testing.assert_close(flow.fractions.sum(-1), torch.ones(flow.fractions.shape[:3]))
    assert (flow.fractions[..., 0] > 0).all()  # every head sees some of the image


@pytest.mark.parametrize("lens", [attention_flow, mmlens.lens.logit_lens])
def test_a_position_past_either_end_is_refused_not_wrapped(tiny_llava, batch, lens):
    seq = batch.input_ids.shape[1]
    for position in (seq, -seq - 1):
        with pytest.raises(MmlensError, match=f"position {position} is out of range .* {seq} tokens"):
            lens(tiny_llava, batch, position=position)


def _probs(model, batch, layer):
    with torch.no_grad(), mmlens.capture(model, f"lm.L{layer}.attn_probs") as captured:
        model.forward(batch)
    return captured[f"lm.L{layer}.attn_probs"]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_knocked_out_keys_get_zero_attention_and_other_rows_are_unchanged(name, tiny_llava, batch):
    model = tiny_llava if name == "tiny-llava" else mmlens.load(name)
    if name != "tiny-llava":
        batch = model.prepare(["<image> what colour ?", "<image> hi there"],
                              [[noise_image(56, 56, 1)], [noise_image(56, 56, 2)]])
    keys = batch.layout.mask(Modality.IMAGE)
    before = _probs(model, batch, 0)
    with block_attention(model, {0: keys}):
        after = _probs(model, batch, 0)
    blocked = keys[:, None, :].expand(-1, after.shape[1], -1)
    assert (after[:, :, -1][blocked] == 0).all()
    assert torch.equal(after[:, :, :-1], before[:, :, :-1])  # other queries untouched
    torch.testing.assert_close(after[:, :, -1].sum(-1), torch.ones(after.shape[:2]))
    assert not torch.equal(after[:, :, -1], before[:, :, -1])


def test_knockout_sweep_matches_one_condition_at_a_time(tiny_llava, batch):
    image = batch.layout.mask(Modality.IMAGE)
    some = image & (torch.arange(image.shape[1]) % 2 == 0)
    two = 2 * batch.input_ids.shape[0] * row_bytes(tiny_llava, batch.input_ids.shape[1])  # 2 conditions a pass
    result = knockout(tiny_llava, batch, {"image": image, "half": some}, window=1, memory_budget=two)
    unlimited = knockout(tiny_llava, batch, {"image": image, "half": some}, window=1, memory_budget="unlimited")
    torch.testing.assert_close(result.probability, unlimited.probability, rtol=1e-4, atol=1e-6)
    assert result.probability.shape == (tiny_llava.n_layers, 2, 2)
    ids = result.answer_ids
    for w, start in enumerate(result.window_starts):
        for g, keys in enumerate([image, some]):
            with torch.no_grad(), block_attention(tiny_llava, {start: keys}):
                probs = torch.softmax(tiny_llava.forward(batch).logits[:, -1].float(), -1)
            torch.testing.assert_close(result.probability[w, g], probs[torch.arange(2), ids], rtol=1e-4, atol=1e-6)


def test_knockout_also_blocks_during_generation(tiny_llava, batch):
    keys = batch.layout.mask(Modality.IMAGE)
    with block_attention(tiny_llava, {layer: keys for layer in range(tiny_llava.n_layers)}):
        new = tiny_llava.generate(batch, max_new_tokens=3)
    assert new.shape == (2, 3)


def test_knockout_rejects_a_budget_below_one_row_before_any_work(tiny_llava, batch, monkeypatch):
    module = sys.modules["mmlens.causal.knockout"]  # where knockout's runs record the model
    monkeypatch.setattr(module, "record_layers", lambda *a: pytest.fail("work was done"))
    with pytest.raises(MmlensError, match="too small for one row of attention knockout"):
        knockout(tiny_llava, batch, {"image": batch.layout.mask(Modality.IMAGE)}, memory_budget="1KB")
