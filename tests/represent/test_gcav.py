"""GCAV: alignment, fusion and decoding on synthetic CAVs; the projection classifier; bad input."""

import pytest
import torch

from mmlens.errors import MmlensError
from mmlens.represent.gcav import direction_accuracy, fit_gcav


def _cavs(seed: int = 0, runs: int = 6, layers: int = 3, width: int = 8, noise: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for c in range(3):  # a concept is one direction per layer, noisier at some layers than others
        base = torch.randn(layers, width, generator=g)
        scale = torch.linspace(0.1, noise, layers)[None, :, None]
        out[f"c{c}"] = torch.nn.functional.normalize(base + scale * torch.randn(runs, layers, width, generator=g), dim=-1)
    return out


def test_fused_vectors_stay_near_the_concept_and_vary_less_across_runs():
    cavs = _cavs()
    model = fit_gcav(cavs, steps=120)
    fused = torch.stack([model.fuse(run) for run in cavs["c0"]])  # (runs, layers, width)
    assert torch.allclose(fused.norm(dim=-1), torch.ones(fused.shape[:2]), atol=1e-5)
    mean = torch.nn.functional.normalize(cavs["c0"].mean(0), dim=-1)
    assert float((fused * mean).sum(-1).mean()) > 0.8  # keeps the concept
    spread_fused = float((fused - fused.mean(0)).norm(dim=-1).mean())
    spread_cavs = float((cavs["c0"] - cavs["c0"].mean(0)).norm(dim=-1).mean())
    assert spread_fused < spread_cavs  # one global vector per run: less run-to-run noise
    other = torch.stack([model.fuse(run) for run in cavs["c1"]])
    assert float((fused.mean(0) * other.mean(0)).sum(-1).abs().mean()) < 0.6  # concepts stay apart


def test_direction_accuracy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 4, generator=g) + torch.tensor([3.0, 0, 0, 0])
    b = torch.randn(30, 4, generator=g)
    assert direction_accuracy(a, b, torch.tensor([1.0, 0, 0, 0])) > 0.9
    assert direction_accuracy(a, b, torch.tensor([-1.0, 0, 0, 0])) > 0.9  # the sign is learned
    assert direction_accuracy(a, b, torch.tensor([0, 0, 0, 1.0])) < 0.8


def test_bad_input_gets_one_line():
    cavs = _cavs()
    with pytest.raises(MmlensError, match="at least 2 concepts"):
        fit_gcav({"c0": cavs["c0"]})
    with pytest.raises(MmlensError, match="one shape"):
        fit_gcav({"c0": cavs["c0"], "c1": cavs["c1"][:, :2]})
