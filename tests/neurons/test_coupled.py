"""DEAN: weight importance, the true set intersection, and reversible zeroing."""

import math

import pytest
import torch

import mmlens
from mmlens.data.shapes import make_sample
from mmlens.neurons.coupled import (
    WeightSet,
    coupled_indices,
    decoder_matrices,
    select_coupled,
    top_fraction,
    weight_importance,
)

MATRIX = "model.language_model.layers.1.mlp.down_proj.weight"


def test_intersection_is_a_set_operation_not_a_positional_one():
    first = torch.tensor([5, 3, 9, 7])
    second = torch.tensor([9, 5, 7, 3])  # the same weights, listed in another order
    general = torch.tensor([3])
    assert not torch.any(first == second)  # a positional comparison would find nothing
    assert coupled_indices(first, second, general).tolist() == [5, 7, 9]
    assert coupled_indices(first, torch.tensor([8]), torch.tensor([], dtype=torch.int64)).tolist() == []


def test_selection_from_importance_maps_matches_python_sets():
    torch.manual_seed(0)
    shape = (6, 7)
    first, second, general = torch.rand(shape), torch.rand(shape), torch.rand(shape)
    second.view(-1)[first.flatten().topk(10).indices] += 5  # A1's top weights are also A2's, in another order
    chosen = select_coupled({"w": first}, {"w": second}, {"w": general}, p=0.25, q=0.1)
    top = lambda t, f: set(t.flatten().topk(math.ceil(f * t.numel())).indices.tolist())  # noqa: E731
    a1, a2, g = top(first, 0.25), top(second, 0.25), top(general, 0.1)
    expected = sorted((a1 - g) & (a2 - g))
    assert len(expected) > 0
    assert sorted((chosen.rows * shape[1] + chosen.cols).tolist()) == expected
    assert top_fraction(first, 0.0).numel() == 0


def test_importance_is_weight_times_summed_absolute_gradients(tiny_llava):
    samples = [make_sample("val", i, "colour") for i in range(3)]
    got = weight_importance(tiny_llava, samples, matrices=[MATRIX], batch_size=2, progress=False)[MATRIX]
    weight = tiny_llava.hf.get_parameter(MATRIX)
    total = torch.zeros_like(weight)
    for chunk in (samples[:2], samples[2:]):  # the loss of each batch: answer token after each prompt
        batch = tiny_llava.prepare([s.prompt for s in chunk], [[s.image] for s in chunk])
        answers = torch.tensor([tiny_llava.tokenizer(s.answer, add_special_tokens=False)["input_ids"][0] for s in chunk])
        weight.requires_grad_(True)
        logits = tiny_llava.forward(batch).logits[:, -1]
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, answers), [weight])
        total += grad.abs()
    torch.testing.assert_close(got, weight.detach().abs() * total, rtol=1e-4, atol=1e-9)


def test_zeroing_is_exact_and_restored(tiny_llava):
    before = {name: p.detach().clone() for name, p in decoder_matrices(tiny_llava).items()}
    flags = [p.requires_grad for p in tiny_llava.hf.parameters()]
    chosen = WeightSet([MATRIX, MATRIX, "model.language_model.layers.0.self_attn.q_proj.weight"],
                       torch.tensor([0, 3, 2]), torch.tensor([5, 1, 2]), torch.ones(3))
    weight = tiny_llava.hf.get_parameter(MATRIX)
    with pytest.raises(RuntimeError):
        with chosen.zeroed(tiny_llava):
            assert weight[0, 5] == 0 and weight[3, 1] == 0
            untouched = torch.ones_like(weight, dtype=torch.bool)
            untouched[0, 5] = untouched[3, 1] = False
            assert torch.equal(weight[untouched], before[MATRIX][untouched])
            raise RuntimeError("restored even when the body fails")
    assert all(torch.equal(p, before[name]) for name, p in decoder_matrices(tiny_llava).items())
    assert [p.requires_grad for p in tiny_llava.hf.parameters()] == flags
    loaded = WeightSet.from_tensors(*chosen.to_tensors())
    assert loaded.params == chosen.params and torch.equal(loaded.rows, chosen.rows)
    with pytest.raises(mmlens.MmlensError):
        weight_importance(tiny_llava, [make_sample("val", 0)], matrices=["lm_head.weight"], progress=False)
