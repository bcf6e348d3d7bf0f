"""Crosscoder: BatchTopK rule, save/load, paired stores, training on a planted two-model world, latent scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.sae.crosscoder import (Crosscoder, CrosscoderConfig, PairedActivations, load_crosscoder,
                                   save_crosscoder, train_crosscoder)
from mmlens.sae.crosscoder_scaling import analyse, auroc_columns, best_latent, classify, relative_norms


class MemoryPair:
    """Paired rows in memory with :class:`PairedActivations`' interface (what training and analysis use)."""

    def __init__(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        self.xa, self.xb, self.width, self.site = xa, xb, xa.shape[1], "planted"
        self.names, self.stores = ("A", "B"), ("memory-a", "memory-b")

    def __len__(self) -> int:
        return len(self.xa)

    def read(self, rows=None):
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        return self.xa[rows], self.xb[rows]

    def stream(self, batch_size, seed=0, start=0, stop=None):
        rng = np.random.default_rng(seed)
        for _ in range(start, stop):
            yield self.read(rng.choice(len(self), batch_size, replace=False))


def planted(n: int = 4096, d: int = 16, seed: int = 0):
    """Two models' activations from 12 sparse features: 8 shared, 2 A-only, 2 B-only.

    As in a fine-tuned model, B's shared directions are A's, slightly moved.
    """
    rng = torch.Generator().manual_seed(seed)
    shared_a = torch.randn(8, d, generator=rng)
    shared_b = shared_a + 0.2 * torch.randn(8, d, generator=rng)
    only_a, only_b = torch.randn(2, d, generator=rng), torch.randn(2, d, generator=rng)
    dirs = [t / t.norm(dim=-1, keepdim=True) for t in (shared_a, shared_b, only_a, only_b)]
    codes = torch.rand(n, 12, generator=rng) * (torch.rand(n, 12, generator=rng) < 0.15)
    xa = codes[:, :8] @ dirs[0] + codes[:, 8:10] @ dirs[2]
    xb = codes[:, :8] @ dirs[1] + codes[:, 10:12] @ dirs[3]
    return xa, xb, codes, dirs[3]


def test_batchtopk_keeps_k_per_row_on_average_and_ranks_by_decoder_norm():
    cc = Crosscoder(4, 8, k=2)
    pre = torch.randn(5, 8).abs() + 0.1
    f = cc.activate(pre, batch=True)
    assert int((f > 0).sum()) == 10
    with torch.no_grad():
        cc.W_dec[0].mul_(1000)  # latent 0's decoder dominates: it wins wherever it is positive
    assert (cc.activate(pre, batch=True)[:, 0] > 0).all()
    with torch.no_grad():
        cc.threshold.fill_(1e9)
    assert int((cc.activate(pre) > 0).sum()) == 0  # inference: the learned threshold, not k


def test_bad_sizes_are_one_line():
    with pytest.raises(MmlensError, match="k=9"):
        Crosscoder(4, 8, k=9)
    cc = Crosscoder(4, 8, k=2)
    with pytest.raises(MmlensError, match="width 5"):
        cc.encode(torch.zeros(1, 4), torch.zeros(1, 5))
    with pytest.raises(MmlensError, match="k=64"):
        train_crosscoder(MemoryPair(torch.zeros(64, 4), torch.zeros(64, 4)), CrosscoderConfig(k=64, expansion=2))


def test_save_load_round_trip(tmp_path):
    cc = Crosscoder(4, 8, k=2, site="lm.L1.resid", models=("a", "b"))
    with torch.no_grad():
        cc.threshold.fill_(0.3)
        cc.b_dec.normal_()
    back = load_crosscoder(save_crosscoder(cc, tmp_path / "cc"))
    assert (back.k, back.site, back.models) == (2, "lm.L1.resid", ("a", "b"))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(back, name), getattr(cc, name))
    with pytest.raises(MmlensError, match="no crosscoder"):
        load_crosscoder(tmp_path / "none")


def test_relative_norms_and_classes():
    delta = relative_norms(torch.tensor([[1.0, 0.05], [1.0, 0.8], [0.02, 1.0]]))
    assert classify(delta).tolist() == ["A-only", "shared", "B-only"]
    assert auroc_columns(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([True, False])).tolist() == [1.0, 0.0]
    chosen = best_latent(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]),
                         np.array([1, 0, 1, 0], bool), np.array([1, 1, 0, 0], bool), [5, 6])
    assert (chosen["latent"], chosen["test_auroc"]) == (5, 1.0)


@pytest.fixture(scope="module")
def trained():
    """A crosscoder trained on the planted world (lr 1e-2: the world is tiny), its data and its report."""
    torch.manual_seed(0)
    xa, xb, codes, b_dirs = planted(n=2048)
    pair = MemoryPair(xa, xb)
    cc = train_crosscoder(pair, CrosscoderConfig(k=3, expansion=4, steps=200, batch_size=128, lr=1e-2,
                                                 dead_tokens=5000))
    return cc, pair, codes, b_dirs, analyse(cc, pair)


def test_training_finds_the_planted_model_only_features(trained):
    cc, pair, codes, b_dirs, report = trained
    assert report.fvu["A"] < 0.05 and report.fvu["B"] < 0.05
    counts = report.counts()
    assert counts["B-only"] >= 2 and counts["A-only"] >= 1
    # each planted B-only feature has a B-only latent that decodes it in B and fires where it is on
    with torch.no_grad():
        f = cc.encode(*pair.read())
    b_only = report.latents("B-only")
    for i in range(2):
        cosines = torch.nn.functional.cosine_similarity(cc.W_dec[b_only, 1].detach(), b_dirs[i][None], dim=-1)
        best = b_only[int(cosines.argmax())]
        assert float(cosines.max()) > 0.9
        assert auroc_columns(f[:, [best]], (codes[:, 10 + i] > 0).numpy())[0] > 0.95
        assert report.flags[best] == [] and abs(report.nu_error[best]) < 0.5  # latent scaling keeps it
    assert counts["B-only surviving"] >= 2


def test_latent_scaling_flags_complete_shrinkage(trained):
    # a shared latent whose A decoder is cut to nearly nothing looks B-only, but model A's error still holds it
    cc, pair, _, _, report = trained
    j = report.latents("shared")[0]  # the most firing shared latent
    copy = Crosscoder(cc.d_in, cc.d_sae, cc.k)
    copy.load_state_dict(cc.state_dict())
    with torch.no_grad():
        before = copy.norms()[j].sum()
        copy.W_dec[j, 0].mul_(0.01)
        copy.W_enc[:, :, j].mul_(before / copy.norms()[j].sum())  # it still ranks (and fires) as before
        copy.b_enc[j].mul_(before / copy.norms()[j].sum())
    shrunk = analyse(copy, pair)
    assert shrunk.label[j] == "B-only" and shrunk.fires[j] == report.fires[j]
    assert "shrinkage" in shrunk.flags[j] and shrunk.nu_error[j] > 0.5
    assert report.flags[j] == []  # a shared latent is never flagged


def test_paired_stores_align_and_refuse_others(sae_store, tmp_path):
    pair = PairedActivations(sae_store, sae_store, "lm.L1.resid")
    xa, xb = pair.read([0, 3])
    assert torch.equal(xa, xb) and len(pair) == len(pair.a)
    xa, xb = next(pair.stream(8, seed=1))
    assert torch.equal(xa, xb)  # the same rows of both stores
    with pytest.raises(MmlensError, match="do not hold the same"):
        PairedActivations(sae_store, sae_store, "lm.L1.resid", "image").__class__(sae_store, _other_store(
            sae_store, tmp_path), "lm.L1.resid")


def _other_store(store, tmp_path):
    """A store of fewer samples than ``store`` (the first 6), through the same model."""
    import mmlens
    from mmlens.data.readers import open_reader
    from mmlens.store.harvest import harvest

    out = tmp_path / "other"
    harvest(mmlens.load("tiny-llava"), open_reader("shapes:train[0:6]"), out, "lm.L1.resid", shard_size=6)
    return out
