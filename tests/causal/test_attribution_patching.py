"""Attribution patching: exact in the small-step limit, ranks heads like exhaustive patching on shapes-llava."""

import pytest
import torch
from scipy.stats import spearmanr

import mmlens
from mmlens.causal.attribution_patching import attribution_patching
from mmlens.causal.heads import patch_heads
from mmlens.data.shapes import make_sample


@pytest.mark.parametrize("direction", ["clean->corrupt", "corrupt->clean"])
def test_a_tiny_corruption_makes_the_estimate_exact(tiny_llava, clean, direction):
    # First order is exact as the step goes to zero: with 1% noise the estimate and the runs agree closely.
    kwargs = dict(direction=direction, corrupt="embeddings", noise=0.01, metric="logit", group=["L1.H0", "L1.H3"])
    exhaustive = patch_heads(tiny_llava, clean, **kwargs)
    estimate = attribution_patching(tiny_llava, clean, **kwargs)
    base = "corrupt" if direction == "clean->corrupt" else "clean"  # the run being edited
    moved = exhaustive.edited - getattr(exhaustive, base)[:, None, None]
    guessed = estimate.edited - getattr(estimate, base)[:, None, None]
    assert moved.abs().max() > 1e-4
    torch.testing.assert_close(guessed, moved, rtol=0.05, atol=2e-3 * float(moved.abs().max()))
    # A group's estimate is the sum of its heads' steps: first-order exact for heads of one layer.
    torch.testing.assert_close(estimate.group_edited - getattr(estimate, base), guessed[:, 1, 0] + guessed[:, 1, 3])
    group_moved = exhaustive.group_edited - getattr(exhaustive, base)
    torch.testing.assert_close(estimate.group_edited - getattr(estimate, base), group_moved, rtol=0.05,
                               atol=2e-3 * float(moved.abs().max()))
    torch.testing.assert_close(estimate.clean, exhaustive.clean)
    torch.testing.assert_close(estimate.corrupt, exhaustive.corrupt)


def test_frozen_weights_give_the_same_estimate(clean):
    model = mmlens.load("tiny-llava")
    before = attribution_patching(model, clean, corrupt="embeddings", metric="logit")
    for parameter in model.hf.parameters():
        parameter.requires_grad_(False)
    after = attribution_patching(model, clean, corrupt="embeddings", metric="logit")
    torch.testing.assert_close(after.edited, before.edited)
    assert not any(p.grad is not None for p in model.hf.parameters())


def test_ranks_heads_like_exhaustive_patching_on_shapes_llava():
    model = mmlens.load("shapes-llava")
    questions = ["colour", "shape", "count", "position"]
    batch = model.prepare(*zip(*[(s.prompt, [s.image]) for s in
                                 (make_sample("test", i, questions[i % 4]) for i in range(8))]))
    exhaustive = patch_heads(model, batch, corrupt="embeddings", metric="logit")
    estimate = attribution_patching(model, batch, corrupt="embeddings", metric="logit")
    rho = spearmanr(exhaustive.effect.flatten(), estimate.effect.flatten()).statistic
    assert rho >= 0.8, rho


def test_bad_direction_is_one_line(tiny_llava, clean):
    with pytest.raises(mmlens.MmlensError, match="unknown direction"):
        attribution_patching(tiny_llava, clean, direction="both")
