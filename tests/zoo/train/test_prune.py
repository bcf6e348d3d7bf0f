"""Pruning decoder MLP neurons: scores, kept indices, and a real smaller model."""

from __future__ import annotations

import torch

from mmlens.zoo.shapes_llava import load
from mmlens.zoo.train.prune import keep_indices, neuron_scores, prune_mlp


def test_keep_indices_drop_the_lowest_scores_per_layer() -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.5, 9.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    keep = keep_indices(scores, 0.4)
    assert [k.tolist() for k in keep] == [[0, 2, 4], [2, 3, 4]]


def test_pruned_mlp_equals_the_original_with_those_neurons_zeroed() -> None:
    torch.manual_seed(0)
    model, processor = load()
    scores = neuron_scores(model, processor, n=8, batch=8)
    assert scores.shape == (4, 256) and bool((scores >= 0).all()) and scores.std() > 0
    keep = keep_indices(scores, 0.3)
    small = prune_mlp(model, keep)
    assert small.config.text_config.intermediate_size == 179
    assert small.model.language_model.layers[0].mlp.down_proj.weight.shape == (128, 179)
    x = torch.randn(2, 5, 128)
    mlp, small_mlp = model.model.language_model.layers[2].mlp, small.model.language_model.layers[2].mlp
    zeroed = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    mask = torch.zeros(256)
    mask[keep[2]] = 1
    with torch.no_grad():
        assert torch.allclose(small_mlp(x), mlp.down_proj(zeroed * mask), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_pruning_nothing_changes_nothing() -> None:
    model, processor = load()
    same = prune_mlp(model, [torch.arange(256)] * 4)
    a, b = model.state_dict(), same.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
