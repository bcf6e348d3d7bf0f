"""NeuronSet: plain-data round trip, and deactivation in forward passes and generation, in every tower."""

import pytest
import torch

import mmlens
from mmlens.neurons.neuron_set import NeuronSet
from mmlens import intervene
from mmlens.neurons.sites import neuron_sites, neuron_width, resolve_neuron_site


@pytest.fixture(scope="module")
def batch(tiny_llava, samples):
    return tiny_llava.prepare([s.prompt for s in samples[:2]], [[s.image] for s in samples[:2]])


def captured_neurons(model, batch, site, chosen=None, mode="zero", generate=False):
    """Neuron values at ``site`` as the next module sees them (deactivation hooks run first)."""
    seen = []
    record = {site: lambda x: seen.append(x.detach().clone())}
    with (chosen.deactivate(model, mode) if chosen else torch.no_grad()), intervene(model, record), torch.no_grad():
        if generate:
            model.generate(batch, max_new_tokens=3)
        else:
            model.forward(batch)
    return seen


def test_plain_data_round_trip():
    chosen = NeuronSet(["lm.L1.neurons", "vision.L0.neurons", "lm.L1.neurons"], torch.tensor([4, 9, 4]),
                       torch.tensor([0.5, 0.25, 0.125]), ["image", "colour", "text"], {"ratio": 0.02, "k": [1, 2]})
    tensors, header = chosen.to_tensors()
    assert header["sites"] == ["lm.L1.neurons", "vision.L0.neurons"] and tensors["sites"].tolist() == [0, 1, 0]
    loaded = NeuronSet.from_tensors(tensors, header)
    assert loaded.sites == chosen.sites and loaded.labels == chosen.labels and loaded.metadata == chosen.metadata
    assert torch.equal(loaded.indices, chosen.indices) and torch.equal(loaded.scores, chosen.scores)
    assert loaded.layers.tolist() == [1, 0, 1]
    assert loaded.by_site()["lm.L1.neurons"].tolist() == [4]
    with pytest.raises(mmlens.MmlensError):
        NeuronSet.from_tensors(tensors, {**header, "format": "something else"})


def test_zeroing_hits_exactly_the_chosen_units_at_every_position(tiny_llava, batch):
    site = "lm.L0.neurons"
    chosen = NeuronSet([site, site], torch.tensor([2, 70]), torch.zeros(2), ["image", "image"])
    (clean,) = captured_neurons(tiny_llava, batch, site)
    (edited,) = captured_neurons(tiny_llava, batch, site, chosen)
    assert torch.all(edited[..., [2, 70]] == 0)
    keep = torch.ones(edited.shape[-1], dtype=torch.bool)
    keep[[2, 70]] = False
    assert torch.equal(edited[..., keep], clean[..., keep])
    (after,) = captured_neurons(tiny_llava, batch, site)
    assert torch.equal(after, clean)  # hooks are gone


def test_layer_minimum_mode(tiny_llava, batch):
    site = "lm.L1.neurons"
    chosen = NeuronSet([site], torch.tensor([5]), torch.zeros(1), ["text"])
    (clean,) = captured_neurons(tiny_llava, batch, site, NeuronSet([], [], [], []))
    (edited,) = captured_neurons(tiny_llava, batch, site, chosen, mode="min")
    assert torch.equal(edited[..., 5], clean.amin(-1))  # the whole layer's minimum at each position
    assert torch.equal(torch.cat([edited[..., :5], edited[..., 6:]], -1), torch.cat([clean[..., :5], clean[..., 6:]], -1))
    with pytest.raises(mmlens.MmlensError):
        with chosen.deactivate(tiny_llava, mode="half"):
            pass


def test_deactivation_holds_in_every_generation_step(tiny_llava, batch):
    site = "lm.L1.neurons"
    chosen = NeuronSet([site] * 3, torch.tensor([0, 1, 127]), torch.zeros(3), ["text"] * 3)
    steps = captured_neurons(tiny_llava, batch, site, chosen, generate=True)
    assert len(steps) == 3 and steps[1].shape[1] == 1  # prompt, then one token per step (KV cache)
    assert all(torch.all(step[..., [0, 1, 127]] == 0) for step in steps)
    with torch.no_grad():
        clean = tiny_llava.generate(batch, max_new_tokens=3)
        with NeuronSet(site, torch.arange(128), torch.zeros(128), "all").deactivate(tiny_llava):
            silenced = tiny_llava.generate(batch, max_new_tokens=3)
        assert torch.equal(tiny_llava.generate(batch, max_new_tokens=3), clean)
    assert silenced.shape == clean.shape


def test_vision_and_projector_neurons(tiny_llava, batch):
    sites = neuron_sites(tiny_llava, ("lm", "vision", "projector"))
    assert sites[-3:] == ["vision.L0.neurons", "vision.L1.neurons", "projector.neurons"]
    assert resolve_neuron_site(tiny_llava, "projector.neurons").module is tiny_llava.hf.model.multi_modal_projector.linear_2
    assert neuron_width(tiny_llava, "vision.L1.neurons") == 64
    for site in ("vision.L1.neurons", "projector.neurons"):
        chosen = NeuronSet([site], torch.tensor([7]), torch.zeros(1), ["colour"])
        (clean,) = captured_neurons(tiny_llava, batch, site)
        (edited,) = captured_neurons(tiny_llava, batch, site, chosen)
        assert torch.all(edited[..., 7] == 0) and not torch.all(clean[..., 7] == 0)
        assert torch.equal(torch.cat([edited[..., :7], edited[..., 8:]], -1), torch.cat([clean[..., :7], clean[..., 8:]], -1))
    with pytest.raises(mmlens.MmlensError):
        with NeuronSet(["lm.L0.neurons"], torch.tensor([128]), torch.zeros(1), ["x"]).deactivate(tiny_llava):
            pass


def test_where_refuses_a_label_or_tower_the_set_cannot_hold():
    chosen = NeuronSet("lm.L0.neurons", torch.tensor([1, 2]), torch.zeros(2), ["image", "text"])
    with pytest.raises(mmlens.MmlensError, match="unknown label 'images'; choose one of image, text"):
        chosen.where(label="images")
    with pytest.raises(mmlens.MmlensError, match="unknown tower 'llm'"):
        chosen.where(tower="llm")
    assert len(chosen.where(label="special")) == 0  # a modality without neurons: empty, not an error
    domains = NeuronSet("lm.L0.neurons", torch.tensor([1]), torch.zeros(1), ["count"],
                        {"domains": ["count", "colour"]})
    assert len(domains.where(label="colour")) == 0
