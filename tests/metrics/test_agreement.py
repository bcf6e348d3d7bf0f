"""Rank agreement against scipy, and the agreement matrix of an explanation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mmlens.attribution.explanation import Explanation
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.metrics import agreement_matrix, compared_positions, rank_agreement


@pytest.mark.parametrize("seed", range(5))
def test_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b[::3] = a[::3]  # some correlation
    assert rank_agreement(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    ties_a, ties_b = np.round(a), np.round(b)  # ties get average ranks, as in scipy
    assert rank_agreement(ties_a, ties_b) == pytest.approx(spearmanr(ties_a, ties_b).statistic, abs=1e-12)


def test_monotone_pairs() -> None:
    a = np.random.default_rng(0).normal(size=30)
    assert rank_agreement(a, np.exp(3 * a)) == 1.0
    assert rank_agreement(a, -a ** 3) == -1.0
    assert rank_agreement(torch.tensor(a), torch.tensor(a)) == 1.0


def test_constant_and_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning either
        assert np.isnan(rank_agreement(np.ones(5), np.arange(5.0)))
        assert np.isnan(rank_agreement(np.array([1.0]), np.array([2.0])))
    a = np.array([1.0, np.nan, 3.0, 2.0, 5.0])
    b = np.array([2.0, 1.0, np.nan, 1.0, 7.0])
    assert rank_agreement(a, b) == pytest.approx(spearmanr([1.0, 2.0, 5.0], [2.0, 1.0, 7.0]).statistic)
    with pytest.raises(MmlensError):
        rank_agreement(np.ones(3), np.ones(4))


@pytest.fixture(scope="module")
def explanation() -> Explanation:
    # seq 10: 0 special, 1-4 image, 5-7 prompt text, 8 answer-so-far text, 9 next answer token (text)
    layout = TokenLayout.build(
        seq_len=10,
        images=[[ImageInfo(size=(4, 4), views=[View(rows=2, cols=2, box=(0, 0, 4, 4))])]],
        image_tokens=[[(1, 0, 0, 0, 0), (2, 0, 0, 0, 1), (3, 0, 0, 1, 0), (4, 0, 0, 1, 1)]],
        special=[[0]],
    )
    rng = np.random.default_rng(0)
    a = torch.tensor(rng.normal(size=(2, 10)), dtype=torch.float32)
    scores = {"a": a, "b": 2 * a + 1, "c": -a, "d": torch.tensor(rng.normal(size=(2, 10)), dtype=torch.float32),
              "flat": torch.zeros(2, 10)}
    return Explanation(model="toy", prompt="", answer="x y", answer_tokens=["x", "y"], tokens=[""] * 10,
                       positions=[7, 8], layout=layout, images=[], scores=scores)


def test_matrix(explanation: Explanation) -> None:
    matrix = agreement_matrix(explanation, ["a", "b", "c", "d", "flat"])
    assert matrix.shape == (5, 5)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix)[:4], 1.0)
    assert matrix[0, 1] == pytest.approx(1.0) and matrix[0, 2] == pytest.approx(-1.0)
    image = explanation.scores["a"][0, 1:5].numpy(), explanation.scores["d"][0, 1:5].numpy()
    assert matrix[0, 3] == pytest.approx(rank_agreement(*image))
    assert np.isnan(matrix[4]).all()


def test_positions(explanation: Explanation) -> None:
    assert compared_positions(explanation, 0, "image").tolist() == [1, 2, 3, 4]
    assert compared_positions(explanation, 0, "text").tolist() == [5, 6, 7]  # target 0 sees up to 7
    assert compared_positions(explanation, 1, "text").tolist() == [5, 6, 7, 8]
    assert compared_positions(explanation, 1, "all").tolist() == list(range(9))
    matrix = agreement_matrix(explanation, ["a", "d"], target=1, positions=[0, 2, 5, 8])
    scores = explanation.scores
    expected = rank_agreement(scores["a"][1, [0, 2, 5, 8]], scores["d"][1, [0, 2, 5, 8]])
    assert matrix[0, 1] == pytest.approx(expected)
    assert agreement_matrix(explanation).shape == (5, 5)  # all methods by default


def test_unknown_positions_and_methods_name_the_choices(explanation) -> None:
    with pytest.raises(MmlensError, match="unknown position set 'images'; choose one of image, text, all"):
        agreement_matrix(explanation, positions="images")
    with pytest.raises(MmlensError, match="no 'occlusion' scores in this explanation"):
        agreement_matrix(explanation, ["a", "occlusion"])
