"""Raw attention, rollout and relevancy against transformers' own attention outputs."""

from contextlib import contextmanager

import pytest
import torch

import mmlens
from mmlens.attribution.attention import attention
from mmlens.attribution.base import causal_cut, empty_scores
from mmlens.attribution.relevancy import relevancy
from mmlens.attribution.rollout import rollout
from mmlens.hooks import capture, eager_attention
from mmlens.readout import build_targets
from tests.conftest import noise_image


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
    tiny_llava.hf.zero_grad(set_to_none=True)
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


def test_rollout_equals_the_dense_product_of_transformers_attentions(tiny_llava, targets):
    out = hf_attentions(tiny_llava, targets)
    seq = out.logits.shape[1]
    eye = torch.eye(seq, dtype=torch.float64)
    joint = eye.expand(2, seq, seq)
    for attn in out.attentions:  # A_hat_L ... A_hat_1, built from the first layer up
        step = attn.double().mean(1) + eye
        joint = (step / step.sum(-1, keepdim=True)) @ joint
    expected = joint[:, targets.positions].float()
    scores = rollout(tiny_llava, targets).scores
    keep = targets.batch.inputs["attention_mask"].bool()
    torch.testing.assert_close(scores[0], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores[1, 0][keep[1]], expected[1, 0][keep[1]], rtol=1e-5, atol=1e-6)


@contextmanager
def unembedded_rows(model):
    """The number of positions the unembedding computes logits for, per call."""
    seen = []
    handle = model.module(model.adapter.unembed).register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("method", [attention, rollout, relevancy])
def test_no_logits_over_every_position(tiny_llava, targets, method):
    with unembedded_rows(tiny_llava) as seen:
        method(tiny_llava, targets)
    assert seen and max(seen) <= targets.count  # (seq, vocab) logits are gigabytes at real sizes


def reference_relevancy(model, targets):
    """Chefer's rule from every layer's probabilities kept in the graph (eager attention): the dense reference."""
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    scores = empty_scores(targets)
    with torch.enable_grad(), capture(model, [*sites, "lm.embed"], grads=True) as captured:
        logits = model.forward(targets.batch, use_cache=False).logits
        for j in range(targets.count):
            targets.scores(logits[:, targets.positions[j]], j).sum().backward(retain_graph=j + 1 < targets.count)
            row = torch.zeros(logits.shape[0], 1, logits.shape[1], dtype=torch.float64)
            row[:, 0, targets.positions[j]] = 1.0
            for site in reversed(sites):
                weighted = (captured.grad(site).double() * captured[site].double()).clamp(min=0).mean(1)
                row = row + row @ weighted
            scores[:, j] = row[:, 0].float()
    model.hf.zero_grad(set_to_none=True)
    return causal_cut(scores, targets)


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-idefics3", "tiny-paligemma", "tiny-gpt2"])
def test_relevancy_equals_the_dense_reference_on_every_family(name):
    model = mmlens.load(name)
    if model.adapter.multimodal:
        batch = model.prepare(["<image> what colour is the circle ?", "<image> what shape ?"],
                              [[noise_image(64, 64, 1)], [noise_image(120, 200, 2)]])
    else:
        batch = model.prepare(["a red circle is", "what shape"])
    targets = build_targets(model, batch, answer=["red circle", "square"])
    expected = reference_relevancy(model, targets)
    torch.testing.assert_close(relevancy(model, targets).scores, expected, rtol=0, atol=1e-5)


def test_relevancy_keeps_no_attention_map_and_no_weight_gradients(tiny_llava, targets):
    tiny_llava.hf.zero_grad(set_to_none=True)  # other tests' backward passes leave weight gradients
    seq = targets.batch.input_ids.shape[1]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.shape, t.dtype)) or t, lambda t: t):
        relevancy(tiny_llava, targets)
    maps = [shape for shape, dtype in saved if dtype.is_floating_point and tuple(shape[-2:]) == (seq, seq)]
    assert saved and not maps  # Q, K, V and activations only: probabilities are recomputed in the backward pass
    assert all(p.grad is None for p in tiny_llava.hf.parameters())


def test_half_precision_relevancy_follows_fp32():
    full, half = mmlens.load("tiny-llava"), mmlens.load("tiny-llava", dtype=torch.bfloat16)
    batch = full.prepare(["<image> what colour is the circle ?"], [[noise_image(64, 64, 1)]])
    targets = build_targets(full, batch, answer=["red circle"])
    half_targets = build_targets(half, half.prepare(["<image> what colour is the circle ?"],
                                                    [[noise_image(64, 64, 1)]]), answer=["red circle"])
    torch.testing.assert_close(relevancy(half, half_targets).scores, relevancy(full, targets).scores,
                               rtol=0, atol=2e-3)
