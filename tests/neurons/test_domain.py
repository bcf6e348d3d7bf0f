"""MMNeuron: activation probabilities per domain, DAPE, and the selection rule."""

import math

import numpy as np
import pytest
import torch

import mmlens
from mmlens.data.shapes import make_sample
from mmlens.layout import Modality
from mmlens.neurons.domain import DomainScores, dape, domain_scores, select_domain_neurons
from mmlens import intervene
from tests.neurons.conftest import gate_activations


@pytest.fixture(scope="module")
def domains():
    return {"colour": [make_sample("val", i, "colour") for i in range(3)],
            "count": [make_sample("val", i + 10, "count") for i in range(2)]}


def test_dape_is_the_entropy_of_probabilities_normalised_over_domains():
    probs = torch.rand(4, 50, dtype=torch.float64)
    probs[:, 0] = torch.tensor([0.3, 0.0, 0.0, 0.0])  # one domain only: entropy 0
    probs[:, 1] = 0.0  # never active: the maximum, log(domains)
    expected = []
    for column in probs.T.numpy():
        shares = column / column.sum() if column.sum() > 0 else np.full(4, 0.25)
        expected.append(-sum(p * math.log(p) for p in shares if p > 0))
    torch.testing.assert_close(dape(probs), torch.tensor(expected, dtype=torch.float64))
    assert dape(probs)[0] == 0 and math.isclose(float(dape(probs)[1]), math.log(4))


def test_probabilities_equal_direct_counts(tiny_llava, domains):
    scores = domain_scores(tiny_llava, domains, progress=False)
    for d, items in enumerate(domains.values()):
        active = {site: 0 for site in ("lm.L1.neurons", "vision.L0.neurons", "projector.neurons")}
        tokens = dict.fromkeys(active, 0)
        for sample in items:  # one at a time: no padding at all
            batch = tiny_llava.prepare(sample.prompt, [sample.image])
            seen = {}
            with intervene(tiny_llava, {s: (lambda s: lambda x: seen.__setitem__(s, x.detach()))(s) for s in active}), \
                    torch.no_grad():
                tiny_llava.forward(batch)
            seen["lm.L1.neurons"] = gate_activations(tiny_llava, batch)[1]  # decoder neurons: act(gate) as in LAPE
            for site, value in seen.items():
                rows = value.reshape(-1, value.shape[-1])
                active[site] = active[site] + (rows > 0).sum(0)
                tokens[site] += rows.shape[0]
        for site in active:
            torch.testing.assert_close(scores.probabilities(site)[d], (active[site] / tokens[site]).double())
    assert scores.tokens["vision.L0.neurons"][0] == 3 * 17  # 16 patches + CLS per image


def test_last_token_and_modality_choices(tiny_llava, domains):
    last = domain_scores(tiny_llava, domains, towers=("lm",), lm_tokens="last", progress=False)
    assert last.tokens["lm.L0.neurons"].tolist() == [3, 2]
    text = domain_scores(tiny_llava, domains, towers=("lm",), lm_tokens=[Modality.TEXT], progress=False)
    assert 0 < text.tokens["lm.L0.neurons"][0] < 3 * 30
    with pytest.raises(mmlens.MmlensError):
        domain_scores(tiny_llava, {"one": domains["colour"]}, progress=False)


def test_selection_keeps_low_entropy_frequent_neurons_labelled_by_domain():
    # 20 neurons, 2 domains: 0-3 always on in both, 4 and 5 only in one domain, 6 in "a" mostly.
    active = torch.zeros(2, 20, dtype=torch.int64)
    active[:, :4] = 10
    active[0, 4] = 10
    active[1, 5] = 10
    active[:, 6] = torch.tensor([10, 4])
    active[:, 7:] = 1
    scores = DomainScores(["lm.L0.neurons"], ["a", "b"], {"lm.L0.neurons": active},
                          {"lm.L0.neurons": torch.tensor([10, 10])})
    bar = float(torch.quantile(scores.probabilities("lm.L0.neurons").flatten().float(), 0.8))
    chosen = select_domain_neurons(scores, ratio=0.1, quantile=0.8)  # k = 2 of 20
    assert chosen.metadata["bars"]["lm"] == pytest.approx(bar)
    assert sorted(zip(chosen.indices.tolist(), chosen.labels)) == [(4, "a"), (5, "b")]
    assert chosen.scores.tolist() == [0.0, 0.0]
    wider = select_domain_neurons(scores, ratio=0.15, quantile=0.8)  # k = 3: neuron 6 next, labelled where it passes
    assert sorted(zip(wider.indices.tolist(), wider.labels)) == [(4, "a"), (5, "b"), (6, "a")]
