"""SAE-V: cross-modal latent scores on hand-built codes with known cosines, sample sums, keep_top, a real store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae.codes import Codes, encode_store
from mmlens.sae.crossmodal import SaeVParams, keep_top, latent_cross_scores, sae_v_scores, sample_sums
from mmlens.store import Store
from tests.sae.shapes_fixtures import concept_sae, shapes_model, shapes_store  # noqa: F401

D_SAE = 4


def _codes(entries: list[tuple[int, int, float]], n: int) -> Codes:
    """Codes of ``n`` tokens, each holding at most one (latent, value): entries are (token, latent, value)."""
    latents = torch.zeros(n, 1, dtype=torch.int32)
    values = torch.zeros(n, 1)
    for token, latent, value in entries:
        latents[token, 0], values[token, 0] = latent, value
    return Codes("lm.L0.resid", np.arange(n), latents, values, D_SAE)


def _world():
    """Tokens 0-11 (6 text, 6 image) fire latent 0, residuals all one vector: cosine 1.
    Tokens 12-23 (6 text along x, 6 image along y) fire latent 1: cosine 0.
    Tokens 24-33 (10 image) fire latent 2: never cross-modal.
    Latent 3: 6 text tokens (34-39) weaker than 26 image tokens (40-65): its top 30 hold 4 text tokens, too few."""
    n = 66
    modality = np.array(["image"] * n, dtype=object)
    x = torch.zeros(n, 3)
    entries = []
    for t in range(12):
        modality[t] = "text" if t < 6 else "image"
        x[t] = torch.tensor([1.0, 1.0, 0.0])
        entries.append((t, 0, 1.0 + t))
    for t in range(12, 24):
        modality[t] = "text" if t < 18 else "image"
        x[t] = torch.tensor([1.0, 0.0, 0.0]) if t < 18 else torch.tensor([0.0, 1.0, 0.0])
        entries.append((t, 1, 2.0))
    for t in range(24, 34):
        entries.append((t, 2, 1.0))
        x[t] = torch.tensor([0.0, 0.0, 1.0])
    for t in range(34, 66):
        modality[t] = "text" if t < 40 else "image"
        x[t] = torch.tensor([0.0, 0.0, 1.0])
        entries.append((t, 3, 1.0 if t < 40 else 5.0))
    return _codes(entries, n), modality.astype(str), x


def test_latent_scores_follow_the_recipe():
    codes, modality, x = _world()
    scores, passed = latent_cross_scores(codes, modality, lambda rows: x[torch.as_tensor(rows)], SaeVParams())
    assert passed.tolist() == [True, True, False, False]
    assert scores[0].item() == pytest.approx(1.0)
    assert scores[1].item() == pytest.approx(0.0, abs=1e-7)
    assert scores[2:].tolist() == [0.0, 0.0]


def test_top_tokens_and_pairs_are_parameters():
    codes, modality, x = _world()
    read = lambda rows: x[torch.as_tensor(rows)]  # noqa: E731
    # with 40 top tokens latent 3 keeps all 6 of its text tokens: cross-modal (cosine 1 between z-vectors)
    scores, passed = latent_cross_scores(codes, modality, read, SaeVParams(top_tokens=40))
    assert passed[3] and scores[3].item() == pytest.approx(1.0)
    # needing 7 per modality drops every latent
    _, passed = latent_cross_scores(codes, modality, read, SaeVParams(min_per_modality=7, pairs=5))
    assert not passed.any()


def test_sample_sums_both_and_any():
    codes, modality, x = _world()
    # sample a: tokens 0-11 (latent 0 on both modalities); sample b: 24-33 (latent 2, image only) + rest
    ids = np.array(["a"] * 12 + ["b"] * 54)
    latent_scores = torch.tensor([0.75, 0.5, 0.25, 0.125])
    names, both = sample_sums(codes, ids, modality, latent_scores, "both")
    _, any_ = sample_sums(codes, ids, modality, latent_scores, "any")
    assert names == ["a", "b"]
    assert both.tolist() == pytest.approx([0.75, 0.5 + 0.125])  # b: latents 1 and 3 span both modalities
    assert any_.tolist() == pytest.approx([0.75, 0.5 + 0.25 + 0.125])


def test_keep_top_and_bad_parameters():
    kept, removed = keep_top(["a", "b", "c"], np.array([3.0, 1.0, 2.0]), 2 / 3)
    assert (kept, removed) == (["a", "c"], ["b"])
    with pytest.raises(MmlensError, match="fraction"):
        keep_top(["a"], np.array([1.0]), 0.0)
    for bad in (SaeVParams(within="some"), SaeVParams(pairs=6), SaeVParams(top_tokens=8), SaeVParams(top_latents=0)):
        with pytest.raises(MmlensError):
            bad.check()


def test_scores_on_a_store_cover_every_sample(shapes_store, concept_sae):
    sae, _ = concept_sae
    store = Store.open(shapes_store)
    params = SaeVParams(top_latents=2, top_tokens=10, min_per_modality=1, pairs=1, within="any")
    result = sae_v_scores(sae, store, params=params)
    assert sorted(result.sample_ids) == sorted(set(store.tokens.column("sample_id").to_pylist()))
    assert np.isfinite(result.sample_scores).all()
    # the built latents fire on image patches only: nothing is cross-modal, every score is 0
    assert not result.cross_modal.any() and (result.sample_scores == 0).all()
    same = sae_v_scores(sae, store, params=params, codes=encode_store(sae, store, top=8))
    assert np.array_equal(same.sample_scores, result.sample_scores)
    assert result.to_json()["cross_modal_latents"] == 0
