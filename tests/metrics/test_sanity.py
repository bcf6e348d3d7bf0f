"""Model-randomisation sanity checks: which weights change, seeding, and the statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmlens
from mmlens.attribution.api import METHODS
from mmlens.errors import MmlensError
from mmlens.metrics.sanity import (
    bootstrap_mean, cascade, image_grids, independent, randomise_layers, randomised, spearman_rows,
)
from mmlens.readout import build_targets


def _state(model: mmlens.Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.hf.state_dict().items()}


def _layer_of(key: str) -> int | None:
    """Decoder layer index of a state-dict key, None outside the decoder layers."""
    parts = key.split(".")
    if "language_model" not in parts and "model" not in parts[:1]:
        return None
    if "layers" in parts and "vision_tower" not in parts:
        return int(parts[parts.index("layers") + 1])
    return None


def test_orders() -> None:
    assert list(cascade(4)) == [(3,), (3, 2), (3, 2, 1), (3, 2, 1, 0)]
    assert list(independent(4)) == [(0,), (1,), (2,), (3,)]


def test_randomised_copy_changes_only_its_layers(tiny_llava: mmlens.Model) -> None:
    before = _state(tiny_llava)
    last = tiny_llava.n_layers - 1
    random = randomised(tiny_llava, [last], seed=3)
    after = _state(random)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was randomised"
    assert {_layer_of(k) for k in changed} == {last}
    # Every weight matrix of the chosen layer is re-drawn (norm scales may already be one).
    matrices = [k for k in before if _layer_of(k) == last and before[k].ndim == 2]
    assert matrices and all(k in changed for k in matrices)
    # The original is untouched.
    assert all(torch.equal(v, tiny_llava.hf.state_dict()[k]) for k, v in before.items())


def test_init_scale_and_norms(tiny_llava: mmlens.Model) -> None:
    random = randomised(tiny_llava, [0], seed=0)
    layer = random.decoder_layers[0]
    up = layer.mlp.up_proj.weight
    assert float(up.detach().std()) == pytest.approx(up.shape[1] ** -0.5, rel=0.2)
    assert torch.all(layer.input_layernorm.weight == 1)


def test_seeded_per_layer(tiny_llama: mmlens.Model) -> None:
    # Layer 0 gets the same weights whether randomised alone or with layer 1, and the global RNG is left alone.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    alone = randomised(tiny_llama, [0], seed=5)
    both = randomised(tiny_llama, [1, 0], seed=5)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(alone.decoder_layers[0].self_attn.q_proj.weight, both.decoder_layers[0].self_attn.q_proj.weight)
    other = randomised(tiny_llama, [0], seed=6)
    assert not torch.equal(alone.decoder_layers[0].self_attn.q_proj.weight, other.decoder_layers[0].self_attn.q_proj.weight)


def test_in_place(tiny_llama: mmlens.Model) -> None:
    model = randomised(tiny_llama, [], seed=0)  # a plain copy to randomise in place
    weight = model.decoder_layers[1].mlp.down_proj.weight.detach().clone()
    assert randomise_layers(model, [1]) is model
    assert not torch.equal(model.decoder_layers[1].mlp.down_proj.weight, weight)


def test_bad_layer(tiny_llama: mmlens.Model) -> None:
    with pytest.raises(MmlensError, match="no decoder layer 7"):
        randomise_layers(tiny_llama, [7])


def test_heatmaps_decorrelate_on_a_tiny_model(tiny_llava: mmlens.Model, noise) -> None:
    images = [[noise(64, 64, seed)] for seed in range(3)]
    batch = tiny_llava.prepare(["<image> what colour ?"] * 3, images)
    targets = build_targets(tiny_llava, batch, answer=["red"] * 3)
    trained = image_grids(METHODS["gradient_x_input"](tiny_llava, targets).scores[:, 0], batch.layout)
    assert trained.shape == (3, 16) and not np.isnan(trained).any()
    same = spearman_rows(trained, trained)
    assert np.allclose(same, 1.0)
    random = randomised(tiny_llava, range(tiny_llava.n_layers), seed=0)
    moved = image_grids(METHODS["gradient_x_input"](random, targets).scores[:, 0], batch.layout)
    assert not np.allclose(spearman_rows(trained, moved), 1.0)


def test_spearman_rows_and_bootstrap() -> None:
    a = np.array([[1.0, 2, 3, 4], [1, 1, 1, 1]])
    b = np.array([[-1.0, -2, -3, -4], [4, 3, 2, 1]])
    rho = spearman_rows(a, b)
    assert rho[0] == -1.0 and np.isnan(rho[1])  # a constant heatmap has no ranking
    assert spearman_rows(a[:1], b[:1], absolute=True)[0] == 1.0
    with pytest.raises(MmlensError):
        spearman_rows(a, b[:, :3])
    mean, low, high = bootstrap_mean(np.r_[np.full(20, 0.2), np.full(20, 0.4), np.nan])
    assert mean == pytest.approx(0.3) and 0.2 < low < 0.3 < high < 0.4
    assert bootstrap_mean([0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert all(np.isnan(bootstrap_mean([np.nan])))
