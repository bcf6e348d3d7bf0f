"""The relevancy attention core (mmlens.models.runtime.relevance) against eager attention under autograd."""

from __future__ import annotations

import pytest
import torch

from mmlens.models.runtime import relevance
from mmlens.models.runtime.relevance import RelevanceRow, core_backward


def eager(query, key, value, mask, causal, scale):
    """Plain attention with the probabilities in the graph (the reference), GQA by repeating heads."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query.float() @ key.float().transpose(2, 3) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min) if mask.dtype == torch.bool else scores + mask
    elif causal:
        seq = query.shape[2]
        scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, -1)
    probs.retain_grad()
    return probs, (probs @ value.float()).to(query.dtype)


def inputs(kv_heads=2, heads=4, seq=7, dim=8, batch=2, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq, dim, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(batch, kv_heads, seq, dim, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(batch, kv_heads, seq, dim, generator=gen).to(dtype).requires_grad_()
    g = torch.randn(batch, heads, seq, dim, generator=gen).to(dtype)
    return q, k, v, g


MASKS = {
    "causal kernel": lambda seq: None,
    "bool": lambda seq: torch.ones(seq, seq, dtype=torch.bool).tril()[None, None].expand(2, 1, seq, seq).clone(),
    "additive": lambda seq: torch.zeros(1, 1, seq, seq).masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1),
                                                                    -1e9),
}


@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_gradients_and_relevance_row_equal_eager_autograd(mask_kind, kv_heads, monkeypatch):
    monkeypatch.setattr(relevance, "_CHUNK_ELEMENTS", 2 * 4 * 7 * 2)  # chunks of two query rows
    q, k, v, g = inputs(kv_heads=kv_heads)
    mask = MASKS[mask_kind](7)
    probs, out = eager(q, k, v, mask, True, 0.35)
    out.backward(g)
    row = RelevanceRow()
    row.start(2, 7, 5, q.device)
    dq, dk, dv = core_backward(q.detach(), k.detach(), v.detach(), mask, mask is None, 0.35, g, row)
    torch.testing.assert_close(dq, q.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dk, k.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv, v.grad, rtol=1e-5, atol=1e-5)
    start = torch.zeros(2, 7, dtype=torch.float64)
    start[:, 5] = 1
    weighted = (probs.grad * probs).clamp(min=0).mean(1).double()  # Chefer's A_bar
    expected = start + torch.einsum("bq,bqk->bk", start, weighted)
    torch.testing.assert_close(row.value, expected, rtol=1e-6, atol=1e-8)
    assert row.layers == 1


def test_rows_without_a_gradient_are_skipped_exactly():
    q, k, v, g = inputs()
    g[:, :, :4] = 0  # only the last three query rows matter (as after the last layer)
    probs, out = eager(q, k, v, None, True, 0.35)
    out.backward(g)
    dq, dk, dv = core_backward(q.detach(), k.detach(), v.detach(), None, True, 0.35, g, None)
    assert dq[:, :, :4].abs().sum() == 0
    torch.testing.assert_close(dk, k.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv, v.grad, rtol=1e-5, atol=1e-5)


def test_the_autograd_function_saves_no_probabilities_and_carries_the_row():
    q, k, v, g = inputs(seq=9)
    saved = []
    row = RelevanceRow()
    module = torch.nn.Module()
    module.num_key_value_groups = 2  # as transformers' attention modules say (GQA)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = relevance.relevance_attention(module, q, k, v, None, True, 0.35, row)
    assert out.shape == (2, 9, 4, 8)  # transformers' (batch, seq, heads, dim)
    assert all(shape[-2:] != (9, 9) for shape in saved), saved  # Q, K and V, never (seq, seq) probabilities
    _, reference = eager(q, k, v, None, True, 0.35)
    torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-5, atol=1e-5)
    row.start(2, 9, 8, q.device)
    out.backward(g.transpose(1, 2))
    assert row.layers == 1 and row.value[:, 8].min() >= 1


def test_half_precision_gradients_keep_their_dtype_and_follow_fp32():
    q, k, v, g = inputs()
    half = [t.detach().bfloat16() for t in (q, k, v, g)]
    low = core_backward(*half[:3], None, True, 0.35, half[3], None)
    full = core_backward(q.detach(), k.detach(), v.detach(), None, True, 0.35, g, None)
    assert [t.dtype for t in low] == [torch.bfloat16] * 3
    for a, b in zip(low, full):
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05)
