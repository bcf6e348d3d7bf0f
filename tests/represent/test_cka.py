"""CKA estimators: invariances, agreement with Kornblith et al.'s feature-space formulas, bad input."""

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.represent.cka import KINDS, cka, cka_from_grams, cka_matrix, gram, grams


def _reference(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Kornblith et al.'s feature_space_linear_cka (their published code), in float64."""
    x, y = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    xty, xtx, yty = np.linalg.norm(x.T @ y) ** 2, np.linalg.norm(x.T @ x) ** 2, np.linalg.norm(y.T @ y) ** 2
    if not debiased:
        return xty / np.sqrt(xtx * yty)
    rx, ry = (x * x).sum(1), (y * y).sum(1)

    def helper(v, a, b):
        return v - n / (n - 2.0) * a.dot(b) + a.sum() * b.sum() / ((n - 1) * (n - 2))
    return helper(xty, rx, ry) / np.sqrt(helper(xtx, rx, rx) * helper(yty, ry, ry))


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(50, 96)


@pytest.mark.parametrize("kind", KINDS)
def test_invariant_to_permutation_rotation_and_scaling(x, kind):
    q = torch.linalg.qr(torch.randn(96, 96, generator=torch.Generator().manual_seed(1)))[0]
    for y in (x[:, torch.randperm(96)], x @ q, 4.7 * x, 0.01 * x @ q):
        assert abs(cka(x, y, kind) - 1.0) < 1e-6


@pytest.mark.parametrize("kind", ["linear", "unbiased"])
def test_matches_the_published_formulas(x, kind):
    y = x[:, :40] @ torch.randn(40, 30) + 0.5 * torch.randn(50, 30)
    expected = _reference(x.double().numpy(), y.double().numpy(), debiased=kind == "unbiased")
    assert abs(cka(x, y, kind) - expected) < 1e-5


def test_debiased_estimator_is_near_zero_for_independent_wide_features(x):
    """The biased estimator reads 0.6 here (width 96 against 50 samples); the debiased one does not."""
    y = torch.randn(50, 64, generator=torch.Generator().manual_seed(3))
    assert cka(x, y, "linear") > 0.4
    assert abs(cka(x, y, "unbiased")) < 0.1


def test_matrix_allows_different_widths_and_matches_pairs(x):
    a = [x[:, :32], x[:, 10:80] ** 2]
    b = [x[:, 5:60], torch.randn(50, 7), x]
    m = cka_matrix(a, b, "rbf")
    assert m.shape == (2, 3)
    assert abs(float(m[1, 2]) - cka(a[1], b[2], "rbf")) < 1e-6


def test_resample_index_equals_cka_on_resampled_rows_for_biased_kinds(x):
    y = x[:, :20] + torch.randn(50, 20)
    index = torch.arange(30)
    got = cka_from_grams(grams([x]), grams([y]), "linear", index)[0, 0]
    assert abs(float(got) - cka(x[:30], y[:30])) < 1e-5


def test_unbiased_resample_without_repeats_matches_direct(x):
    y = x[:, :20] + torch.randn(50, 20)
    index = torch.arange(10, 40)
    got = cka_from_grams(grams([x], "unbiased"), grams([y], "unbiased"), "unbiased", index)[0, 0]
    assert abs(float(got) - cka(x[10:40], y[10:40], "unbiased")) < 1e-5


def test_bad_input_is_one_line():
    with pytest.raises(MmlensError, match="same samples"):
        cka(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(MmlensError, match="non-finite"):
        cka(torch.full((10, 3), float("nan")), torch.randn(10, 3))
    with pytest.raises(MmlensError, match="unknown CKA kind"):
        gram(torch.randn(10, 3), "cosine")
    with pytest.raises(MmlensError, match="at least 4"):
        cka(torch.randn(3, 3), torch.randn(3, 3))
    with pytest.raises(MmlensError, match="median distance"):
        gram(torch.ones(10, 3), "rbf")
