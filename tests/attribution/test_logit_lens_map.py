"""Logit-lens maps and the rank-biased overlap behind ARC."""

import pytest
import torch

from mmlens.attribution.logit_lens_map import logit_lens_arc, logit_lens_map, logit_lens_msea, rank_biased_overlap
from mmlens.readout import logits as readout_logits


def test_last_layer_lens_at_the_answer_position_is_the_model_logit(tiny_llava, targets):
    scores = logit_lens_map(tiny_llava, targets).scores
    logits = tiny_llava.forward(targets.batch).logits
    for j in range(2):
        expected = targets.scores(logits[:, targets.positions[j]], j).clamp(min=0)
        torch.testing.assert_close(scores[0, j, targets.positions[j]], expected[0].detach(), rtol=1e-4, atol=1e-5)


def test_context_removal_only_lowers_maps(tiny_llava, targets):
    plain = logit_lens_map(tiny_llava, targets).scores
    arc = logit_lens_arc(tiny_llava, targets).scores
    assert (arc <= plain + 1e-6).all() and (arc >= 0).all()


def test_rank_biased_overlap():
    assert rank_biased_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert rank_biased_overlap([1, 2, 3], [4, 5, 6]) == 0.0
    top_agree = rank_biased_overlap([1, 2, 3, 4], [1, 2, 4, 3])
    bottom_agree = rank_biased_overlap([1, 2, 3, 4], [2, 1, 3, 4])
    assert 0 < bottom_agree < top_agree < 1


def test_multi_scale_maps_equal_plain_maps_where_resolution_is_fixed(tiny_llava, targets):
    plain = logit_lens_map(tiny_llava, targets).scores
    multi = logit_lens_msea(tiny_llava, targets, scales=(0.5, 1.0, 2.0)).scores
    image = targets.batch.layout.image_positions(0)
    # LLaVA resizes every input to one size: every scale sees the same pixels, up to resampling
    assert torch.corrcoef(torch.stack([plain[0, 0, image], multi[0, 0, image]]))[0, 1] > 0.8


def test_multi_scale_changes_maps_where_resolution_matters():
    import mmlens
    from mmlens.readout import build_targets
    from tests.conftest import noise_image

    model = mmlens.load("tiny-qwen2-vl")
    targets = build_targets(model, model.prepare("<image> what colour ?", [noise_image(112, 112)]), answer="red")
    plain = logit_lens_map(model, targets).scores
    multi = logit_lens_msea(model, targets, scales=(0.5, 1.0, 2.0)).scores
    image = targets.batch.layout.image_positions(0)
    assert not torch.allclose(plain[0, 0, image], multi[0, 0, image])
    assert (multi >= 0).all()


@pytest.mark.parametrize("method", [logit_lens_map, logit_lens_arc])
def test_positions_unembedded_a_block_at_a_time_give_the_same_maps(tiny_llava, targets, method, monkeypatch):
    whole = method(tiny_llava, targets).scores
    vocabulary = tiny_llava.hf.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(readout_logits, "_UNEMBED_ELEMENTS", targets.batch.input_ids.shape[0] * 3 * vocabulary)
    torch.testing.assert_close(method(tiny_llava, targets).scores, whole, equal_nan=True)
