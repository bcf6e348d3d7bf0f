"""Fingerprints: probe sets, last-token states, dropped samples, the score and its interval."""

from __future__ import annotations

import pytest
import torch

import mmlens
from mmlens.errors import MmlensError
from mmlens.represent.fingerprint import (
    ProbeSample, Representations, bootstrap_scores, collect_last_token, depth_pairs, fingerprint, probe_samples,
    standardise,
)
from mmlens.represent.cka import cka_from_grams, grams


def test_probe_sets_are_fixed_and_off_task_cycles_domains():
    off = probe_samples("off-task", 6)
    assert [s.id.split("-")[0] for s in off] == ["glyphs", "cells", "maps"] * 2
    assert [s.prompt for s in probe_samples("off-task", 6)] == [s.prompt for s in off]
    assert all(s.id.startswith("shapes-test-") for s in probe_samples("on-task", 4))
    with pytest.raises(MmlensError, match="unknown probe set"):
        probe_samples("weird", 10)


def test_different_tokenisers_fingerprint_and_failures_are_dropped_from_both(tiny_llava):
    """shapes-llava (word-level tokens, 256 positions) against tiny-llava (another tokenizer, width 64)."""
    victim = mmlens.load("shapes-llava")
    samples = probe_samples("off-task", 8)
    long = ProbeSample("too-long", "<image> " + "what " * 300 + "?", samples[0].image)  # over shapes-llava's 256
    v = collect_last_token(victim, [*samples, long], batch_size=4)
    s = collect_last_token(tiny_llava, [*samples, long], batch_size=4)
    assert "too-long" in v.failed and "too-long" in s.ids
    assert v.layers[0].shape == (8, 128) and s.layers[0].shape == (9, 64)
    result = fingerprint(v, s, n_boot=50)
    assert result.n == 8 and result.dropped == 1
    assert set(result.matrices) == {"linear", "rbf", "unbiased"}
    assert result.matrices["linear"].shape == (victim.n_layers, tiny_llava.n_layers)
    assert result.low <= result.score <= result.high
    assert "shapes-llava:too-long" in result.to_json()["failed"]


def test_a_model_against_itself_scores_one_and_a_stranger_lower():
    torch.manual_seed(0)
    base = torch.randn(40, 16)
    layers = [base, torch.tanh(base @ torch.randn(16, 16))]
    ids = [f"s{i}" for i in range(40)]
    same = fingerprint(Representations("a", ids, layers), Representations("a", ids, layers), n_boot=100)
    other = fingerprint(Representations("a", ids, layers),
                        Representations("b", ids, [torch.randn(40, 16), torch.randn(40, 8)]), n_boot=100)
    assert abs(same.score - 1) < 1e-5 and abs(same.low - 1) < 1e-4
    assert other.high < same.low
    assert other.low < 0.2


def test_bootstrap_interval_narrows_with_more_samples():
    torch.manual_seed(1)
    widths = []
    for n in (30, 300):
        x = torch.randn(n, 8)
        y = x @ torch.randn(8, 8) + 2 * torch.randn(n, 8)
        boot = bootstrap_scores(grams([x], "unbiased"), grams([y], "unbiased"), [(0, 0)], n_boot=200)
        widths.append(float(boot.quantile(0.975) - boot.quantile(0.025)))
    assert widths[1] < widths[0] / 2


def test_depth_pairs_and_standardise():
    assert depth_pairs(4, 24)[-1] == (3, 23) and depth_pairs(24, 4)[12] == (12, 2)
    z = standardise(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0], [5.0, 2.0, 7.0]]))
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-6) and torch.all(z[:, 1] == 0)


def test_too_few_common_samples_is_one_line():
    a = Representations("a", ["x", "y", "z", "w"], [torch.randn(4, 3)])
    b = Representations("b", ["x", "y", "q", "r"], [torch.randn(4, 3)])
    with pytest.raises(MmlensError, match="only 2 probe samples ran on both a and b"):
        fingerprint(a, b)


def test_batched_bootstrap_equals_one_resample_at_a_time():
    torch.manual_seed(2)
    v = [torch.randn(20, 6), torch.randn(20, 5)]
    s = [v[0] @ torch.randn(6, 4), torch.randn(20, 3)]
    kv, ks = grams(v, "unbiased"), grams(s, "unbiased")
    boot = bootstrap_scores(kv, ks, [(0, 0), (1, 1)], n_boot=7, seed=4, chunk=3)
    index = torch.randint(0, 20, (7, 20), generator=torch.Generator().manual_seed(4))
    for b in range(7):
        m = cka_from_grams(kv, ks, "unbiased", index[b])
        assert abs(float(m.diagonal().mean()) - float(boot[b])) < 1e-5
