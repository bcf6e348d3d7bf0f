"""PRISM scoring: the O(N d) redundancy equals the N x N definition, duplicates rank first, text-only samples stay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmlens
from mmlens.audit.prism import check_keep, pooled_image_states, prism_select, redundancy
from mmlens.data.sample import Sample
from mmlens.data.shapes import make_sample
from mmlens.errors import MmlensError
from mmlens.hooks import capture


def naive_redundancy(x: np.ndarray) -> np.ndarray:
    """The definition: mean cosine of each centred vector to every other, through the full N x N matrix."""
    z = x - x.mean(0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    sim = z @ z.T
    np.fill_diagonal(sim, 0.0)
    return sim.sum(1) / (len(x) - 1)


@pytest.mark.parametrize("n, d", [(2, 3), (7, 5), (60, 16)])
def test_linear_formula_equals_the_pairwise_matrix(n, d):
    x = np.random.default_rng(n).normal(size=(n, d)) + 3.0  # off-centre, so centring matters
    np.testing.assert_allclose(redundancy(x), naive_redundancy(x), atol=1e-12)


def test_a_sample_at_the_corpus_mean_scores_like_the_definition():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # row 2 is the mean: z = 0
    np.testing.assert_allclose(redundancy(x), naive_redundancy(x), atol=1e-12)
    assert redundancy(x)[2] == 0.0


def _with_copies(norm_scale: float, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """80 Gaussian vectors in 12-d, 8 of them near-copies of one point at ``norm_scale`` times the typical norm."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 12))
    point = rng.normal(size=12)
    point *= norm_scale * np.sqrt(12) / np.linalg.norm(point)
    dup = [3, 10, 20, 30, 40, 50, 60, 70]
    x[dup] = point + rng.normal(scale=1e-3, size=(len(dup), 12))
    return x, dup


def test_duplicates_score_as_most_redundant_and_are_dropped_first():
    x, dup = _with_copies(0.5)
    scores = redundancy(x)
    assert set(np.argsort(scores)[-len(dup):]) == set(dup)
    result = prism_select(x, [f"s{i}" for i in range(80)], keep=0.5)
    assert len(result.kept) == 40 and not {f"s{i}" for i in dup} & set(result.kept)
    assert sorted(result.kept + result.removed) == sorted(f"s{i}" for i in range(80))


def test_copies_of_an_outlier_score_least_redundant():
    """The published score is linear in z_i (z_i . S): centring by a mean the copies pull towards them makes
    the other samples' sum point away from them, which outweighs their k - 1 self-similarities when the
    copied point lies farther from the mean than typical (see docs/audit.md)."""
    x, dup = _with_copies(2.0)
    scores = redundancy(x)
    assert set(np.argsort(scores)[:len(dup)]) == set(dup)


def test_text_only_ids_are_always_kept():
    x = np.eye(6)[[0, 0, 0, 1, 2, 3]]
    result = prism_select(x, list("abcdef"), keep=0.5, text_only=["t1", "t2"])
    assert result.kept == ["d", "e", "f", "t1", "t2"] and result.removed == ["a", "b", "c"]
    assert prism_select(x, list("abcdef"), keep=1.0).removed == []
    assert len(prism_select(x, list("abcdef"), keep=0.01).kept) == 1  # at least one image sample


@pytest.mark.parametrize("keep", [0, -0.5, 1.01, float("nan")])
def test_keep_outside_zero_one_is_one_line(keep):
    with pytest.raises(MmlensError, match=r"--keep .* in \(0, 1\]"):
        check_keep(keep)
    with pytest.raises(MmlensError):
        prism_select(np.eye(3), list("abc"), keep=keep)


@pytest.fixture(scope="module")
def tiny_llava():
    torch.manual_seed(0)
    return mmlens.load("tiny-llava")


def test_pooled_states_are_the_image_token_mean_and_text_rows_are_listed(tiny_llava):
    samples = [make_sample("val", i) for i in range(3)]
    mixed = samples[:2] + [Sample("text-1", None, "what colour ?")] + samples[2:]
    table = pooled_image_states(tiny_llava, mixed, layer=1, batch_size=2)
    assert table.ids == [s.id for s in samples] and table.text_only == ["text-1"] and table.layer == 1
    batch = tiny_llava.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    with torch.no_grad(), capture(tiny_llava, "lm.L1.resid") as captured:
        tiny_llava.forward(batch)
    hidden = captured["lm.L1.resid"]
    for row in range(3):
        expected = hidden[row, batch.layout.image_positions(row)].float().mean(0).numpy()
        np.testing.assert_allclose(table.vectors[row], expected, rtol=1e-5, atol=1e-5)
    result = prism_select(table, keep=0.34)
    assert "text-1" in result.kept and len(result.kept) == 2


def test_no_images_or_a_text_only_model_is_one_line(tiny_llava):
    with pytest.raises(MmlensError, match="no images to score"):
        pooled_image_states(tiny_llava, [Sample("t", None, "hi"), Sample("u", None, "yo")])
    with pytest.raises(MmlensError, match="text-only model"):
        pooled_image_states(mmlens.load("tiny-llama"), [make_sample("val", 0)])
    with pytest.raises(MmlensError, match="out of range"):
        pooled_image_states(tiny_llava, [make_sample("val", 0)], layer=99)
