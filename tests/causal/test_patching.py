"""Activation patching: source = target changes nothing; patching the last hidden state copies the output."""

import pytest
import torch

import mmlens
from mmlens.causal import patch, position_mask
from mmlens.data.shapes import counterfactual


def test_patching_a_run_into_itself_leaves_outputs_unchanged(tiny_llava, clean):
    with torch.no_grad():
        expected = tiny_llava.forward(clean).logits
    out = patch(tiny_llava, clean, clean, ["lm.L*.resid", "lm.L*.attn", "lm.L*.mlp"])
    assert torch.equal(out.logits, expected)


def test_patching_identity_on_another_family(noise):
    model = mmlens.load("tiny-qwen2-vl")
    batch = model.prepare("<image> what colour ?", [noise(56, 56, 4)])
    with torch.no_grad():
        expected = model.forward(batch).logits
    assert torch.equal(patch(model, batch, batch, "lm.L*.resid", positions=[-1, 3]).logits, expected)


def test_patching_the_last_hidden_state_everywhere_gives_the_source_output(tiny_llava, clean, samples):
    other = tiny_llava.prepare([s.prompt for s in samples], [[counterfactual(s, "recolour").image] for s in samples])
    last = tiny_llava.n_layers - 1
    with torch.no_grad():
        source = tiny_llava.forward(clean).logits
        target = tiny_llava.forward(other).logits
    assert not torch.allclose(source[:, -1], target[:, -1])
    out = patch(tiny_llava, clean, other, f"lm.L{last}.resid")
    torch.testing.assert_close(out.logits, source)
    only_last = patch(tiny_llava, clean, other, f"lm.L{last}.resid", positions=[-1])
    torch.testing.assert_close(only_last.logits[:, -1], source[:, -1])
    torch.testing.assert_close(only_last.logits[:, :-1], target[:, :-1])


def test_position_masks():
    assert position_mask([0, -1], 2, 4).tolist() == [[True, False, False, True]] * 2
    with pytest.raises(mmlens.MmlensError):
        position_mask(torch.ones(3, 4, dtype=torch.bool), 2, 4)
