"""Recorded runs that head grids edit: each layer's heads, and many conditions per pass on stacked copies.

A head grid records a run once (clean, or corrupted), keeping every layer's
heads (the output projection's input, ``(..., positions, heads x head_dim)``),
then runs conditions, condition ``c`` editing copy ``c`` of a stacked batch:

- :class:`LmRun` (``lm`` heads): the decoder call is recorded once
  (:func:`~mmlens.causal.replay.record_layers`) and each condition resumes at
  its first edited layer, so only the layers above it run again;
- :class:`VisionRun` (``vision`` heads): an edit inside the tower changes
  everything after it, so each pass is a whole forward of stacked copies of
  the batch (every input tensor repeated along its first axis: images, tiles
  and Qwen2-VL's packed patches stay in copy order), and copy ``c`` is the
  ``c``-th equal slice of the tower's first axis.

Example:
    >>> import mmlens, torch
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> batch = model.prepare(make_sample("test", 0).prompt, [make_sample("test", 0).image])
    >>> run = record_run(model, batch, "vision")
    >>> zeros = [torch.zeros(v.shape[-1]) for v in run.values]
    >>> run.conditions(zeros, [[(0, 1)], [(1, 2)]], run.logits.argmax(-1), "logit").shape
    torch.Size([2, 1])
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Sequence

import torch

from mmlens.budget import MemoryBudget, plan_passes
from mmlens.causal.head_positions import fit_mask
from mmlens.causal.replay import record_layers
from mmlens.errors import MmlensError, check_choice
from mmlens.hooks import Site, attach, capture, intervene
from mmlens.hooks.sites import heads_of
from mmlens.model import Batch, Model
from mmlens.models.heads import HeadLayout
from mmlens.models.runtime import last_logits_only
from mmlens.readout import token_probabilities

Head = tuple[int, int]  # (layer, head)
TOWERS = ("lm", "vision")
Progress = Callable[[int, int], None] | None


def layer_count(model: Model, tower: str) -> int:
    """Layers of ``tower``; one line when the model has no vision tower.

    Example:
        >>> layer_count(model, "vision")
        3
    """
    check_choice(tower, TOWERS, "tower")
    if tower == "vision" and not (model.adapter.multimodal and model.vision_layers is not None):
        raise MmlensError(f"{model.name} has no vision tower: its heads are lm heads (tower='lm')")
    return model.n_layers if tower == "lm" else model.n_vision_layers


def layouts(model: Model, tower: str) -> list[HeadLayout]:
    """Every layer's head split (one line where the family fuses heads)."""
    return [heads_of(model, tower, i) for i in range(layer_count(model, tower))]


def projection_sites(model: Model, tower: str = "lm") -> list[Site]:
    """Per layer of ``tower``, its output projection's input: every head's output side by side.

    Example:
        >>> projection_sites(model)[0].name, projection_sites(model, "vision")[0].name
        ('lm.L0.heads', 'vision.L0.heads')
    """
    return [Site(f"{tower}.L{i}.heads", layout.out_proj, "input") for i, layout in enumerate(layouts(model, tower))]


def metric_values(logits: torch.Tensor, answer_ids: torch.Tensor, metric: str) -> torch.Tensor:
    """The answer's probability or logit per row of last-position ``logits`` (stacked copies allowed), on the CPU.

    Example:
        >>> metric_values(torch.zeros(2, 10), torch.tensor([1]), "probability")
        tensor([0.1000, 0.1000])
    """
    if metric == "probability":
        return token_probabilities(logits, answer_ids)
    ids = answer_ids.repeat(logits.shape[0] // answer_ids.shape[0]).to(logits.device)
    return logits.float().gather(-1, ids[:, None])[:, 0].cpu()


class HeadRun:
    """A recorded run of one tower's heads: ``values[layer]``, last-position ``logits`` and ``embed`` (``lm.embed``)."""

    tower = "lm"

    def __init__(self, model: Model, batch: Batch, edits: dict | None = None) -> None:
        self.model, self.batch, self.edits = model, batch, dict(edits or {})
        self.rows = batch.input_ids.shape[0]
        self.layouts = layouts(model, self.tower)
        self.sites = projection_sites(model, self.tower)
        self.values: list[torch.Tensor] = []
        self.logits = self.embed = torch.empty(0)
        self._record()

    def conditions(self, sources: Sequence[torch.Tensor], conditions: Sequence[Sequence[Head]],
                   answer_ids: torch.Tensor, metric: str, memory_budget: MemoryBudget = None,
                   progress: Progress = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The metric ``(conditions, rows)`` with each condition's heads set to ``sources[layer]``'s slice.

        ``sources[layer]`` broadcasts to one copy of that layer's heads;
        ``mask`` (positions, :mod:`mmlens.causal.head_positions`) limits every edit.
        """
        out = torch.empty(len(conditions), self.rows)
        done = 0
        for start, indices in self._plan(conditions):
            passes = plan_passes(self.model, len(indices), self.batch.input_ids.shape[1], memory_budget,
                                 rows=self.rows, what=f"{self.tower} head patching")

            def run_pass(first: int, stop: int, start: int = start, indices: list[int] = indices) -> None:
                nonlocal done
                part = [conditions[i] for i in indices[first:stop]]
                with ExitStack() as stack, torch.no_grad():
                    for layer in sorted({layer for condition in part for layer, _ in condition}):
                        edit = set_heads(layer, part, sources[layer], self.layouts[layer], mask)
                        stack.enter_context(attach(self.sites[layer], edit))
                    logits = self._logits(start, len(part))
                out[indices[first:stop]] = metric_values(logits, answer_ids, metric).view(len(part), self.rows)
                done += len(part)
                if progress is not None:
                    progress(done, len(conditions))

            passes.run(run_pass)
        return out

    # ---- what each tower does -------------------------------------------
    def _record(self) -> None:
        raise NotImplementedError

    def _plan(self, conditions: Sequence[Sequence[Head]]) -> list[tuple[int, list[int]]]:
        raise NotImplementedError

    def _logits(self, start: int, copies: int) -> torch.Tensor:
        raise NotImplementedError

    def _keepers(self, stack: ExitStack) -> list[list[torch.Tensor]]:
        """Attach readers of every layer's heads; returns the lists they fill (one per layer, one value a call)."""
        kept: list[list[torch.Tensor]] = [[] for _ in self.sites]
        for layer, site in enumerate(self.sites):
            stack.enter_context(attach(site, lambda value, kept=kept[layer]: kept.append(value.detach())))
        return kept


class LmRun(HeadRun):
    """Decoder heads: the decoder call recorded once, each condition resumed at its first edited layer."""

    tower = "lm"

    def _record(self) -> None:
        with ExitStack() as stack:
            kept = self._keepers(stack)
            captured = stack.enter_context(capture(self.model, "lm.embed"))
            self.replay = record_layers(self.model, self.batch, self.edits)
        self.values, self.embed = [k[0] for k in kept], captured["lm.embed"]
        with torch.no_grad():
            n = self.model.n_layers
            self.logits = self.replay.logits(n, self.replay.inputs[n])[:, 0]

    def _plan(self, conditions: Sequence[Sequence[Head]]) -> list[tuple[int, list[int]]]:
        by_start: dict[int, list[int]] = {}
        for index, condition in enumerate(conditions):
            by_start.setdefault(min(layer for layer, _ in condition), []).append(index)
        return sorted(by_start.items())

    def _logits(self, start: int, copies: int) -> torch.Tensor:
        return self.replay.logits(start, self.replay.inputs[start].repeat(copies, 1, 1))[:, 0]


class VisionRun(HeadRun):
    """Vision-tower heads: whole forwards of stacked copies, copy ``c`` the ``c``-th slice of the tower's first axis."""

    tower = "vision"

    def _record(self) -> None:
        with ExitStack() as stack, torch.no_grad():
            kept = self._keepers(stack)
            captured = stack.enter_context(capture(self.model, "lm.embed"))
            stack.enter_context(intervene(self.model, self.edits))
            self.logits = self.model.forward(self.batch, use_cache=False, **last_logits_only(self.model.hf)).logits[:, -1]
        self.values, self.embed = [k[0] for k in kept], captured["lm.embed"]

    def _plan(self, conditions: Sequence[Sequence[Head]]) -> list[tuple[int, list[int]]]:
        return [(0, list(range(len(conditions))))]

    def _logits(self, start: int, copies: int) -> torch.Tensor:
        with intervene(self.model, self.edits):
            return self.model.forward(stacked(self.batch, copies), use_cache=False,
                                      **last_logits_only(self.model.hf)).logits[:, -1]


def record_run(model: Model, batch: Batch, tower: str = "lm", edits: dict | None = None) -> HeadRun:
    """Record ``batch`` (under ``edits``) for a grid of ``tower``'s heads.

    Example:
        >>> len(record_run(model, batch, "lm").values) == model.n_layers
        True
    """
    layer_count(model, tower)  # an unknown tower, or no vision tower: one line
    return (LmRun if tower == "lm" else VisionRun)(model, batch, edits)


def stacked(batch: Batch, copies: int) -> Batch:
    """``copies`` copies of ``batch`` one after another: every input tensor repeated along its first axis.

    Example:
        >>> stacked(batch, 3).input_ids.shape[0] == 3 * batch.input_ids.shape[0]
        True
    """
    if copies == 1:
        return batch
    inputs = {k: v.repeat(copies, *[1] * (v.ndim - 1)) if isinstance(v, torch.Tensor) and v.ndim else v
              for k, v in batch.inputs.items()}
    return Batch(inputs, batch.layout, list(batch.prompts) * copies, list(batch.images) * copies)


def set_heads(layer: int, part: Sequence[Sequence[Head]], source: torch.Tensor, layout: HeadLayout,
              mask: torch.Tensor | None = None):
    """An edit of layer ``layer``'s heads: copy ``c`` (the ``c``-th slice of the first axis) gets its condition's
    heads from ``source`` (broadcast to one copy), where ``mask`` allows.

    Example:
        >>> edit = set_heads(0, [[(0, 1)]], torch.zeros(8), HeadLayout(torch.nn.Linear(8, 8), 2, 4))
        >>> edit(torch.ones(1, 3, 8))[0, 0].tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    def edit(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        chunk = value.shape[0] // len(part)
        src = source.to(value.device, value.dtype).expand(value[:chunk].shape)
        keep = None if mask is None else fit_mask(mask, value[:chunk])[..., None]
        for c, condition in enumerate(part):
            rows = slice(c * chunk, (c + 1) * chunk)
            for edited_layer, head in condition:
                if edited_layer == layer:
                    columns = layout.columns(head)
                    new = src[..., columns]
                    out[rows, ..., columns] = new if keep is None else torch.where(keep, new, out[rows, ..., columns])
        return out

    return edit
