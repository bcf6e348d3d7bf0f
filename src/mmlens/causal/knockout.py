"""The runs behind attention knockout: the answer position only, resumed at each window's first layer.

Knockout (:func:`mmlens.lens.knockout`) blocks attention from the last
position to a key group in a window of layers. Under a causal mask nothing
but the last position's own hidden state can change: no other query sees it,
and the layers below the window are untouched. So each condition runs one
query (the last position) from the window's first layer on, against the keys
and values recorded in one clean pass (:class:`~mmlens.causal.replay.LayerReplay`
with ``offset = seq - 1``). A pass of ``k`` conditions then costs about ``k``
tokens per layer instead of ``k x seq``, and the blocked mask is
``(rows, 1, 1, seq)``, not ``(rows, 1, seq, seq)``. Where the mask is not
causal (PaliGemma's bidirectional prefix) every position runs, still from the
window's first layer.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> from mmlens.layout import Modality
    >>> model = mmlens.load("tiny-llava")
    >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))])
    >>> runs = knockout_runs(model, batch, {"image": batch.layout.mask(Modality.IMAGE)})
    >>> runs.probability.shape  # (windows, groups, batch)
    torch.Size([2, 1, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from mmlens.budget import MemoryBudget, plan_passes
from mmlens.causal.replay import record_layers
from mmlens.errors import MmlensError, check_count
from mmlens.hooks import BlockKeys, intervene
from mmlens.model import Batch, Model
from mmlens.readout import answer_token_ids, token_probabilities


@dataclass
class KnockoutRuns:
    """``probability[w, g, row]`` with attention from the last position blocked; ``baseline[row]`` with none."""

    window_starts: list[int]
    probability: torch.Tensor  # (windows, groups, batch)
    baseline: torch.Tensor  # (batch,)
    answer_ids: torch.Tensor  # (batch,)


def knockout_runs(
    model: Model,
    batch: Batch,
    groups: Mapping[str, torch.Tensor],
    window: int = 1,
    answer: str | Sequence[str] | torch.Tensor | None = None,
    memory_budget: MemoryBudget = None,
) -> KnockoutRuns:
    """Answer probabilities with the last position's attention to each group blocked, per window of layers.

    ``groups`` maps names to ``(batch, seq)`` bool key masks; ``answer`` is
    read at the last position (default: the unblocked run's top token).
    ``memory_budget`` caps how many conditions run per pass; results do not depend on it.

    Example:
        >>> import mmlens
        >>> from PIL import Image
        >>> from mmlens.layout import Modality
        >>> model = mmlens.load("tiny-llava")  # 2 layers
        >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))])
        >>> knockout_runs(model, batch, {"image": batch.layout.mask(Modality.IMAGE)}, window=2).window_starts
        [0]
    """
    window = check_count(window, "the knockout window (layers blocked at once)")  # 0 would block nothing
    names = list(groups)
    if not names:
        raise MmlensError("knockout needs at least one key group, e.g. {'image': batch.layout.mask(Modality.IMAGE)}")
    n = model.n_layers
    starts = list(range(0, max(1, n - window + 1)))
    rows, seq = batch.input_ids.shape
    # Before any work: one condition of the answer position against every recorded key.
    plan_passes(model, 1, 1, memory_budget, rows=rows, keys=seq, what="attention knockout")
    replay = record_layers(model, batch)
    with torch.no_grad():
        logits = replay.logits(n, replay.inputs[n])[:, 0]
    answer_ids = answer_token_ids(model, answer, logits, rows).to(logits.device)
    baseline = token_probabilities(logits, answer_ids)
    offset = seq - 1 if replay.suffix_allowed(seq - 1) else 0
    if offset:
        replay.keys_values()  # recorded before any block is in place
    probability = torch.empty(len(starts), len(names), rows)
    for w, start in enumerate(starts):
        blocked_layers = range(start, min(n, start + window))
        passes = plan_passes(model, len(names), seq - offset, memory_budget, rows=rows, keys=seq,
                             what="attention knockout")

        def run_pass(first: int, stop: int, start: int = start, blocked_layers: range = blocked_layers) -> torch.Tensor:
            part = names[first:stop]
            keys = torch.cat([groups[name].bool() for name in part])  # (len(part) * rows, seq)
            edits = {f"lm.L{layer}.attn_probs": BlockKeys(keys, -1) for layer in blocked_layers}
            hidden = replay.inputs[start][:, offset:].repeat(len(part), 1, 1)
            with torch.no_grad(), intervene(model, edits):
                out = replay.logits(start, hidden, offset=offset)[:, 0]
            return token_probabilities(out, answer_ids.repeat(len(part))).view(len(part), rows)

        probability[w] = torch.cat(passes.run(run_pass)).float().cpu()
    return KnockoutRuns(starts, probability, baseline.float().cpu(), answer_ids.cpu())
