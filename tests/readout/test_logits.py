"""Unembedding, answer token ids and token probabilities on tiny models."""

import pytest
import torch

import mmlens
from mmlens.errors import MmlensError
from mmlens.readout import answer_token_ids, logits_at, token_probabilities, unembed, unembed_blocks
from mmlens.readout import logits as readout_logits


def test_unembed_of_the_last_block_is_the_models_own_logits(tiny_llama):
    batch = tiny_llama.prepare(["a red circle", "a blue square is here"])
    last = f"lm.L{tiny_llama.n_layers - 1}.resid"
    with torch.no_grad(), mmlens.capture(tiny_llama, last) as captured:
        logits = tiny_llama.forward(batch).logits
        read = unembed(tiny_llama, captured[last])
    torch.testing.assert_close(read, logits, rtol=1e-5, atol=1e-5)


def test_unembed_at_an_earlier_layer_differs_from_the_output(tiny_llama):
    batch = tiny_llama.prepare("a red circle")
    with torch.no_grad(), mmlens.capture(tiny_llama, "lm.L0.resid") as captured:
        logits = tiny_llama.forward(batch).logits
        read = unembed(tiny_llama, captured["lm.L0.resid"])
    assert read.shape == logits.shape and not torch.allclose(read, logits)


def test_answer_token_ids_of_a_word_are_its_first_token(tiny_llama):
    red = tiny_llama.tokenizer("red", add_special_tokens=False)["input_ids"]
    assert answer_token_ids(tiny_llama, "red", None, rows=2).tolist() == [red[0], red[0]]
    blue = tiny_llama.tokenizer("blue", add_special_tokens=False)["input_ids"][0]
    assert answer_token_ids(tiny_llama, ["red", "blue"], None, rows=2).tolist() == [red[0], blue]
    assert tiny_llama.tokenizer.convert_ids_to_tokens(red[0]) == "red"


def test_answer_token_ids_from_logits_and_tensors(tiny_llama):
    logits = torch.zeros(2, 10)
    logits[0, 3] = logits[1, 7] = 1.0
    assert answer_token_ids(tiny_llama, None, logits, rows=2).tolist() == [3, 7]
    assert answer_token_ids(tiny_llama, torch.tensor(5), None, rows=3).tolist() == [5, 5, 5]
    assert answer_token_ids(tiny_llama, torch.tensor([1, 2]), None, rows=2).tolist() == [1, 2]
    with pytest.raises(MmlensError):
        answer_token_ids(tiny_llama, None, None, rows=1)
    with pytest.raises(MmlensError):
        answer_token_ids(tiny_llama, ["red"], None, rows=2)


def test_token_probabilities_repeat_over_stacked_copies():
    logits = torch.randn(6, 11)
    ids = torch.tensor([2, 5, 9])
    expected = torch.softmax(logits, -1)[torch.arange(6), ids.repeat(2)]
    torch.testing.assert_close(token_probabilities(logits, ids), expected)


@pytest.mark.parametrize("positions", [[-1], [2, 3], [0, 4, 1]])
def test_logits_at_some_positions_equal_the_whole_forwards_there(tiny_llama, positions):
    batch = tiny_llama.prepare(["a red circle is here", "a blue square"], padding_side="left")
    with torch.no_grad():
        whole = tiny_llama.forward(batch).logits
        some = logits_at(tiny_llama, batch, positions)
    torch.testing.assert_close(some, whole[:, positions], rtol=1e-5, atol=1e-5)


def test_logits_at_a_position_past_the_end_is_refused(tiny_llama):
    batch = tiny_llama.prepare("a red circle")
    seq = batch.input_ids.shape[1]
    with pytest.raises(mmlens.MmlensError, match=f"position {seq} is out of range"):
        logits_at(tiny_llama, batch, [0, seq])


def test_unembed_blocks_cover_every_position_and_equal_unembed(tiny_llama, monkeypatch):
    batch = tiny_llama.prepare(["a red circle is here", "a blue square"], padding_side="left")
    with torch.no_grad(), mmlens.capture(tiny_llama, "lm.L0.resid") as captured:
        tiny_llama.forward(batch)
        hidden = captured["lm.L0.resid"]
        vocabulary = unembed(tiny_llama, hidden[:1, :1]).shape[-1]
        monkeypatch.setattr(readout_logits, "_UNEMBED_ELEMENTS", 2 * 2 * vocabulary)  # two positions a block
        blocks = list(unembed_blocks(tiny_llama, hidden))
        whole = unembed(tiny_llama, hidden).float()
    assert [start for start, _ in blocks] == list(range(0, hidden.shape[1], 2))
    torch.testing.assert_close(torch.cat([block for _, block in blocks], 1), whole)
