"""Exhaustive path patching from a source, per head and MLP: the check that CD-T is ranked against.

For each component, the clean run gets that component's output from the run
whose source positions hold the reference (everything downstream recomputed,
every other component clean): the drop of the answer logit is the source's
effect through that component. All components run in one batched pass on the
:class:`~mmlens.circuits.graph.DecoderGraph`, whose logits are checked against
the model's own.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> effects = path_patch(model, model.prepare("a red circle"), [2])
    >>> effects.effects.shape[0] == len(effects.components)
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from mmlens.circuits.cdt import clean_run, reference_embeds
from mmlens.circuits.graph import FREEZABLE, DecoderGraph
from mmlens.model import Batch, Model


@dataclass
class PathPatching:
    """Per component, the answer-logit drop when its output comes from the source-replaced run."""

    components: list[str]
    effects: torch.Tensor  # (components,): clean target - patched target
    total: float  # clean target - target with the source replaced everywhere
    seconds: float


def path_patch(model: Model, batch: Batch, source_positions: Sequence[int], *, answer: str | int | None = None,
               foil: str | int | None = None, reference: str | torch.Tensor = "mean", frozen: bool | str = False,
               graph: DecoderGraph | None = None) -> PathPatching:
    """Path patching from ``source_positions`` of row 0 through every head and MLP (same target as CD-T).

    ``frozen=True`` keeps the clean run's attention probabilities and norm
    scales in every run (the part of the model CD-T linearises; "probs" or
    "norms" keeps one of them): a diagnostic of where CD-T and patching part ways.

    Example:
        >>> path_patch(model, batch, [1, 2], answer="red").total  # doctest: +SKIP
        1.7
    """
    graph = graph or DecoderGraph(model)
    start = time.perf_counter()
    call, positions, clean, answer_id, foil_id = clean_run(model, batch, source_positions, answer, foil, graph)
    with torch.no_grad():
        replaced = call.embeds.float().clone()
        replaced[0, positions] = reference_embeds(call, model, batch, reference)[0, positions]
        fixed = clean if frozen else None
        freeze = (frozen,) if isinstance(frozen, str) else FREEZABLE
        corrupt = graph.run(call, replaced, frozen=fixed, freeze=freeze)
        components = len(graph.nodes) - 1

        def edit(node: int, output: torch.Tensor) -> torch.Tensor:
            if node == 0:
                return output
            output = output.clone()
            output[node - 1] = corrupt.outputs[node, 0]  # row c patches component c
            return output

        patched = graph.run(call, call.embeds.float().expand(components, -1, -1), edit=edit, frozen=fixed,
                            freeze=freeze)

    def target(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, answer_id] - (logits[:, foil_id] if foil_id is not None else 0.0)

    clean_target = float(target(clean.logits)[0])
    return PathPatching(components=graph.nodes[1:], effects=clean_target - target(patched.logits),
                        total=clean_target - float(target(corrupt.logits)[0]), seconds=time.perf_counter() - start)
