"""The SparseAutoencoder's four architectures and its bad input."""

from __future__ import annotations

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae.model import SparseAutoencoder


def _sae(architecture: str, k: int | None = 4) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 32, architecture, k=k)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae


def test_standard_is_relu_of_centred_input() -> None:
    sae, x = _sae("standard"), torch.randn(5, 8)
    expected = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    assert torch.allclose(sae.encode(x), expected)
    assert torch.allclose(sae(x), expected @ sae.W_dec + sae.b_dec)


def test_topk_keeps_the_k_largest_positive_values() -> None:
    sae, x = _sae("topk"), torch.randn(6, 8)
    acts, pre = sae.encode(x), sae.pre_activations(x)
    assert (acts.count_nonzero(-1) <= 4).all()
    kept = acts > 0
    assert torch.equal(acts[kept], pre[kept])
    for row in range(6):  # every kept value is at least the 4th largest pre-activation
        assert (acts[row][kept[row]] >= pre[row].topk(4).values[-1]).all()


def test_batchtopk_keeps_k_times_rows_in_training_and_thresholds_at_inference() -> None:
    sae, x = _sae("batchtopk"), torch.randn(10, 8)
    train = sae.activate(sae.pre_activations(x), batch=True)
    assert int(train.count_nonzero()) <= 40
    assert int(train.count_nonzero(-1).max()) > 0
    sae.threshold.fill_(0.5)
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre.relu() * (pre > 0.5))


def test_jumprelu_zeroes_below_threshold() -> None:
    sae, x = _sae("jumprelu"), torch.randn(4, 8)
    sae.threshold.copy_(torch.linspace(0, 1, 32))
    pre = sae.pre_activations(x)
    acts = sae.encode(x)
    assert torch.equal(acts, pre * (pre > sae.threshold))


def test_decoder_rows_start_at_unit_norm_and_config_round_trips() -> None:
    sae = SparseAutoencoder(8, 32, "topk", k=4, site="lm.L2.resid", model="shapes-llava")
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32))
    again = SparseAutoencoder.from_config(sae.config())
    assert again.config() == sae.config()
    assert again.extra == {"model": "shapes-llava"}


def test_rescaled_decoder_codes_are_unit_direction_coefficients_and_fold_exactly() -> None:
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 32, "topk", k=4, rescale_acts_by_decoder_norm=True)
    sae.reset_parameters(0.1)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1) + 0.5)  # rows of unequal norms, as training leaves them
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    assert SparseAutoencoder.from_config(sae.config()).rescale
    x = torch.randn(16, 8)
    codes, recon = sae.encode(x), sae(x)
    unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    assert torch.allclose(codes @ unit + sae.b_dec, recon, atol=1e-5)
    sae.fold_decoder_norm()
    assert not sae.rescale and "rescale_acts_by_decoder_norm" not in sae.config()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-6)
    assert torch.allclose(sae.encode(x), codes, atol=1e-5) and torch.allclose(sae(x), recon, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"architecture": "gated"}, "unknown SAE architecture"),
    ({"architecture": "topk", "k": 33}, "larger than the number of latents"),
    ({"architecture": "batchtopk", "k": 0}, "needs k >= 1"),
])
def test_bad_settings_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(MmlensError, match=message):
        SparseAutoencoder(8, 32, **kwargs)


def test_wrong_width_is_one_line() -> None:
    with pytest.raises(MmlensError, match="width 7 do not match"):
        _sae("topk").encode(torch.randn(2, 7))
