"""Logit-lens maps and the rank-biased overlap behind ARC."""

import torch

from mmlens.attribution.logit_lens import logit_lens, logit_lens_arc, rank_biased_overlap


def test_last_layer_lens_at_the_answer_position_is_the_model_logit(tiny_llava, targets):
    scores = logit_lens(tiny_llava, targets).scores
    logits = tiny_llava.forward(targets.batch).logits
    for j in range(2):
        expected = targets.scores(logits[:, targets.positions[j]], j).clamp(min=0)
        torch.testing.assert_close(scores[0, j, targets.positions[j]], expected[0].detach(), rtol=1e-4, atol=1e-5)


def test_context_removal_only_lowers_maps(tiny_llava, targets):
    plain = logit_lens(tiny_llava, targets).scores
    arc = logit_lens_arc(tiny_llava, targets).scores
    assert (arc <= plain + 1e-6).all() and (arc >= 0).all()


def test_rank_biased_overlap():
    assert rank_biased_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert rank_biased_overlap([1, 2, 3], [4, 5, 6]) == 0.0
    top_agree = rank_biased_overlap([1, 2, 3, 4], [1, 2, 4, 3])
    bottom_agree = rank_biased_overlap([1, 2, 3, 4], [2, 1, 3, 4])
    assert 0 < bottom_agree < top_agree < 1
