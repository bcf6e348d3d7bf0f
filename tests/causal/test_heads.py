"""Head knockout and head patching: batched grids equal one forward per head; groups; bad input."""

import json

import pytest
import torch

import mmlens
from mmlens.causal.heads import knockout_heads, parse_heads, patch_heads, record_heads
from mmlens.hooks import intervene


def _answer_probability(model, batch, edits, answer_ids):
    with torch.no_grad(), intervene(model, edits):
        logits = model.forward(batch, use_cache=False).logits[:, -1].float()
    return torch.softmax(logits, -1).gather(-1, answer_ids[:, None])[:, 0]


@pytest.fixture(scope="module")
def knocked(tiny_llava, clean):
    return knockout_heads(tiny_llava, clean, group=["L0.H1", "L1.H2"])


def test_knockout_grid_equals_one_forward_per_head(tiny_llava, clean, knocked):
    assert knocked.effect.shape == (tiny_llava.n_layers, 4) and not torch.isnan(knocked.effect).any()
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        expected = _answer_probability(tiny_llava, clean, {f"lm.L{layer}.head{head}": torch.zeros_like},
                                       knocked.answer_ids)
        torch.testing.assert_close(knocked.edited[:, layer, head], expected, rtol=1e-4, atol=1e-6)
    both = _answer_probability(tiny_llava, clean, {"lm.L0.head1": torch.zeros_like, "lm.L1.head2": torch.zeros_like},
                               knocked.answer_ids)
    torch.testing.assert_close(knocked.group_edited, both, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(knocked.effect, (knocked.clean[:, None, None] - knocked.edited).mean(0))
    assert knocked.effect.abs().max() > 1e-4  # the tiny model's heads do something


def test_mean_ablation_writes_the_mean_over_real_tokens(tiny_llava, clean):
    grid = knockout_heads(tiny_llava, clean, ablation="mean", heads=["L1.H3"])
    values = record_heads(tiny_llava, clean)
    real = clean.inputs["attention_mask"].bool()
    mean = values[1][real].mean(0)[48:64]  # head 3 of four 16-wide heads
    expected = _answer_probability(tiny_llava, clean, {"lm.L1.head3": lambda x: mean.expand_as(x).clone()},
                                   grid.answer_ids)
    torch.testing.assert_close(grid.edited[:, 1, 3], expected, rtol=1e-4, atol=1e-6)
    assert torch.isnan(grid.edited[:, 0]).all() and torch.isnan(grid.effect[0]).all()  # cells not asked for


@pytest.mark.parametrize("direction", ["clean->corrupt", "corrupt->clean"])
def test_patching_equals_one_forward_per_head(tiny_llava, clean, direction):
    grid = patch_heads(tiny_llava, clean, direction=direction, corrupt="noise", heads=["L0.H2", "L1.H0"])
    noisy = mmlens.causal.noisy_pixels(clean, 3.0, 0)[0]
    clean_values = record_heads(tiny_llava, clean)
    noisy_values = record_heads(tiny_llava, noisy)
    target, source = (noisy, clean_values) if direction == "clean->corrupt" else (clean, noisy_values)
    for layer, head in [(0, 2), (1, 0)]:
        value = source[layer][..., head * 16:(head + 1) * 16]
        expected = _answer_probability(tiny_llava, target, {f"lm.L{layer}.head{head}": lambda x, v=value: v.clone()},
                                       grid.answer_ids)
        torch.testing.assert_close(grid.edited[:, layer, head], expected, rtol=1e-4, atol=1e-6)
    assert grid.corrupt is not None and grid.settings["corruption"]["kind"] == "noise"


def test_results_do_not_depend_on_the_memory_budget(tiny_llava, clean):
    from mmlens.budget import row_bytes

    calls = []
    seq = clean.input_ids.shape[1]
    small = patch_heads(tiny_llava, clean, corrupt="embeddings", memory_budget=row_bytes(tiny_llava, seq) * 2 * 2,
                        progress=lambda done, total: calls.append(done))
    whole = patch_heads(tiny_llava, clean, corrupt="embeddings", memory_budget="unlimited")
    assert len(calls) >= 4 and calls[-1] == 8  # two heads per pass at most
    torch.testing.assert_close(small.edited, whole.edited, rtol=1e-4, atol=1e-6)


def test_a_corruption_that_does_not_move_the_answer_warns(tiny_llava, clean):
    grid = patch_heads(tiny_llava, clean, corrupt=clean)  # the "counterfactual" is the clean batch itself
    assert grid.weak and "barely moves the answer" in grid.warning and torch.isnan(grid.effect).all()
    payload = json.loads(json.dumps(grid.to_json()))
    assert payload["warning"] == grid.warning and payload["effect"][0][0] is None


def test_json_and_top(knocked):
    payload = json.loads(json.dumps(knocked.to_json()))
    assert payload["kind"] == "knockout" and len(payload["effect"]) == 2 and len(payload["rows"]) == 2
    layer, head, value = knocked.top(1)[0]
    assert value == pytest.approx(float(knocked.effect.max())) and knocked.effect[layer, head] == knocked.effect.max()
    assert payload["group"] == [{"layer": 0, "head": 1}, {"layer": 1, "head": 2}]


def test_bad_input_is_one_line(tiny_llava, clean):
    with pytest.raises(mmlens.MmlensError, match="has 4 heads") as error:
        knockout_heads(tiny_llava, clean, heads=["L0.H9"])
    assert "\n" not in str(error.value)
    for call, match in [(lambda: parse_heads(tiny_llava, ["layer1-head2"]), "name heads like L1.H2"),
                        (lambda: knockout_heads(tiny_llava, clean, ablation="resample"), "unknown ablation"),
                        (lambda: patch_heads(tiny_llava, clean, direction="sideways"), "unknown direction"),
                        (lambda: knockout_heads(tiny_llava, clean, metric="rank"), "unknown metric"),
                        (lambda: knockout_heads(tiny_llava, "a prompt"), "prepared batch")]:
        with pytest.raises(mmlens.MmlensError, match=match):
            call()
    assert parse_heads(tiny_llava, ["lm.L1.head2", (0, 3), "L1.H2"]) == [(1, 2), (0, 3)]


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-paligemma"])
def test_grids_hold_for_m_rope_and_a_bidirectional_prefix(name, noise):
    model = mmlens.load(name)
    batch = model.prepare(["<image> what colour ?", "<image> shape ?"], [[noise(64, 64, 1)], [noise(64, 64, 2)]])
    grid = knockout_heads(model, batch, heads=["L1.H2"])
    expected = _answer_probability(model, batch, {"lm.L1.head2": torch.zeros_like}, grid.answer_ids)
    torch.testing.assert_close(grid.edited[:, 1, 2], expected, rtol=1e-4, atol=1e-6)
