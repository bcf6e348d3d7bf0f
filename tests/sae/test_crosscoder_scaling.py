"""Crosscoder latent classes from decoder norms, and the AUROC helpers that pick a latent on validation rows."""

from __future__ import annotations

import numpy as np
import torch

from mmlens.sae.crosscoder_scaling import auroc_columns, best_latent, bootstrap_auroc, classify, relative_norms


def test_relative_norms_put_a_only_at_0_shared_at_half_b_only_at_1():
    norms = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.0, 0.0]])
    assert relative_norms(norms).tolist() == [0.0, 0.5, 1.0, 0.5]
    assert classify(relative_norms(norms)).tolist() == ["A-only", "shared", "B-only", "shared"]


def test_classify_thresholds_are_inclusive_and_movable():
    delta = torch.tensor([0.1, 0.2, 0.9])
    assert classify(delta).tolist() == ["A-only", "shared", "B-only"]
    assert classify(delta, low=0.2, high=0.95).tolist() == ["A-only", "A-only", "shared"]


def test_auroc_columns_match_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(40, 3)).astype(float)  # many ties
    positive = rng.random(40) < 0.4
    pos, neg = scores[positive], scores[~positive]
    pairwise = [((p[:, None] > n[None]) + 0.5 * (p[:, None] == n[None])).mean()
                for p, n in zip(pos.T, neg.T)]
    assert np.allclose(auroc_columns(scores, positive), pairwise)
    assert np.isnan(auroc_columns(scores, np.zeros(40, bool))).all()


def test_best_latent_is_chosen_on_validation_and_scored_on_the_rest():
    positive = np.array([1, 0, 1, 0, 1, 0], bool)
    validation = np.array([1, 1, 1, 1, 0, 0], bool)
    # latent 3 separates the validation rows only; latent 5 separates every row
    scores = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    chosen = best_latent(scores, positive, validation, [3, 5])
    assert chosen["latent"] == 3 and chosen["validation_auroc"] == 1.0 and chosen["test_auroc"] == 0.0


def test_bootstrap_auroc_resamples_groups_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 10)
    positive = rng.random(400) < 0.2
    scores = positive + rng.normal(0, 1.0, 400)  # a noisy separator: AUROC about 0.75
    point = auroc_columns(scores[:, None], positive)[0]
    low, high = bootstrap_auroc(scores, positive, groups, n=300)
    assert low < point < high and 0.5 < low and high < 0.95
    assert bootstrap_auroc(scores, np.zeros(400, bool), groups, n=20) is None  # never both classes
    perfect = bootstrap_auroc(positive.astype(float), positive, groups, n=20)
    assert perfect == (1.0, 1.0)
