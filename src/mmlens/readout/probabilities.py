"""P(answer): the teacher-forced probability of an answer token while chosen image tokens are hidden.

Faithfulness metrics and perturbation methods ask how the answer changes when
image tokens are hidden; hidden tokens become a
:class:`~mmlens.readout.baselines.Baseline` (decoder-input baselines replay
one recorded language-model call, pixel baselines re-run the whole model).

Example:
    >>> import mmlens, torch
    >>> from PIL import Image
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llava")
    >>> targets = build_targets(model, model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))]),
    ...                         answer="red")
    >>> hide = torch.zeros(2, targets.batch.input_ids.shape[1], dtype=torch.bool)
    >>> hide[1, targets.batch.layout.image_positions(0)] = True  # variant 1: every image token hidden
    >>> answer_probabilities(model, targets, hide).shape
    torch.Size([2])
"""

from __future__ import annotations


import torch

from mmlens.budget import MemoryBudget, Passes, plan_passes
from mmlens.errors import MmlensError, check_enum
from mmlens.model import Model
from mmlens.models.decoder import DecoderCall, record_decoder_call
from mmlens.readout.baselines import Baseline, embedding_baseline, hidden_images
from mmlens.readout.logits import logits_at, token_probabilities
from mmlens.readout.targets import Targets


def answer_probabilities(
    model: Model,
    targets: Targets,
    hide: torch.Tensor,
    row: int = 0,
    target: int = 0,
    baseline: Baseline | str = Baseline.MEAN,
    memory_budget: MemoryBudget = None,
    call: DecoderCall | None = None,
    blur_radius: float | None = None,
) -> torch.Tensor:
    """Teacher-forced probability of answer token ``target`` of ``row`` under each hiding variant.

    ``hide`` is ``(variants, seq)`` boolean over the row's sequence; only
    image positions may be True. ``memory_budget`` (see :mod:`mmlens.budget`)
    sizes how many variants run per pass; results do not depend on it. ``call``
    reuses a recorded decoder call of ``targets.batch`` (embedding baselines).
    Foils and the targets' score kind are ignored: this is always the softmax
    probability of the answer token at its position.

    Example:
        >>> answer_probabilities(model, targets, hide, baseline="zeros").shape  # doctest: +SKIP
        torch.Size([2])
    """
    baseline = check_enum(baseline, Baseline, "baseline")
    _check(targets, hide, row, target)
    passes = plan_passes(model, hide.shape[0], targets.batch.input_ids.shape[1], memory_budget,
                         what="answer probabilities")  # before any work
    if baseline.pixel:
        return _pixel_probabilities(model, targets, hide, row, target, baseline, passes, blur_radius)
    call = (call or record_decoder_call(model, targets.batch)).row(row)
    x = call.embeds
    base = embedding_baseline(targets.batch.layout, row, x, baseline)
    position = int(targets.positions[target])
    token = targets.tokens[row, target : target + 1]

    def run_pass(start: int, stop: int) -> torch.Tensor:
        weight = hide[start:stop, :, None].to(x.device, x.dtype)
        with torch.no_grad():
            logits = call.logits(x * (1 - weight) + base * weight, positions=[position])[:, 0]
        return token_probabilities(logits, token)

    return torch.cat(passes.run(run_pass))


def _check(targets: Targets, hide: torch.Tensor, row: int, target: int) -> None:
    if not 0 <= target < targets.count or not bool(targets.real[row, target]):
        raise MmlensError(f"row {row} has no answer token {target}")
    layout = targets.batch.layout
    if hide.ndim != 2 or hide.shape[1] != layout.seq_len:
        raise ValueError(f"hide must be (variants, {layout.seq_len}), got {tuple(hide.shape)}")
    image = torch.zeros(layout.seq_len, dtype=torch.bool)
    image[layout.image_positions(row)] = True
    if (hide.bool().cpu() & ~image).any():
        raise ValueError("only image tokens can be hidden")


def _pixel_probabilities(model: Model, targets: Targets, hide: torch.Tensor, row: int, target: int,
                         baseline: Baseline, passes: Passes, blur_radius: float | None) -> torch.Tensor:
    """Re-run the whole model on pixel-edited copies of the row's images, ``passes.size`` variants at once."""
    batch = targets.batch
    prompt, images = batch.prompts[row], batch.images[row]
    answer = targets.tokens[row : row + 1, :-1]
    real = targets.real[row : row + 1, :-1]
    token = targets.tokens[row, target : target + 1]

    def run_pass(start: int, stop: int) -> torch.Tensor:
        variants = hide[start:stop].cpu()
        edited = [hidden_images(images, batch.layout, row, v.nonzero().flatten().tolist(), baseline, blur_radius)
                  for v in variants]
        # Same prompt and image sizes in every variant: no padding, equal lengths.
        rerun = model.prepare([prompt] * len(edited), edited, padding_side="left")
        if answer.shape[1]:
            rerun = model.append_tokens(rerun, answer.expand(len(edited), -1), real.expand(len(edited), -1))
        seq = rerun.input_ids.shape[1]
        position = seq - targets.count + target  # answer token j sits j places after the prompt's last token
        with torch.no_grad():
            logits = logits_at(model, rerun, [position])[:, 0]
        return token_probabilities(logits, token)

    return torch.cat(passes.run(run_pass))
