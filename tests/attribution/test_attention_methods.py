"""Raw attention, rollout and relevancy against transformers' own attention outputs."""

import torch

from mmlens.attribution.attention import attention
from mmlens.attribution.relevancy import relevancy
from mmlens.attribution.rollout import rollout
from mmlens.hooks import eager_attention


def hf_attentions(model, targets, grad=False):
    """Attention probabilities as transformers returns them (output_attentions), not through our hooks."""
    inputs = dict(targets.batch.inputs)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with eager_attention(model), torch.set_grad_enabled(grad):
        out = model.hf(**inputs, output_attentions=True, use_cache=False)
    return out


def test_raw_attention_is_the_mean_over_heads_and_layers(tiny_llava, targets):
    out = hf_attentions(tiny_llava, targets)
    expected = torch.stack(out.attentions).mean(2).mean(0)[:, targets.positions]  # (batch, n, seq)
    result = attention(tiny_llava, targets)
    torch.testing.assert_close(result.scores[0], expected[0], rtol=1e-5, atol=1e-6)
    assert result.scores[1, 1].abs().sum() == 0  # row 2 has a single answer token


def test_rollout_rows_are_distributions_over_visible_tokens(tiny_llava, targets):
    scores = rollout(tiny_llava, targets).scores
    torch.testing.assert_close(scores[0].sum(-1), torch.ones(2), rtol=1e-5, atol=1e-5)
    padding = targets.batch.inputs["attention_mask"][1] == 0
    assert scores[1, 0, padding[: scores.shape[-1]]].abs().sum() == 0


def test_relevancy_matches_a_reference_from_transformers_outputs(tiny_llava, targets):
    out = hf_attentions(tiny_llava, targets, grad=True)
    for attn in out.attentions:
        attn.retain_grad()
    j = 0
    score = targets.scores(out.logits[:, targets.positions[j]], j).sum()
    score.backward()
    seq = out.logits.shape[1]
    relevance = torch.eye(seq).expand(2, seq, seq).double()
    for attn in out.attentions:
        relevance = relevance + (attn.grad * attn).clamp(min=0).mean(1).double() @ relevance
    expected = relevance[:, targets.positions[j]].float()
    result = relevancy(tiny_llava, targets).scores[:, j]
    keep = targets.batch.inputs["attention_mask"].bool()
    torch.testing.assert_close(result[keep], expected[keep], rtol=1e-4, atol=1e-6)


def test_gradient_methods_work_with_frozen_weights():
    import mmlens
    from mmlens.zoo import example_image

    model = mmlens.load()
    model.hf.requires_grad_(False)  # the usual inference set-up
    try:
        explained = mmlens.explain(model, "<image> what colour is the circle ?", [example_image()],
                                   methods=["relevancy", "gradient_x_input", "integrated_gradients"])
    finally:
        model.hf.requires_grad_(True)
    for method in explained.methods:
        assert explained.scores[method].abs().sum() > 0, method
