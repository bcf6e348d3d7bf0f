"""BYE's mixtures: many columns at once fit as each column alone, and the low-cluster threshold."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.audit.backdoor_mixture import fit_mixture, fit_mixtures, refine_split


def _columns() -> np.ndarray:
    rng = np.random.default_rng(0)
    bimodal = np.r_[rng.normal(0, 1, 900), rng.normal(6, 0.3, 100)]
    return np.c_[rng.gamma(3, 1, 1000), rng.normal(0, 1, 1000), bimodal, np.ones(1000)]


def test_columns_fit_together_as_each_alone():
    x = _columns()
    together = fit_mixtures(x)
    for j, fit in enumerate(together):
        alone = fit_mixture(x[:, j])
        assert fit.means == pytest.approx(alone.means, abs=1e-9)
        assert fit.sigmas == pytest.approx(alone.sigmas, abs=1e-9)
        assert fit.weights == pytest.approx(alone.weights, abs=1e-9)
    assert together[2].gap() > 2 > together[1].gap()
    assert together[3].gap() == 0.0  # a constant column: no split, no crash


def test_a_higher_threshold_takes_fewer_values_and_none_above_the_high_mean():
    fit = fit_mixture(_columns()[:, 2] * -1)  # the small cluster is now the low one
    x = np.linspace(-8, 4, 400)
    posterior, strict = fit.low_cluster(x), fit.low_cluster(x, 3.0)
    assert strict.sum() < posterior.sum()
    assert not strict[x > fit.means[1]].any()
    assert np.array_equal(posterior, fit.log_ratio(x) > 0)


def test_refining_over_every_column_recovers_a_group_no_column_splits_alone():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 3))
    x[:60] += 2.0  # a shifted group: each column alone overlaps (F1 0.64 at best-ish), together much less
    start = x[:, 0] > 1.8  # a rough, one-column start
    refined = refine_split(x, start) > 0
    truth = np.arange(600) < 60
    f1 = lambda pred: 2 * (pred & truth).sum() / (pred.sum() + truth.sum())  # noqa: E731
    assert f1(refined) > f1(start) + 0.15 and f1(refined) > 0.8


def test_refining_needs_a_split_with_both_sides():
    with pytest.raises(ValueError, match="some rows and not all"):
        refine_split(np.zeros((5, 2)), np.zeros(5, bool))
