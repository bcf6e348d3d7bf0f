"""SAE evaluation: FVU, L0, dead/dense latents per modality, and loss recovered through the model."""

from __future__ import annotations

import math

import pytest
import torch

from mmlens.data.readers import open_reader
from mmlens.errors import MmlensError
from mmlens.sae.activations import SiteActivations
from mmlens.sae.evaluate import loss_recovered, reconstruction
from mmlens.sae.model import SparseAutoencoder


def _identity_sae(width: int, site: str) -> SparseAutoencoder:
    """An SAE that reconstructs exactly: +x and -x latents for each dimension (ReLU keeps one)."""
    sae = SparseAutoencoder(width, 2 * width, "standard", site=site)
    eye = torch.eye(width)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_exact_sae_has_zero_fvu_and_full_recovery(sae_store, tiny_llava) -> None:
    acts = SiteActivations(sae_store, "lm.L1.resid")
    sae = _identity_sae(acts.width, "lm.L1.resid")
    stats = reconstruction(sae, acts)
    assert set(stats) == {"image", "text", "all"}
    assert stats["all"]["fvu"] < 1e-10
    assert stats["image"]["tokens"] + stats["text"]["tokens"] <= stats["all"]["tokens"]
    assert 0 < stats["all"]["l0"] <= acts.width
    samples = [s for _, s in open_reader("shapes:train[0:6]").read()]
    result = loss_recovered(tiny_llava, sae, samples, batch_size=4)
    for split in ("image", "text", "all"):
        assert result[split]["sae_loss"] == pytest.approx(result[split]["clean_loss"], abs=1e-4)
        assert result[split]["recovered"] == pytest.approx(1.0, abs=1e-3) or math.isnan(result[split]["recovered"])
    assert result["all"]["zero_loss"] != pytest.approx(result["all"]["clean_loss"])


def test_zero_sae_recovers_nothing_and_everything_is_dead(sae_store, tiny_llava) -> None:
    acts = SiteActivations(sae_store, "lm.L1.resid")
    sae = SparseAutoencoder(acts.width, 16, "standard", site="lm.L1.resid")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)  # nothing fires: the reconstruction is b_dec = 0, i.e. zero ablation
    stats = reconstruction(sae, acts)
    assert stats["all"]["dead"] == 16 and stats["all"]["l0"] == 0
    assert stats["all"]["fvu"] >= 1.0
    result = loss_recovered(tiny_llava, sae, [s for _, s in open_reader("shapes:train[0:4]").read()], splits=["all"])
    assert result["all"]["recovered"] == pytest.approx(0.0, abs=1e-6)


def test_dense_latent_is_counted(sae_store) -> None:
    acts = SiteActivations(sae_store, "lm.L0.resid", "text")
    sae = SparseAutoencoder(acts.width, 8, "standard")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.copy_(torch.tensor([1.0] + [-1.0] * 7))  # latent 0 always fires
    stats = reconstruction(sae, acts)
    assert stats["text"]["dense"] == 1 and stats["text"]["dead"] == 7
    assert "image" not in stats


def test_width_mismatch_is_one_line(sae_store) -> None:
    acts = SiteActivations(sae_store, "lm.L0.resid")
    with pytest.raises(MmlensError, match="SAE's d_in is 7"):
        reconstruction(SparseAutoencoder(7, 14, "topk", k=2), acts)
