"""Gradient x input and integrated gradients on the decoder's input embeddings.

Both attribute to every token the language model sees, image tokens
(after the projector) included. They run on a recorded decoder call
(:mod:`mmlens.models.decoder`), so the vision tower runs once, however many
interpolation steps there are; the steps go through the decoder in batches.

Integrated gradients: ``(x - x0) * sum_k w_k grad f(x0 + a_k (x - x0))`` with
Gauss-Legendre nodes ``a_k`` and weights ``w_k`` on [0, 1] (or the midpoint
rule). Completeness says the attributions sum to ``f(x) - f(x0)``; the relative
error is reported per row and target in ``extras["completeness_error"]``.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
    >>> result = integrated_gradients(model, targets, steps=16)
    >>> float(result.extras["completeness_error"].max()) < 0.05
    True
"""

from __future__ import annotations

import numpy as np
import torch

from mmlens.attribution.base import Attribution, causal_cut, empty_scores
from mmlens.budget import MemoryBudget, plan_passes
from mmlens.errors import MmlensError, check_choice
from mmlens.layout import Modality, TokenLayout
from mmlens.model import Model
from mmlens.models.decoder import DecoderCall, record_decoder_call
from mmlens.readout import Targets

BASELINES = ("mean", "zeros", "pad")
ADAPTIVE_SCAN = 16  # intervals of the adaptive rule's forward-only scan


def gradient_x_input(model: Model, targets: Targets) -> Attribution:
    """``sum_d grad_d * x_d`` per token, all targets in one batched backward pass.

    The cost is one forward + backward of the language model (one stacked copy
    per target) and one vision-tower forward: recording the decoder's input
    stops at the decoder, so no extra decoder forward runs.

    Example:
        >>> import mmlens
        >>> from mmlens.readout import build_targets
        >>> model = mmlens.load("tiny-llama")
        >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
        >>> gradient_x_input(model, targets).scores.shape[:2]  # (batch, targets)
        torch.Size([1, 1])
    """
    # Recorded up to the language model's call: the vision tower runs, the decoder runs only below.
    call = record_decoder_call(model, targets.batch, run_decoder=False)
    rows = call.batch_size
    stack = call.embeds.repeat(targets.count, 1, 1).requires_grad_(True)  # copy j explains target j
    with torch.enable_grad():
        logits = call.logits(stack, positions=targets.positions)
        total = sum(targets.scores(logits[j * rows:(j + 1) * rows, j], j).sum() for j in range(targets.count))
        (grad,) = torch.autograd.grad(total, stack)
    per_copy = (grad.float() * stack.detach().float()).sum(-1).view(targets.count, rows, -1)  # fp32 sum
    return Attribution(causal_cut(per_copy.transpose(0, 1).float().cpu(), targets))


def integrated_gradients(
    model: Model,
    targets: Targets,
    steps: int = 32,
    baseline: str | torch.Tensor = "mean",
    rule: str = "gausslegendre",
    memory_budget: MemoryBudget = None,
) -> Attribution:
    """Integrated gradients from ``baseline`` to the input embeddings, ``steps`` points per target.

    ``baseline`` is ``"mean"`` (every position the mean prompt embedding; the
    default: a zero baseline puts the path through RMSNorm's singularity at 0,
    where quadrature needs hundreds of steps), ``"zeros"``, ``"pad"``, or an
    explicit ``(batch, seq, hidden)`` tensor of decoder input embeddings.
    ``rule`` is ``"gausslegendre"`` (Captum's default), ``"riemann_middle"``,
    or ``"adaptive"``: a forward-only scan of 17 points per row first, then
    midpoints placed where the score moves (:func:`adaptive_points`), which
    keeps the completeness error low on sharp, trained models.
    ``memory_budget`` (bytes or ``"2GB"``; see :mod:`mmlens.budget`) sizes how
    many path points go through the decoder per pass; results do not depend on it.
    """
    if rule != "adaptive":
        path_points(steps, rule)  # an unknown rule or no steps fail before any work
    elif steps < ADAPTIVE_SCAN:
        raise MmlensError(f"adaptive integration needs at least {ADAPTIVE_SCAN} steps")
    passes = plan_passes(model, steps, targets.batch.input_ids.shape[1], memory_budget,
                         rows=targets.batch.input_ids.shape[0], grad=True,
                         what="integrated gradients")  # before any work: too small a budget fails here
    # Recorded up to the language model's call: the vision tower runs, the decoder runs only below.
    call = record_decoder_call(model, targets.batch, run_decoder=False)
    x = call.embeds
    x0 = _baseline(model, call, baseline, int(targets.positions[0]), targets.batch.layout)
    rows = x.shape[0]
    scores = empty_scores(targets)
    errors = torch.zeros(targets.tokens.shape)
    # f(x) and f(x0) for the completeness check: forward only, every target at once.
    ends = path_scores(call, targets, x, x0, torch.tensor([[1.0], [0.0]]).expand(2, rows), memory_budget)
    scan = None
    if rule == "adaptive":  # a forward-only scan of the score along the path, every target at once
        grid = torch.linspace(0, 1, ADAPTIVE_SCAN + 1, dtype=torch.float64)[:, None].expand(-1, rows)
        scan = path_scores(call, targets, x, x0, grid, memory_budget)
    for j in range(targets.count):
        position = targets.positions[j : j + 1]
        if scan is not None:
            alphas, weights = adaptive_points(scan[:, :, j].double().cpu(), steps)
        else:
            alphas, weights = path_points(steps, rule)
            alphas, weights = alphas[:, None].expand(-1, rows), weights[:, None].expand(-1, rows)
        grads = torch.zeros_like(x, dtype=torch.float32)  # the path runs in the model's dtype, sums in fp32
        # Moved once: a host copy per pass would wait for the device's queued work every time.
        alphas, weights = alphas.to(x), weights.to(x.device, torch.float32)

        def run_pass(start: int, stop: int) -> None:
            chunk_alphas = alphas[start:stop][..., None, None]
            chunk_weights = weights[start:stop][..., None, None]
            path = (x0[None] + chunk_alphas * (x - x0)[None]).flatten(0, 1).requires_grad_(True)
            with torch.enable_grad():
                score = targets.scores(call.logits(path, positions=position)[:, 0], j)
                (grad,) = torch.autograd.grad(score.sum(), path)
            grads.add_((chunk_weights * grad.float().view(len(chunk_alphas), *x.shape)).sum(0))

        passes.run(run_pass)
        attributions = ((x - x0).float() * grads).sum(-1)
        delta = (ends[0, :, j] - ends[1, :, j]).to(attributions.device, torch.float32)
        errors[:, j] = ((attributions.sum(-1) - delta).abs() / delta.abs().clamp_min(1e-12)).cpu()
        scores[:, j] = attributions.float().cpu()
    errors = torch.where(targets.real.cpu(), errors, torch.zeros(()))
    return Attribution(causal_cut(scores, targets), {"completeness_error": errors, "steps": steps, "rule": rule})


def path_scores(call: DecoderCall, targets: Targets, x: torch.Tensor, x0: torch.Tensor, alphas: torch.Tensor,
                memory_budget: MemoryBudget = None) -> torch.Tensor:
    """Every target's score at path points ``x0 + a (x - x0)``, forward only: ``(points, rows, targets)``.

    ``alphas`` is ``(points, rows)``; the points go through the decoder in
    passes under ``memory_budget``.

    Example:
        >>> import mmlens
        >>> from mmlens.readout import build_targets
        >>> model = mmlens.load("tiny-llama")
        >>> targets = build_targets(model, model.prepare("a red circle"), answer="red")
        >>> call = record_decoder_call(model, targets.batch, run_decoder=False)
        >>> x = call.embeds
        >>> path_scores(call, targets, x, torch.zeros_like(x), torch.tensor([[1.0], [0.0]])).shape
        torch.Size([2, 1, 1])
    """
    rows, count = x.shape[0], targets.count
    passes = plan_passes(call.model, alphas.shape[0], x.shape[1], memory_budget, rows=rows, positions=count,
                         what="integrated gradients")

    def run_pass(start: int, stop: int) -> torch.Tensor:
        chunk = alphas[start:stop].to(x)[..., None, None]
        path = (x0[None] + chunk * (x - x0)[None]).flatten(0, 1)
        with torch.no_grad():
            logits = call.logits(path, positions=targets.positions)
        values = torch.stack([targets.scores(logits[:, j], j) for j in range(count)], -1)
        return values.float().view(stop - start, rows, count)

    return torch.cat(passes.run(run_pass))


def adaptive_points(values: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoints placed where the score changes: ``steps`` points per row from a scan of the score.

    ``values`` is ``(scan + 1, rows)``: the score at ``scan + 1`` evenly spaced
    points of the path. Each of the ``scan`` intervals gets a share of the
    steps proportional to how much the score moves across it (plus an even
    floor, so no interval is skipped), and the midpoint rule inside it. The
    integral is unchanged; the quadrature error of a sharp integrand falls.

    Example:
        >>> values = torch.tensor([[0.0], [0.0], [0.0], [1.0]])  # the score jumps in the last third
        >>> alphas, weights = adaptive_points(values, 8)
        >>> int((alphas[:, 0] > 2 / 3).sum()), round(float(weights.sum()), 6)  # half the points in the jump
        (4, 1.0)
    """
    scan, rows = values.shape[0] - 1, values.shape[1]
    if steps < scan:
        raise MmlensError(f"adaptive integration needs at least {scan} steps")
    change = (values[1:] - values[:-1]).abs()  # (scan, rows)
    share = change / change.sum(0, keepdim=True).clamp_min(1e-12)
    share = 0.5 * share + 0.5 / scan  # half by change, half even
    counts = torch.ones(scan, rows, dtype=torch.long) + torch.floor(share * (steps - scan)).long()
    for row in range(rows):  # hand the rounding remainder to the largest fractional parts
        missing = steps - int(counts[:, row].sum())
        fraction = share[:, row] * (steps - scan) - torch.floor(share[:, row] * (steps - scan))
        counts[fraction.argsort(descending=True)[:missing], row] += 1
    width = 1.0 / scan
    alphas = torch.zeros(steps, rows, dtype=torch.float64)
    weights = torch.zeros(steps, rows, dtype=torch.float64)
    for row in range(rows):
        k = 0
        for interval in range(scan):
            n = int(counts[interval, row])
            alphas[k : k + n, row] = interval * width + (torch.arange(n, dtype=torch.float64) + 0.5) * width / n
            weights[k : k + n, row] = width / n
            k += n
    return alphas, weights


def path_points(steps: int, rule: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation points on [0, 1] and their quadrature weights (summing to 1).

    Example:
        >>> alphas, weights = path_points(4, "riemann_middle")
        >>> alphas.tolist(), float(weights.sum())
        ([0.125, 0.375, 0.625, 0.875], 1.0)
    """
    if steps < 1:
        raise MmlensError("integrated gradients needs at least one step")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.tensor((nodes + 1) / 2, dtype=torch.float64), torch.tensor(weights / 2, dtype=torch.float64)
    if rule == "riemann_middle":
        return (torch.arange(steps, dtype=torch.float64) + 0.5) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    raise MmlensError(f"unknown integration rule {rule!r}; use gausslegendre, riemann_middle or adaptive")


def _modality_mean(call: DecoderCall, layout: TokenLayout, prompt_end: int) -> torch.Tensor:
    """Every image token the row's mean image embedding, every other token the mean text embedding,
    each rescaled to its group's mean norm.

    Keeping each group at its own scale matters: image and text embeddings can
    differ in norm twenty-fold, and RMSNorm only sees directions, so a path
    from a mixed-scale baseline changes a word's direction only in the last
    few percent of the path, where quadrature has few points.
    """
    embeds = call.embeds.float()  # means over many tokens: fp32 in half-precision models
    real = call.model_mask().clone()
    real[:, prompt_end + 1 :] = False  # answer tokens fed for later targets do not count
    image = layout.mask(Modality.IMAGE).to(real.device)
    base = torch.zeros_like(embeds)
    for group in (image, ~image):
        members = (real & group)[..., None].to(embeds)
        count = members.sum(1, keepdim=True).clamp_min(1)
        mean = (embeds * members).sum(1, keepdim=True) / count
        norm = (embeds.norm(dim=-1, keepdim=True) * members).sum(1, keepdim=True) / count
        scaled = mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norm
        base = torch.where(group[..., None], scaled.expand_as(embeds), base)
    return base.to(call.embeds.dtype)


def _baseline(model: Model, call: DecoderCall, kind: str | torch.Tensor, prompt_end: int,
              layout: TokenLayout) -> torch.Tensor:
    if isinstance(kind, torch.Tensor):
        if kind.shape != call.embeds.shape:
            raise MmlensError(f"baseline of shape {tuple(kind.shape)} for embeddings {tuple(call.embeds.shape)}")
        return kind.to(call.embeds)
    check_choice(kind, BASELINES, "baseline")
    if kind == "mean":
        return _modality_mean(call, layout, prompt_end)
    if kind == "zeros":
        return torch.zeros_like(call.embeds)
    pad = model.tokenizer.pad_token_id or 0  # "pad", the last of BASELINES
    vector = model.hf.get_input_embeddings().weight[pad].detach()
    return vector.expand_as(call.embeds).clone()
