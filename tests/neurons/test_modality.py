"""MINER statistics, normalisation, aggregation and budgets."""

import pytest
import torch

import mmlens
from mmlens.data.shapes import make_sample
from mmlens.layout import Modality
from mmlens.neurons.modality import (
    MODALITIES,
    layer_statistics,
    minmax,
    modality_scores,
    parse_weights,
    random_neurons,
    select_modality_neurons,
)

from tests.neurons.conftest import gate_activations

STATS = ("frac", "mean", "max", "attn_frac", "attn_mean")


@pytest.fixture(scope="module")
def scores(tiny_llava, samples):
    return modality_scores(tiny_llava, samples, statistics=STATS, progress=False)


def direct_statistics(model, sample, value="gate"):
    """Slow reference: one sample alone, explicit loops over modalities, layers and positions."""
    batch = model.prepare(sample.prompt, [sample.image])
    gates, captured = gate_activations(model, batch, also=["lm.L*.neurons", "lm.L*.attn_probs"])
    out = {name: {} for name in STATS}
    for m, modality in enumerate(MODALITIES):
        positions = batch.layout.mask(modality)[0].nonzero().flatten().tolist()
        for layer in range(model.n_layers):
            acts = (gates[layer] if value == "gate" else captured[f"lm.L{layer}.neurons"])[0].float()
            weights = captured[f"lm.L{layer}.attn_probs"][0, :, -1, :].mean(0)
            rows = torch.stack([acts[p] for p in positions])
            w = torch.stack([weights[p] for p in positions])[:, None]
            raw = {"frac": (rows > 0).float().mean(0), "mean": rows.mean(0), "max": rows.max(0).values,
                   "attn_frac": ((rows > 0).float() * w).sum(0) / w.sum(), "attn_mean": (rows * w).sum(0) / w.sum()}
            for name, stat in raw.items():
                low, high = stat.min(), stat.max()
                out[name][(m, layer)] = (stat - low) / (high - low) if high > low else torch.zeros_like(stat)
    return out


def test_streamed_statistics_equal_a_slow_direct_computation(tiny_llava, samples, scores):
    per_sample = [direct_statistics(tiny_llava, sample) for sample in samples]
    for name in STATS:
        got = scores.statistic(name)
        for (m, layer) in per_sample[0][name]:
            expected = torch.stack([ref[name][(m, layer)] for ref in per_sample]).mean(0)
            torch.testing.assert_close(got[m, layer], expected, rtol=1e-4, atol=1e-5, msg=f"{name} {m} {layer}")


def test_down_proj_input_values_on_request(tiny_llava, samples):
    scores = modality_scores(tiny_llava, samples[:2], statistics=("frac", "max"), value="input", progress=False)
    per_sample = [direct_statistics(tiny_llava, sample, value="input") for sample in samples[:2]]
    for name in ("frac", "max"):
        for (m, layer) in per_sample[0][name]:
            expected = (per_sample[0][name][(m, layer)] + per_sample[1][name][(m, layer)]) / 2
            torch.testing.assert_close(scores.statistic(name)[m, layer], expected, rtol=1e-4, atol=1e-5)


def test_each_statistic_is_normalised_within_its_layer(tiny_llava, samples):
    one = modality_scores(tiny_llava, samples[:1], statistics=("mean", "max"), progress=False)
    for name in ("mean", "max"):
        value = one.statistic(name)  # one sample: every (modality, layer) row spans exactly [0, 1]
        assert torch.allclose(value.amin(-1), torch.zeros(value.shape[:2]))
        assert torch.allclose(value.amax(-1), torch.ones(value.shape[:2]))
    assert minmax(torch.tensor([3.0, 3.0])).tolist() == [0.0, 0.0]


def test_aggregation_is_over_samples_then_over_datasets(tiny_llava, samples):
    split = modality_scores(tiny_llava, {"a": samples[:1], "b": samples[1:4]}, statistics=("mean",), progress=False)
    a = modality_scores(tiny_llava, samples[:1], statistics=("mean",), progress=False).statistic("mean")
    b = modality_scores(tiny_llava, samples[1:4], statistics=("mean",), progress=False).statistic("mean")
    torch.testing.assert_close(split.statistic("mean"), (a + b) / 2)  # datasets weigh equally, whatever their size
    first = modality_scores(tiny_llava, {"a": samples[:1]}, statistics=("mean",), progress=False)
    second = modality_scores(tiny_llava, {"b": samples[1:4]}, statistics=("mean",), progress=False)
    torch.testing.assert_close(first.merge(second).statistic("mean"), split.statistic("mean"))
    assert split.counts.tolist() == [[1, 1, 1], [3, 3, 3]]


def test_statistics_of_a_hand_made_batch():
    acts = torch.tensor([[[1.0, -1.0], [3.0, 2.0], [9.0, 9.0]]])  # one sample, 3 positions, 2 neurons
    masks = torch.tensor([[[True, True, False]]])  # the modality holds positions 0 and 1
    weights = torch.tensor([[0.25, 0.75, 0.0]])
    stats = layer_statistics(acts, masks, weights, STATS)
    assert stats["frac"].tolist() == [[[1.0, 0.5]]]
    assert stats["mean"].tolist() == [[[2.0, 0.5]]]
    assert stats["max"].tolist() == [[[3.0, 2.0]]]
    assert stats["attn_frac"].tolist() == [[[1.0, 0.75]]]
    assert stats["attn_mean"].tolist() == [[[2.5, 1.25]]]


@pytest.mark.parametrize("budget", ["global", "layer", "modality"])
def test_budgets_select_exactly_k(scores, budget):
    layers, width = scores.statistic("mean").shape[1:]
    ratio = 0.05
    k = round(ratio * layers * width)
    chosen = select_modality_neurons(scores, ratio=ratio, budget=budget)
    combined = scores.combined(None)
    if budget == "global":
        assert len(chosen) == k
        best = combined.max(0).values.flatten()
        assert torch.allclose(chosen.scores.sort().values, best.topk(k).values.sort().values)
        return
    for label in ("image", "text", "special"):
        part = chosen.where(label=label)
        assert len(part) == k and len(set(zip(part.sites, part.indices.tolist()))) == k
        if budget == "layer":
            per_layer = torch.bincount(part.layers, minlength=layers)
            assert per_layer.tolist() == [k // layers + (i < k % layers) for i in range(layers)]
        else:  # network-wide top k of this modality's combined score
            m = scores.modalities.index(label)
            assert torch.allclose(part.scores.sort().values, combined[m].flatten().topk(k).values.sort().values)


def test_exclusive_selection_gives_each_neuron_one_modality(scores):
    chosen = select_modality_neurons(scores, ratio=0.1, budget="modality", exclusive=True)
    keys = list(zip(chosen.sites, chosen.indices.tolist()))
    assert len(keys) == len(set(keys))
    shared = select_modality_neurons(scores, ratio=0.1, budget="modality", weights="frac")
    assert chosen.metadata["exclusive"] and not shared.metadata["exclusive"]


def test_random_neurons_and_weights(tiny_llava):
    drawn = random_neurons(tiny_llava, 40, seed=3)
    keys = set(zip(drawn.sites, drawn.indices.tolist()))
    assert len(keys) == 40 and all(0 <= i < 128 for _, i in keys)
    assert random_neurons(tiny_llava, 40, seed=3).indices.tolist() == drawn.indices.tolist()
    assert parse_weights("0.2*frac+0.8*max") == {"frac": 0.2, "max": 0.8}
    with pytest.raises(mmlens.MmlensError):
        parse_weights("mean+banana")


def test_text_only_model_has_no_image_neurons(tiny_llama):
    scores = modality_scores(tiny_llama, [make_sample("val", 0)], progress=False)
    assert scores.present == ["text", "special"]
    assert set(select_modality_neurons(scores, ratio=0.05).labels) == {"text", "special"}
    assert scores.counts[0, MODALITIES.index(Modality.IMAGE)] == 0
