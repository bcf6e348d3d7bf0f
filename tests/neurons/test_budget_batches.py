"""Neuron scoring sizes its forwards from a memory budget; scores do not depend on it."""

from __future__ import annotations

import pytest
import torch

from mmlens.budget import row_bytes
from mmlens.errors import MmlensError
from mmlens.neurons._batches import VISION_SHARE, budget_batches, prepare_samples
from mmlens.neurons.domain import domain_scores
from mmlens.neurons.modality import modality_scores
from mmlens.neurons.top import top_activations


def _one_sample(model, samples):
    """A budget that holds the longest sample alone."""
    longest = max(prepare_samples(model, [s]).input_ids.shape[1] for s in samples)
    return VISION_SHARE * row_bytes(model, longest)


def test_batches_follow_the_budget(tiny_llava, samples):
    assert [len(c) for c, _ in budget_batches(tiny_llava, samples, "unlimited")] == [len(samples)]
    assert [len(c) for c, _ in budget_batches(tiny_llava, samples, _one_sample(tiny_llava, samples))] == [1] * 5
    with pytest.raises(MmlensError, match="too small for one row of neuron scoring: it needs at least"):
        list(budget_batches(tiny_llava, samples, "1KB"))


def test_modality_scores_do_not_depend_on_the_budget(tiny_llava, samples):
    stats = ("frac", "mean", "max", "attn_mean")
    small = modality_scores(tiny_llava, samples, statistics=stats, memory_budget=_one_sample(tiny_llava, samples),
                            progress=False)
    large = modality_scores(tiny_llava, samples, statistics=stats, memory_budget="unlimited", progress=False)
    assert torch.equal(small.counts, large.counts)
    for name in stats:
        torch.testing.assert_close(small.sums[name], large.sums[name], rtol=1e-4, atol=1e-5)


def test_domain_scores_and_top_activations_do_not_depend_on_the_budget(tiny_llava, samples):
    budget = _one_sample(tiny_llava, samples)
    domains = {"a": samples[:3], "b": samples[3:]}
    small = domain_scores(tiny_llava, domains, towers=("lm",), memory_budget=budget, progress=False)
    large = domain_scores(tiny_llava, domains, towers=("lm",), memory_budget="unlimited", progress=False)
    for site in small.sites:
        assert torch.equal(small.active[site], large.active[site]) and torch.equal(small.tokens[site], large.tokens[site])
    one = top_activations(tiny_llava, samples, "lm.L1.neurons", 9, k=3, memory_budget=budget, progress=False)
    all_ = top_activations(tiny_llava, samples, "lm.L1.neurons", 9, k=3, memory_budget="unlimited", progress=False)
    assert one.sample_ids == all_.sample_ids
    torch.testing.assert_close(one.values, all_.values, rtol=1e-4, atol=1e-5)
