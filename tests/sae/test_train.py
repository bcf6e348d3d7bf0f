"""SAE training: it learns, it resumes to the same weights, it stops on NaN with one line."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae.activations import SiteActivations, TensorActivations
from mmlens.sae.files import load_sae
from mmlens.sae.train import TrainConfig, auxk_loss, geometric_median, train_sae

# The same checks on an accelerator: MMLENS_TEST_DEVICE=cuda python -m pytest tests/sae/test_train.py
DEVICE = os.environ.get("MMLENS_TEST_DEVICE", "cpu")
FAST = dict(expansion=4, batch_size=64, lr=3e-3, checkpoint_every=5, log_every=5, dead_tokens=256)


@pytest.fixture(scope="module")
def acts(sae_store) -> SiteActivations:
    return SiteActivations(sae_store, "lm.L1.resid")


def _fvu(sae, acts) -> float:
    x = acts.read().to(sae.W_dec.device)
    with torch.no_grad():
        return float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "standard"])
def test_each_architecture_learns(acts, architecture, tmp_path) -> None:
    config = TrainConfig(architecture=architecture, k=8, steps=60, l1_coefficient=0.05, **FAST)
    sae = train_sae(acts, config, tmp_path / "sae", device=DEVICE)
    assert _fvu(sae, acts) < 0.5  # far below the 1.0 of predicting the mean
    assert torch.allclose(sae.W_dec.norm(dim=-1).cpu(), torch.ones(sae.d_sae), atol=1e-5)
    if architecture == "batchtopk":
        assert float(sae.threshold.min()) > 0  # the learned inference threshold
        l0 = float((sae.encode(acts.read()) > 0).sum(-1).float().mean())
        assert 2 < l0 < 32  # the threshold keeps about k = 8 per token
    loaded = load_sae(tmp_path / "sae")
    x = acts.read([0, 1, 2])
    assert torch.allclose(loaded.encode(x), sae.encode(x).cpu(), atol=1e-6 if DEVICE == "cpu" else 1e-4)
    summary = json.loads((tmp_path / "sae" / "training.json").read_text())
    assert summary["steps"] == 60 and summary["history"][-1]["step"] == 60


@pytest.mark.parametrize("decoder_init_norm", [None, 0.1])
def test_killed_run_resumes_to_the_same_weights(acts, tmp_path, decoder_init_norm) -> None:
    config = TrainConfig(steps=17, k=8, decoder_init_norm=decoder_init_norm, **FAST)
    whole = train_sae(acts, config, tmp_path / "whole", device=DEVICE)
    assert torch.allclose(whole.W_dec.norm(dim=-1).cpu(), torch.ones(whole.d_sae), atol=1e-5)  # files: unit rows
    kept = load_sae(tmp_path / "whole" / "checkpoint")
    assert kept.rescale == (decoder_init_norm is not None)  # the checkpoint keeps SAELens-style free rows as they are
    if kept.rescale:
        assert float(kept.W_dec.detach().norm(dim=-1).max()) < 0.5
        x = acts.read([0, 1, 2])
        assert torch.allclose(kept(x), whole.cpu()(x), atol=1e-4)  # folding kept the function

    def kill(step: int) -> None:
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(acts, config, tmp_path / "killed", on_step=kill, device=DEVICE)
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 10
    resumed = train_sae(acts, config, tmp_path / "killed", device=DEVICE)
    assert resumed.W_dec.device.type == torch.device(DEVICE).type
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_tensor_in_memory_trains_like_the_store_it_came_from(acts) -> None:
    config = TrainConfig(steps=12, k=8, **FAST)
    from_store = train_sae(acts, config, device=DEVICE)
    from_tensor = train_sae(TensorActivations(acts.read().to(DEVICE), acts.site), config, device=DEVICE)
    for name, value in from_store.state_dict().items():  # same batches, same b_dec start
        assert torch.allclose(value, from_tensor.state_dict()[name], atol=1e-5), name
    with pytest.raises(MmlensError, match="non-empty"):
        TensorActivations(torch.zeros(0, 4))


def test_resume_with_other_settings_is_refused(acts, tmp_path) -> None:
    train_sae(acts, TrainConfig(steps=5, k=8, **FAST), tmp_path / "run")
    with pytest.raises(MmlensError, match="other settings \\(k\\)"):
        train_sae(acts, TrainConfig(steps=5, k=4, **FAST), tmp_path / "run")


class _Poisoned:
    """The real rows, with NaN from batch 7 on."""

    def __init__(self, acts: SiteActivations) -> None:
        self.acts, self.width, self.site, self.store, self.modality = acts, acts.width, acts.site, acts.store, "all"

    def __len__(self) -> int:
        return len(self.acts)

    def read(self, rows=None):
        return self.acts.read(rows)

    def stream(self, batch_size, seed=0, start=0, stop=None):
        for step, (x, rows) in enumerate(self.acts.stream(batch_size, seed, start, stop), start=start):
            yield (x * float("nan") if step >= 7 else x), rows


def test_nan_stops_with_the_step_and_keeps_the_checkpoint(acts, tmp_path) -> None:
    with pytest.raises(MmlensError, match="loss is nan at step 8; the last good checkpoint \\(5 steps\\)"):
        train_sae(_Poisoned(acts), TrainConfig(steps=20, k=8, **FAST), tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    assert torch.isfinite(load_sae(tmp_path / "run" / "checkpoint").W_enc).all()


def test_k_larger_than_latents_is_one_line(acts) -> None:
    with pytest.raises(MmlensError, match="larger than the number of latents"):
        train_sae(acts, TrainConfig(k=100, d_sae=64, steps=1))


def test_auxk_revives_dead_latents_only() -> None:
    from mmlens.sae.model import SparseAutoencoder

    torch.manual_seed(0)
    sae, x = SparseAutoencoder(8, 16, "topk", k=2), torch.randn(32, 8)
    pre, residual = sae.pre_activations(x), torch.randn(32, 8)
    none_dead = torch.zeros(16, dtype=torch.bool)
    assert float(auxk_loss(sae, pre, residual, none_dead, 4)) == 0.0
    dead = none_dead.clone()
    dead[:3] = True
    auxk_loss(sae, pre, residual, dead, 4).backward()
    assert sae.W_dec.grad[3:].abs().sum() == 0 and sae.W_dec.grad[:3].abs().sum() > 0


def test_geometric_median_resists_outliers() -> None:
    x = torch.cat([torch.randn(200, 4) * 0.1, torch.full((20, 4), 1000.0)])
    assert geometric_median(x).abs().max() < 1.0 < x.mean(0).abs().max()
