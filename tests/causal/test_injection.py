"""Injection (IRI): lambda = 0 changes nothing; injected outputs keep their norm; works during generation."""

import pytest
import torch

import mmlens
from mmlens.causal import InjectionPlan, inject, plan_injection, trace


@pytest.fixture(scope="module")
def plan(tiny_llava, samples):
    return plan_injection(trace(tiny_llava, samples, components=["attn", "mlp"]), sources=1, targets=2)


def _forced_plan() -> InjectionPlan:
    # Layer 0 feeds layer 1 with weight 1, for both components of the two-layer tiny model.
    return InjectionPlan({"attn": {0: 1.0}, "mlp": {0: 1.0}}, {"attn": [0, 1], "mlp": [0, 1]},
                         {"attn": 0.5, "mlp": 0.5})


def test_plan_ranks_layers_by_recovery(plan):
    assert sorted(plan.sources) == ["attn", "mlp"]
    assert all(len(s) == 1 and len(plan.targets[c]) == 2 for c, s in plan.sources.items())
    assert all(weight >= 0 for s in plan.sources.values() for weight in s.values())


def test_lambda_zero_changes_nothing(tiny_llava, clean):
    with torch.no_grad():
        expected = tiny_llava.forward(clean).logits
        with inject(tiny_llava, _forced_plan().scaled(0.0)):
            assert torch.equal(tiny_llava.forward(clean).logits, expected)


@pytest.mark.parametrize("component", ["attn", "mlp"])
def test_injection_changes_the_direction_and_keeps_the_norm(tiny_llava, clean, component):
    # One component at a time: injecting attention would change the MLP's own input.
    plan = InjectionPlan({component: {0: 1.0}}, {component: [1]}, {component: 0.5})
    site = f"lm.L1.{component}"
    with torch.no_grad(), mmlens.capture(tiny_llava, site) as plain:
        expected = tiny_llava.forward(clean).logits
    with torch.no_grad(), inject(tiny_llava, plan), mmlens.capture(tiny_llava, site) as injected:
        changed = tiny_llava.forward(clean).logits
    before, after = plain[site][:, -1], injected[site][:, -1]
    torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1))
    assert not torch.allclose(after, before)
    assert torch.equal(injected[site][:, :-1], plain[site][:, :-1])  # only the last token is edited
    assert not torch.allclose(changed[:, -1], expected[:, -1])


def test_injection_during_generation(tiny_llava, clean):
    plain = tiny_llava.generate(clean, max_new_tokens=3)
    with inject(tiny_llava, _forced_plan().scaled(0.0)):
        assert torch.equal(tiny_llava.generate(clean, max_new_tokens=3), plain)
    with inject(tiny_llava, _forced_plan().scaled(50.0)):
        assert tiny_llava.generate(clean, max_new_tokens=3).shape == plain.shape
