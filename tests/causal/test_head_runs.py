"""Vision-tower head grids: batched grids equal one forward per head, in every family with a tower; bad input."""

import pytest
import torch

import mmlens
from mmlens.causal.attribution_patching import attribution_patching
from mmlens.causal.head_runs import stacked
from mmlens.causal.heads import knockout_heads, patch_heads, record_heads
from mmlens.hooks import intervene


def _answer_metric(model, batch, edits, answer_ids, metric="probability"):
    with torch.no_grad(), intervene(model, edits):
        logits = model.forward(batch, use_cache=False).logits[:, -1].float()
    if metric == "logit":
        return logits.gather(-1, answer_ids[:, None])[:, 0]
    return torch.softmax(logits, -1).gather(-1, answer_ids[:, None])[:, 0]


def test_vision_knockout_grid_equals_one_forward_per_head(tiny_llava, clean):
    grid = knockout_heads(tiny_llava, clean, tower="vision", group=["vision.L0.head1", "L1.H0"])
    assert grid.effect.shape == (tiny_llava.n_vision_layers, 2) and grid.settings["tower"] == "vision"
    for layer, head in [(0, 0), (0, 1), (1, 1)]:
        expected = _answer_metric(tiny_llava, clean, {f"vision.L{layer}.head{head}": torch.zeros_like},
                                  grid.answer_ids)
        torch.testing.assert_close(grid.edited[:, layer, head], expected, rtol=1e-4, atol=1e-6)
    both = _answer_metric(tiny_llava, clean, {"vision.L0.head1": torch.zeros_like,
                                              "vision.L1.head0": torch.zeros_like}, grid.answer_ids)
    torch.testing.assert_close(grid.group_edited, both, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("direction", ["clean->corrupt", "corrupt->clean"])
def test_vision_patching_equals_one_forward_per_head(tiny_llava, clean, direction):
    grid = patch_heads(tiny_llava, clean, direction=direction, tower="vision", memory_budget="unlimited")
    noisy = mmlens.causal.noisy_pixels(clean, 3.0, 0)[0]
    target, source = (noisy, clean) if direction == "clean->corrupt" else (clean, noisy)
    values = record_heads(tiny_llava, source, "vision")
    for layer, head in [(0, 1), (1, 0)]:
        value = values[layer][..., head * 16:(head + 1) * 16]
        expected = _answer_metric(tiny_llava, target, {f"vision.L{layer}.head{head}": lambda x, v=value: v.clone()},
                                  grid.answer_ids)
        torch.testing.assert_close(grid.edited[:, layer, head], expected, rtol=1e-4, atol=1e-6)
    assert grid.gap is not None and abs(grid.gap) > 0


def test_vision_results_do_not_depend_on_the_memory_budget(tiny_llava, clean):
    from mmlens.budget import row_bytes

    calls = []
    small = knockout_heads(tiny_llava, clean, tower="vision", progress=lambda done, total: calls.append(done),
                           memory_budget=row_bytes(tiny_llava, clean.input_ids.shape[1]) * 2)
    whole = knockout_heads(tiny_llava, clean, tower="vision", memory_budget="unlimited")
    assert calls == [1, 2, 3, 4]  # one head per pass
    torch.testing.assert_close(small.edited, whole.edited, rtol=1e-4, atol=1e-6)


# Packed patches (Qwen2-VL, Qwen2.5-VL's windows), tiles (LLaVA-NeXT, OneVision, Idefics3), SigLIP (PaliGemma).
@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-llava-next", "tiny-llava-onevision",
                                  "tiny-idefics3", "tiny-paligemma"])
def test_vision_grids_hold_in_every_family_with_a_tower(name, noise):
    model = mmlens.load(name)
    batch = model.prepare(["<image> what colour ?", "<image> shape ?"], [[noise(64, 64, 1)], [noise(64, 64, 2)]])
    grid = knockout_heads(model, batch, tower="vision", heads=["L0.H1", "L1.H0"], metric="logit")
    for layer, head in [(0, 1), (1, 0)]:
        expected = _answer_metric(model, batch, {f"vision.L{layer}.head{head}": torch.zeros_like}, grid.answer_ids,
                                  "logit")
        torch.testing.assert_close(grid.edited[:, layer, head], expected, rtol=1e-4, atol=1e-5)
    assert (grid.edited[:, 0, 1] != grid.clean).any()  # the knocked-out head moves the answer
    estimate = attribution_patching(model, batch, tower="vision", metric="logit")  # rows mapped, no error
    assert estimate.effect.shape == grid.effect.shape and torch.isfinite(estimate.edited).all()


def test_vision_attribution_is_exact_for_a_tiny_corruption(tiny_llava, clean):
    kwargs = dict(corrupt="noise", noise=0.003, metric="logit", tower="vision")
    exhaustive = patch_heads(tiny_llava, clean, **kwargs)
    estimate = attribution_patching(tiny_llava, clean, **kwargs)
    moved = exhaustive.edited - exhaustive.corrupt[:, None, None]
    guessed = estimate.edited - estimate.corrupt[:, None, None]
    assert moved.abs().max() > 1e-5
    torch.testing.assert_close(guessed, moved, rtol=0.05, atol=2e-2 * float(moved.abs().max()))


def test_stacked_copies_repeat_every_input(tiny_llava, clean):
    three = stacked(clean, 3)
    assert three.input_ids.shape[0] == 6 and torch.equal(three.inputs["pixel_values"][4], clean.inputs["pixel_values"][0])


def test_bad_vision_input_is_one_line(tiny_llava, tiny_llama, clean):
    for call, match in [
        (lambda: patch_heads(tiny_llava, clean, tower="vision", corrupt="embeddings"), "lands after the vision tower"),
        (lambda: knockout_heads(tiny_llama, tiny_llama.prepare("hi"), tower="vision"), "has no vision tower"),
        (lambda: knockout_heads(tiny_llava, clean, tower="vision", heads=["L0.H5"]), "has 2 heads"),
        (lambda: knockout_heads(tiny_llava, clean, tower="vision", heads=["lm.L0.head1"]), "is a lm head"),
        (lambda: knockout_heads(tiny_llava, tiny_llava.prepare("hi"), tower="vision"), "need an image"),
        (lambda: knockout_heads(tiny_llava, clean, tower="retina"), "unknown tower"),
    ]:
        with pytest.raises(mmlens.MmlensError, match=match) as error:
            call()
        assert "\n" not in str(error.value)
