"""Causal tracing: batched equals one condition per forward; restoring the last hidden state recovers fully."""

import json

import numpy as np
import pytest
import torch

import mmlens
from mmlens.budget import row_bytes
from mmlens.causal import GROUPS, object_positions, token_groups, trace
from mmlens.causal import tracing as tracing_module
from mmlens.errors import MmlensError
from mmlens.data.shapes import counterfactual


@pytest.fixture(scope="module")
def traced(tiny_llava, samples):
    return trace(tiny_llava, samples, corrupt="noise")


def test_groups_follow_the_object_and_the_control_matches_its_size(tiny_llava, clean, samples):
    regions = [s.objects[s.target_objects[0]].mask for s in samples]
    groups = token_groups(tiny_llava, clean, regions, [["colour"], ["shape"]])
    assert list(groups) == list(GROUPS)
    assert torch.equal(groups["object image"].sum(-1), groups["control image"].sum(-1))
    assert not (groups["control image"] & groups["object image"]).any()
    assert torch.equal(groups["object image"] | groups["other image"], clean.layout.mask(mmlens.Modality.IMAGE))
    assert groups["object words"].sum(-1).tolist() == [1, 1] and groups["last"][:, -1].all()
    # A 16 x 16 box in the corner of a 64 x 64 image on a 4 x 4 grid is exactly the first patch.
    assert object_positions(clean.layout, 0, (0, 0, 16, 16)) == [int(clean.layout.image_positions(0)[0])]


def test_batched_tracing_equals_one_condition_per_forward(tiny_llava, samples, traced):
    single = trace(tiny_llava, samples, corrupt="noise", batched=False)
    for component in traced.components:
        torch.testing.assert_close(traced.p_patched[component], single.p_patched[component], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(traced.p_corrupt, single.p_corrupt, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("corrupt,window", [("embeddings", 2), ("counterfactual", 1)])
def test_batched_equals_single_for_other_corruptions_and_windows(tiny_llava, samples, corrupt, window):
    if corrupt == "counterfactual":
        images = [[counterfactual(s, "recolour").image] for s in samples]
        corrupt = tiny_llava.prepare([s.prompt for s in samples], images)
    kwargs = dict(corrupt=corrupt, window=window, components=["resid", "attn"],
                  memory_budget=_conditions_budget(tiny_llava, samples, 3))
    batched, single = trace(tiny_llava, samples, **kwargs), trace(tiny_llava, samples, batched=False, **kwargs)
    for component in batched.components:
        torch.testing.assert_close(batched.p_patched[component], single.p_patched[component], rtol=1e-4, atol=1e-6)


def _conditions_budget(model, samples, conditions):
    """A memory budget that holds ``conditions`` stacked copies of the samples' batch per pass."""
    rows, seq = model.prepare([s.prompt for s in samples], [[s.image] for s in samples]).input_ids.shape
    return conditions * rows * row_bytes(model, seq)


def test_tracing_does_not_depend_on_the_memory_budget(tiny_llava, samples):
    kwargs = dict(corrupt="embeddings", components=["resid", "mlp"])
    small = trace(tiny_llava, samples, memory_budget=_conditions_budget(tiny_llava, samples, 1), **kwargs)
    large = trace(tiny_llava, samples, memory_budget="unlimited", **kwargs)
    for component in small.components:
        torch.testing.assert_close(small.p_patched[component], large.p_patched[component], rtol=1e-4, atol=1e-6)


def test_tracing_rejects_a_budget_below_one_row_before_any_work(tiny_llava, samples, monkeypatch):
    monkeypatch.setattr(tracing_module, "capture", lambda *a, **k: pytest.fail("work was done"))
    with pytest.raises(MmlensError, match="too small for one row of causal tracing: it needs at least"):
        trace(tiny_llava, samples, memory_budget="10KB")


def test_restoring_the_last_hidden_state_recovers_the_clean_output(traced):
    last_layer, last_group = traced.n_layers - 1, traced.groups.index("last")
    torch.testing.assert_close(traced.p_patched["resid"][:, last_layer, last_group], traced.p_clean)
    rates = traced.rates("resid")[:, last_layer, last_group]
    assert torch.allclose(rates[~rates.isnan()], torch.ones(()), atol=1e-4)
    # Empty groups and last-layer patches away from the last token change nothing.
    assert torch.equal(traced.p_patched["mlp"][:, last_layer, 0], traced.p_corrupt)


def test_trace_on_another_family(noise):
    model = mmlens.load("tiny-qwen2-vl")
    batch = model.prepare(["<image> what colour ?", "<image> hi"], [[noise(56, 56, 1)], [noise(56, 56, 2)]])
    groups = token_groups(model, batch, [(0, 0, 28, 28), None], ["colour"])
    batched = trace(model, batch, groups, components=["resid", "mlp"])
    single = trace(model, batch, groups, components=["resid", "mlp"], batched=False)
    for component in batched.components:
        torch.testing.assert_close(batched.p_patched[component], single.p_patched[component], rtol=1e-4, atol=1e-6)


def test_result_is_json_and_figures(traced):
    from mmlens.report.inside import trace_figures

    payload = json.loads(json.dumps(traced.to_json()))
    assert np.asarray(payload["recovery"]["attn"]).shape == (traced.n_layers, len(GROUPS))
    assert sorted(trace_figures(traced)) == ["attn", "mlp", "resid"]


def test_bidirectional_prefix_is_replayed_whole(noise):
    # PaliGemma's prompt attends both ways: no position may be taken as recorded.
    from mmlens.causal import record_layers

    model = mmlens.load("tiny-paligemma")
    batch = model.prepare("<image> what colour is it ?", [noise(64, 64, 5)])
    groups = token_groups(model, batch, [(0, 0, 20, 20)], ["colour"])
    first = int(groups["question"].any(0).nonzero()[0])
    assert not record_layers(model, batch).suffix_allowed(first)
    batched = trace(model, batch, groups, components=["resid"])
    single = trace(model, batch, groups, components=["resid"], batched=False)
    torch.testing.assert_close(batched.p_patched["resid"], single.p_patched["resid"], rtol=1e-4, atol=1e-6)


def test_suffix_replay_equals_the_full_replay(tiny_llava, clean):
    from mmlens.causal import record_layers

    replay = record_layers(tiny_llava, clean)
    offset = int(clean.layout.text_positions(0)[0])
    assert replay.suffix_allowed(offset)
    replay.keys_values()
    for start in range(tiny_llava.n_layers + 1):
        full = replay.logits(start, replay.inputs[start].repeat(3, 1, 1))
        suffix = replay.logits(start, replay.inputs[start][:, offset:].repeat(3, 1, 1), offset=offset)
        torch.testing.assert_close(suffix, full, rtol=1e-4, atol=1e-5)


def test_a_window_of_no_layers_and_no_groups_are_refused(tiny_llava):
    from mmlens.layout import Modality
    from tests.conftest import noise_image

    batch = tiny_llava.prepare("<image> what colour ?", [noise_image(64, 64)])
    with pytest.raises(MmlensError, match="window .* at least 1, got 0"):
        trace(tiny_llava, batch, {"image": batch.layout.mask(Modality.IMAGE)}, window=0)
    with pytest.raises(MmlensError, match="at least one token group"):
        trace(tiny_llava, batch, {})
