"""Gradient x input and integrated gradients: autograd, completeness, Captum."""

import pytest
import torch
from scipy.stats import spearmanr

import mmlens
from mmlens.attribution.gradients import gradient_x_input, integrated_gradients, path_points
from mmlens import budget
from mmlens.budget import row_bytes
from mmlens.errors import MmlensError
from mmlens.models.decoder import record_decoder_call


def test_gradient_x_input_matches_autograd_through_the_whole_model(tiny_llava, targets):
    result = gradient_x_input(tiny_llava, targets).scores
    for j in range(targets.count):
        with mmlens.capture(tiny_llava, "lm.embed", grads=True) as captured:
            logits = tiny_llava.forward(targets.batch).logits
            targets.scores(logits[:, targets.positions[j]], j)[0].backward()
        expected = (captured.grad("lm.embed") * captured["lm.embed"]).sum(-1)[0]
        seen = slice(0, int(targets.positions[j]) + 1)
        torch.testing.assert_close(result[0, j, seen], expected[seen], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle", "adaptive"])
def test_integrated_gradients_completeness_under_one_percent(tiny_llava, targets, rule):
    result = integrated_gradients(tiny_llava, targets, steps=32, rule=rule)
    assert result.extras["completeness_error"].max() < 0.01


def test_integrated_gradients_do_not_depend_on_the_memory_budget(tiny_llava, targets, monkeypatch):
    rows, seq = targets.batch.input_ids.shape
    two_points = 2 * rows * row_bytes(tiny_llava, seq, grad=True)  # 2 path points per pass
    monkeypatch.setitem(budget.SATURATION_TOKENS, "cpu", 10**9)  # unlimited: all 8 points in one pass
    sizes = []
    real_run = budget.Passes.run
    monkeypatch.setattr(budget.Passes, "run", lambda self, step: sizes.append(self.size) or real_run(self, step))
    small = integrated_gradients(tiny_llava, targets, steps=8, memory_budget=two_points)
    large = integrated_gradients(tiny_llava, targets, steps=8, memory_budget="unlimited")
    assert 2 in sizes and 8 in sizes  # the two runs really differ in points per pass
    torch.testing.assert_close(small.scores, large.scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(small.extras["completeness_error"], large.extras["completeness_error"],
                               rtol=1e-2, atol=1e-4)


def test_integrated_gradients_reject_a_budget_below_one_row_before_any_work(tiny_llava, targets, monkeypatch):
    monkeypatch.setattr("mmlens.attribution.gradients.record_decoder_call", lambda *a, **k: pytest.fail("work was done"))
    with pytest.raises(MmlensError, match="too small for one row of integrated gradients: it needs at least"):
        integrated_gradients(tiny_llava, targets, steps=8, memory_budget="1KB")


def test_integrated_gradients_agree_with_captum(tiny_llava, targets):
    import captum.attr as captum
    call = record_decoder_call(tiny_llava, targets.batch)
    x = call.embeds
    baseline = 0.5 * x.roll(1, dims=1)  # any explicit baseline: this checks the integration itself
    j = 0
    position = targets.positions[j : j + 1]

    def forward(embeds):
        return targets.scores(call.logits(embeds, positions=position)[:, 0], j)

    reference = captum.IntegratedGradients(forward).attribute(
        x, baselines=baseline, n_steps=16, method="gausslegendre", internal_batch_size=32).sum(-1)
    ours = integrated_gradients(tiny_llava, targets, steps=16, baseline=baseline).scores[:, j]
    for row in range(2):
        keep = call.model_mask()[row] & (torch.arange(x.shape[1]) <= position[0])
        rho = spearmanr(ours[row, keep].numpy(), reference[row, keep].detach().numpy()).statistic
        assert rho > 0.99
        expected = reference[row, keep].detach().to(ours.dtype)  # older Captum returns float64
        torch.testing.assert_close(ours[row, keep], expected, rtol=1e-3, atol=1e-5)


def test_path_points():
    alphas, weights = path_points(5)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert ((alphas > 0) & (alphas < 1)).all()
    with pytest.raises(mmlens.MmlensError):
        path_points(4, "trapezoid-ish")


def test_mean_baseline_keeps_each_modality_at_its_own_scale(tiny_llava, targets):
    from mmlens.attribution.gradients import _modality_mean

    call = record_decoder_call(tiny_llava, targets.batch)
    base = _modality_mean(call, targets.batch.layout, int(targets.positions[0]))
    image = targets.batch.layout.image_positions(0)
    text = targets.batch.layout.text_positions(0)
    norms = call.embeds[0].norm(dim=-1)
    torch.testing.assert_close(base[0, image[0]].norm(), norms[image].mean(), rtol=1e-4, atol=1e-6)
    assert torch.equal(base[0, image[0]], base[0, image[-1]])  # one vector for every image token
    assert not torch.equal(base[0, image[0]], base[0, text[0]])


def test_adaptive_points_follow_the_change_and_integrate_exactly():
    from mmlens.attribution.gradients import adaptive_points

    values = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [5.0, 1.0]])  # two rows, 4 intervals
    alphas, weights = adaptive_points(values, 20)
    torch.testing.assert_close(weights.sum(0), torch.ones(2, dtype=torch.float64))
    assert (alphas[:, 0] > 0.75).sum() > (alphas[:, 1] > 0.75).sum()  # row 0 jumps in its last interval
    assert (alphas[:, 1] < 0.25).sum() > (alphas[:, 0] < 0.25).sum()  # row 1 in its first
    square = (weights * alphas**2).sum(0)  # every interval's midpoint rule stays a valid quadrature
    torch.testing.assert_close(square, torch.full((2,), 1 / 3, dtype=torch.float64), rtol=2e-3, atol=0)
