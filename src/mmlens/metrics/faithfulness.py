"""Deletion and insertion curves (Petsiuk et al., 2018): does the attribution order what matters?

Image tokens are ranked by attribution score, most important first, and
hidden (replaced by a :class:`~mmlens.readout.Baseline`) in
``steps`` equal fractions from 0% to 100%, while the teacher-forced
probability of the answer token is tracked:

- **deletion** starts from the intact input and hides tokens in order; a
  faithful attribution makes the probability fall fast (low AUC);
- **insertion** starts from the all-baseline input and restores tokens in
  order; a faithful attribution makes it rise fast (high AUC).

Both curves of one sample run as one stack of variants (``2 x (steps + 1)``)
through a recorded decoder call, as many variants per replay as ``memory_budget``
holds (:mod:`mmlens.budget`).

Example:
    >>> import mmlens, torch
    >>> from PIL import Image
    >>> from mmlens.readout import build_targets
    >>> model = mmlens.load("tiny-llava")
    >>> targets = build_targets(model, model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))]),
    ...                         answer="red")
    >>> scores = torch.rand(targets.batch.input_ids.shape[1])  # any attribution's (seq,) scores
    >>> curves = deletion_insertion(model, targets, scores, steps=4)
    >>> curves.fractions.tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmlens.budget import MemoryBudget
from mmlens.errors import MmlensError, check_count, check_enum
from mmlens.layout import TokenLayout
from mmlens.model import Model
from mmlens.models.decoder import DecoderCall, record_decoder_call
from mmlens.readout import Baseline, Targets, answer_probabilities

DEFAULT_STEPS = 20


@dataclass
class FaithfulnessCurves:
    """Deletion and insertion curves of one sample and answer token, and their AUCs.

    ``deletion[k]`` / ``insertion[k]`` is the answer probability with the top
    ``fractions[k]`` of image tokens hidden / restored; ``order`` lists the
    image positions, most important first.
    """

    fractions: np.ndarray  # (steps + 1,) from 0 to 1
    deletion: np.ndarray
    insertion: np.ndarray
    order: list[int]
    baseline: str
    row: int = 0
    target: int = 0
    deletion_auc: float = field(init=False)  # lower = more faithful
    insertion_auc: float = field(init=False)  # higher = more faithful

    def __post_init__(self) -> None:
        self.deletion_auc = auc(self.fractions, self.deletion)
        self.insertion_auc = auc(self.fractions, self.insertion)


def deletion_insertion(
    model: Model,
    targets: Targets,
    scores: torch.Tensor | np.ndarray,
    target: int = 0,
    row: int = 0,
    steps: int = DEFAULT_STEPS,
    baseline: Baseline | str = Baseline.MEAN,
    memory_budget: MemoryBudget = None,
    blur_radius: float | None = None,
    call: DecoderCall | None = None,
) -> FaithfulnessCurves:
    """Deletion and insertion curves of answer token ``target`` of batch row ``row``.

    ``scores`` is ``(seq,)`` over that row's teacher-forced sequence (e.g.
    ``explanation.scores[method][target]`` or ``attribution.scores[row, target]``);
    only image positions are ranked, NaN ranks last, ties keep prompt order.
    ``baseline`` is ``"mean"`` (default), ``"zeros"``, ``"blur"`` or
    ``"mean_colour"``; pixel baselines re-run the whole model per variant.

    Example:
        >>> curves = deletion_insertion(model, targets, scores, baseline="zeros")  # doctest: +SKIP
        >>> curves.deletion_auc < curves.insertion_auc  # doctest: +SKIP
        True
    """
    steps = check_count(steps, "steps")
    baseline = check_enum(baseline, Baseline, "baseline")
    order = removal_order(targets.batch.layout, row, scores)
    if not order:
        raise MmlensError(f"row {row} has no image tokens to remove")
    counts = removal_counts(len(order), steps)
    seq = targets.batch.layout.seq_len
    hide = torch.zeros(2 * len(counts), seq, dtype=torch.bool)
    for k, count in enumerate(counts):
        hide[k, order[:count]] = True  # deletion: the top `count` hidden
        hide[len(counts) + k, order[count:]] = True  # insertion: only the top `count` restored
    probs = answer_probabilities(model, targets, hide, row, target, baseline, memory_budget, call, blur_radius).numpy()
    return FaithfulnessCurves(
        fractions=np.linspace(0.0, 1.0, steps + 1),
        deletion=probs[: len(counts)],
        insertion=probs[len(counts) :],
        order=order,
        baseline=baseline.value,
        row=row,
        target=target,
    )


def deletion_insertion_batch(
    model: Model,
    targets: Targets,
    scores: torch.Tensor | np.ndarray,
    target: int = 0,
    steps: int = DEFAULT_STEPS,
    baseline: Baseline | str = Baseline.MEAN,
    memory_budget: MemoryBudget = None,
    blur_radius: float | None = None,
) -> list[FaithfulnessCurves]:
    """:func:`deletion_insertion` for every row of ``targets`` that has answer token ``target``.

    ``scores`` is ``(batch, seq)``, or ``(batch, targets, seq)`` as in
    ``Attribution.scores`` (``target`` picks the slice). The vision tower runs
    once for the whole batch. Rows without that answer token are skipped.

    Example:
        >>> results = deletion_insertion_batch(model, targets, attribution.scores)  # doctest: +SKIP
        >>> [round(r.deletion_auc, 3) for r in results]  # doctest: +SKIP
        [0.012, 0.03]
    """
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.ndim == 3:
        scores = scores[:, target]
    if scores.ndim != 2 or scores.shape[0] != targets.batch.input_ids.shape[0]:
        raise MmlensError(f"scores must be (batch, seq) or (batch, targets, seq), got {tuple(scores.shape)}")
    call = None if check_enum(baseline, Baseline, "baseline").pixel else record_decoder_call(model, targets.batch)
    return [
        deletion_insertion(model, targets, scores[row], target, row, steps, baseline, memory_budget, blur_radius, call)
        for row in range(scores.shape[0])
        if target < targets.count and bool(targets.real[row, target])
    ]


def removal_order(layout: TokenLayout, row: int, scores: torch.Tensor | np.ndarray) -> list[int]:
    """Image positions of ``row`` by descending score; NaN last, ties in prompt order.

    Example:
        >>> removal_order(batch.layout, 0, scores)[:3]  # doctest: +SKIP
        [7, 2, 12]
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu()
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64)).flatten()
    if scores.numel() != layout.seq_len:
        raise MmlensError(f"{scores.numel()} scores for a sequence of {layout.seq_len}: give one score per "
                          "position of the teacher-forced sequence")
    positions = layout.image_positions(row)
    values = scores[positions].nan_to_num(nan=-np.inf)  # NaN: no evidence, removed last
    ranked = torch.argsort(-values, stable=True)
    return positions[ranked].tolist()


def removal_counts(n: int, steps: int) -> list[int]:
    """How many of ``n`` tokens are removed at each of ``steps + 1`` equal fractions (round half up).

    Example:
        >>> removal_counts(16, 4)
        [0, 4, 8, 12, 16]
    """
    return [int(np.floor(k * n / steps + 0.5)) for k in range(steps + 1)]


def auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule over ``fractions`` (in [0, 1]).

    Example:
        >>> auc(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0]))
        0.5
    """
    x, y = np.asarray(fractions, dtype=np.float64), np.asarray(values, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
