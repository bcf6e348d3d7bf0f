"""Targets: generated and given answers, contrasts, positions under padding."""

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.readout import build_targets


def test_given_answers_are_teacher_forced(tiny_llava, pair, targets):
    batch, _ = pair
    assert targets.texts == [["red", "circle"], ["square"]]
    assert targets.real.tolist() == [[True, True], [True, False]]
    assert targets.positions.tolist() == [batch.input_ids.shape[1] - 1, batch.input_ids.shape[1]]
    # the token predicted at positions[1] is "circle", fed after "red"
    red = tiny_llava.tokenizer.convert_tokens_to_ids("red")
    assert targets.batch.input_ids[0, -1] == red
    assert targets.batch.inputs["attention_mask"][1, -1] == 0  # row 2 has no second answer token


def test_generated_answers_match_generate(tiny_llava, pair):
    batch, _ = pair
    targets = build_targets(tiny_llava, batch, max_new_tokens=3)
    generated = tiny_llava.generate(batch, max_new_tokens=3)
    assert torch.equal(targets.tokens, generated.cpu())
    # teacher forcing reproduces greedy decoding: the target is the argmax at its position
    logits = tiny_llava.forward(targets.batch).logits
    assert torch.equal(logits[:, targets.positions].argmax(-1).cpu(), targets.tokens)


def test_contrast_scores_are_logit_differences(tiny_llava, pair):
    targets = build_targets(tiny_llava, pair[0], answer="red", foil="blue")
    logits = torch.randn(2, 20, tiny_llava.hf.config.text_config.vocab_size)[:, 0]
    red, blue = (tiny_llava.tokenizer.convert_tokens_to_ids(w) for w in ("red", "blue"))
    torch.testing.assert_close(targets.scores(logits, 0), logits[:, red] - logits[:, blue])


def test_bad_targets(tiny_llava, pair):
    with pytest.raises(MmlensError, match="foil"):
        build_targets(tiny_llava, pair[0], answer="red circle", foil="blue square circle")
    with pytest.raises(MmlensError, match="score"):
        build_targets(tiny_llava, pair[0], answer="red", score="banana")
    with pytest.raises(MmlensError, match="answers for"):
        build_targets(tiny_llava, pair[0], answer=["red"])
