"""Head knockout and head patching, batched like causal tracing, with a layer x head grid as the result.

A head's output is its slice of the output projection's input (the
``lm.L{i}.head{j}`` and ``vision.L{i}.head{j}`` sites). Experiments:

- :func:`knockout_heads`: each head's output replaced by zeros or by its mean
  (over the batch's real tokens; for vision heads over every tower token), in
  the clean run;
- :func:`patch_heads`: each head's output copied from one run into the other,
  ``clean->corrupt`` (restoring, as tracing) or ``corrupt->clean`` (damaging),
  under the corruptions of :func:`mmlens.causal.trace` (pixel noise, noise on
  the image embeddings, a counterfactual batch).

``tower="vision"`` makes the grid of the vision tower's heads. ``positions``
limits every edit to chosen positions (image tokens, the last position, a
box of patches; :mod:`mmlens.causal.head_positions`); the head keeps its
output everywhere else. The metric is read at the last position.

Every head alone makes the grid; ``group`` adds one more condition, those
heads edited together ("one head or many"). The edited run is recorded once
and conditions run on stacked copies of the batch, copy ``c`` editing
condition ``c`` only, as many copies per pass as the memory budget holds
(:mod:`mmlens.causal.head_runs`: decoder heads resume at their first edited
layer, vision heads rerun the whole model).

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> grid = knockout_heads(model, make_sample("test", 0, "colour"))
    >>> grid.effect.shape  # (layers, heads)
    torch.Size([4, 4])
    >>> knockout_heads(model, make_sample("test", 0, "colour"), tower="vision", positions="patches").effect.shape
    torch.Size([3, 4])
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from mmlens.budget import MemoryBudget
from mmlens.causal.head_grid import DIRECTIONS, METRICS, HeadGrid
from mmlens.causal.head_positions import Where, describe_where, head_mask
from mmlens.causal.head_runs import Head, HeadRun, layer_count, layouts, metric_values, record_run
from mmlens.causal.tracing import _corrupted
from mmlens.errors import MmlensError, check_choice
from mmlens.hooks.sites import resolve
from mmlens.model import Batch, Model
from mmlens.readout import answer_token_ids

ABLATIONS = ("zero", "mean")
_SPEC = re.compile(r"^(?:(lm|vision)\.)?L(\d+)\.(?:H|head)(\d+)$", re.IGNORECASE)


def parse_heads(model: Model, specs: Sequence[str | Head], tower: str = "lm") -> list[Head]:
    """Heads of ``tower`` named ``L1.H2``, ``lm.L1.head2`` / ``vision.L1.head2`` or ``(1, 2)``, checked (one-line errors).

    Example:
        >>> parse_heads(model, ["L1.H2", (0, 3)])
        [(1, 2), (0, 3)]
        >>> parse_heads(model, ["vision.L0.head1"], tower="vision")
        [(0, 1)]
    """
    heads = []
    for spec in specs:
        if isinstance(spec, str):
            match = _SPEC.match(spec.strip())
            if not match:
                raise MmlensError(f"unknown head {spec!r}; name heads like L1.H2 (layer 1, head 2)")
            if match.group(1) and match.group(1).lower() != tower:
                raise MmlensError(f"head {spec!r} is a {match.group(1).lower()} head; this grid covers {tower} heads")
            spec = (int(match.group(2)), int(match.group(3)))
        layer, head = int(spec[0]), int(spec[1])
        resolve(model, f"{tower}.L{layer}.head{head}")  # range and fused-head errors
        heads.append((layer, head))
    return list(dict.fromkeys(heads))


def knockout_heads(model: Model, inputs: Any, *, ablation: str = "zero", heads: Sequence[str | Head] | None = None,
                   group: Sequence[str | Head] = (), answer: str | Sequence[str] | torch.Tensor | None = None,
                   metric: str = "probability", tower: str = "lm", positions: Where = None,
                   memory_budget: MemoryBudget = None,
                   progress: Callable[[int, int], None] | None = None) -> HeadGrid:
    """Ablate each head of ``tower`` (``zero``, or its ``mean``) in the clean run, at ``positions`` (default: all).

    ``inputs`` is a prepared :class:`Batch` or shapes samples; ``heads`` limits
    the cells computed (default: all); ``group`` heads are also ablated together.

    Example:
        >>> grid = knockout_heads(model, batch, ablation="mean", group=["L3.H0", "L3.H1"], positions="image")
        >>> grid.group_effect is not None, grid.settings["positions"]
        (True, 'image')
    """
    check_choice(ablation, ABLATIONS, "ablation")
    setup = _setup(model, inputs, metric, heads, group, tower, positions)
    run = record_run(model, setup.batch, tower)
    answer_ids, clean = _baseline(model, run, answer, metric)
    if ablation == "zero":
        sources = [torch.zeros(v.shape[-1], dtype=v.dtype) for v in run.values]
    elif tower == "lm":
        real = setup.batch.inputs.get("attention_mask", torch.ones(setup.batch.input_ids.shape)).bool()
        sources = [v[real.to(v.device)].mean(0) for v in run.values]
    else:  # a tower has no padding: every token is real
        sources = [v.reshape(-1, v.shape[-1]).mean(0) for v in run.values]
    edited = run.conditions(sources, setup.conditions, answer_ids, metric, memory_budget, progress,
                            setup.mask(model, run.values[0].shape[:-1]))
    return setup.grid(model, answer_ids, "knockout", {"ablation": ablation}, metric, clean, None, edited)


def patch_heads(model: Model, inputs: Any, *, direction: str = "clean->corrupt", corrupt: str | Batch = "noise",
                noise: float = 3.0, seed: int = 0, heads: Sequence[str | Head] | None = None,
                group: Sequence[str | Head] = (), answer: str | Sequence[str] | torch.Tensor | None = None,
                metric: str = "probability", tower: str = "lm", positions: Where = None,
                memory_budget: MemoryBudget = None,
                progress: Callable[[int, int], None] | None = None) -> HeadGrid:
    """Copy each head's output between the clean and the corrupted run (``direction``), as one head or a ``group``.

    ``corrupt``: ``"noise"`` (pixels), ``"embeddings"`` (image-token inputs;
    not for vision heads, it lands after the tower) or a counterfactual
    :class:`Batch` of the same layout; ``noise`` in units of the input's own
    standard deviation. ``positions``: where the head is copied (default: all).

    Example:
        >>> grid = patch_heads(model, batch, direction="corrupt->clean", corrupt="embeddings")
        >>> grid.effect.shape == (model.n_layers, 4)
        True
        >>> patch_heads(model, batch, tower="vision", positions=Box(0, 0, 32, 32)).settings["tower"]
        'vision'
    """
    check_choice(direction, DIRECTIONS, "direction")
    setup = _setup(model, inputs, metric, heads, group, tower, positions)
    clean_run, corrupt_run, corruption = record_pair(model, setup.batch, corrupt, noise, seed, tower)
    answer_ids, clean = _baseline(model, clean_run, answer, metric)
    _, corrupted = _baseline(model, corrupt_run, answer_ids, metric)
    target, source = (corrupt_run, clean_run) if direction == "clean->corrupt" else (clean_run, corrupt_run)
    edited = target.conditions(source.values, setup.conditions, answer_ids, metric, memory_budget, progress,
                               setup.mask(model, target.values[0].shape[:-1]))
    settings = {"direction": direction, "corruption": corruption}
    return setup.grid(model, answer_ids, "patching", settings, metric, clean, corrupted, edited)


# ---- the runs -------------------------------------------------------------
def as_batch(model: Model, inputs: Any) -> Batch:
    """A prepared batch, or one prepared from shapes samples (their prompts and images).

    Example:
        >>> as_batch(model, make_sample("test", 0, "colour")).input_ids.shape[0]
        1
    """
    if isinstance(inputs, Batch):
        return inputs
    samples = [inputs] if not isinstance(inputs, (list, tuple)) else list(inputs)
    if not samples or not all(hasattr(s, "prompt") and hasattr(s, "image") for s in samples):
        raise MmlensError("give a prepared batch (model.prepare) or shapes samples")
    return model.prepare([s.prompt for s in samples], [[s.image] for s in samples])


def record_pair(model: Model, batch: Batch, corrupt: str | Batch, noise: float, seed: int,
                tower: str = "lm") -> tuple[HeadRun, HeadRun, dict[str, Any]]:
    """Record ``batch`` clean and under ``corrupt`` (see :func:`patch_heads`); returns both runs and the corruption.

    Example:
        >>> record_pair(model, batch, "noise", 3.0, 0)[2]["kind"]
        'noise'
    """
    check_corruption(tower, corrupt)
    clean = record_run(model, batch, tower)
    corrupted, corruption, embed_edit = _corrupted(batch, clean.embed, corrupt, noise, seed)
    edits = {"lm.embed": embed_edit} if embed_edit is not None else {}
    return clean, record_run(model, corrupted, tower, edits), corruption


def record_heads(model: Model, batch: Batch, tower: str = "lm") -> list[torch.Tensor]:
    """Each layer's heads on one forward of ``batch``: ``(..., positions, heads x head_dim)`` per layer.

    Example:
        >>> len(record_heads(model, batch)) == model.n_layers
        True
    """
    return record_run(model, batch, tower).values


# ---- helpers --------------------------------------------------------------
def check_corruption(tower: str, corrupt: str | Batch) -> None:
    """One line when ``corrupt`` cannot move ``tower``'s heads: embedding noise lands after the vision tower.

    Example:
        >>> check_corruption("vision", "noise")
    """
    if tower == "vision" and isinstance(corrupt, str) and corrupt == "embeddings":
        raise MmlensError("noise on the image embeddings lands after the vision tower, whose heads are then the same "
                          "in both runs: corrupt the pixels (noise) or give a counterfactual image")


@dataclass
class Setup:
    """What every grid starts from, checked: its start time, batch, tower, cells, group and positions."""

    start: float
    batch: Batch
    tower: str
    cells: list[Head]
    group: list[Head]
    positions: Where

    @property
    def conditions(self) -> list[list[Head]]:
        """Every single head, then the group (if any)."""
        return [[c] for c in self.cells] + ([self.group] if self.group else [])

    def mask(self, model: Model, shape: Sequence[int]) -> torch.Tensor | None:
        """The positions' mask on head sites of ``shape`` (without the last axis); None for every position."""
        if self.positions is None or (isinstance(self.positions, str) and self.positions == "all"):
            return None
        return head_mask(model, self.batch, self.positions, self.tower, shape)

    def grid(self, model: Model, answer_ids: torch.Tensor, kind: str, settings: dict, metric: str,
             clean: torch.Tensor, corrupt: torch.Tensor | None, edited: torch.Tensor) -> HeadGrid:
        """Scatter per-condition values ``(conditions, batch)`` into the grid."""
        counts = [layout.n_heads for layout in layouts(model, self.tower)]
        grid = torch.full((self.batch.input_ids.shape[0], len(counts), max(counts)), float("nan"))
        for (layer, head), values in zip(self.cells, edited):
            grid[:, layer, head] = values
        settings = {**settings, "tower": self.tower, "positions": describe_where(self.positions)}
        return HeadGrid(model=model.name, prompts=list(self.batch.prompts),
                        answers=model.tokenizer.convert_ids_to_tokens(answer_ids.tolist()), answer_ids=answer_ids,
                        kind=kind, settings=settings, metric=metric, clean=clean, corrupt=corrupt, edited=grid,
                        group=self.group, group_edited=edited[len(self.cells)] if self.group else None,
                        seconds=time.perf_counter() - self.start)


def _setup(model: Model, inputs: Any, metric: str, heads: Sequence[str | Head] | None,
           group: Sequence[str | Head], tower: str = "lm", positions: Where = None) -> Setup:
    """The checked :class:`Setup` of a grid (bad input fails here, before any forward pass)."""
    start = time.perf_counter()
    check_choice(metric, METRICS, "metric")
    count = layer_count(model, tower)
    batch = as_batch(model, inputs)
    if tower == "vision" and "pixel_values" not in batch.inputs:
        raise MmlensError("vision heads need an image in the batch")
    cells = parse_heads(model, heads, tower) if heads is not None else [
        (layer, head) for layer, layout in zip(range(count), layouts(model, tower)) for head in range(layout.n_heads)]
    if tower == "lm" and positions is not None:
        head_mask(model, batch, positions, tower)  # bad positions fail before any forward
    return Setup(start, batch, tower, cells, parse_heads(model, group, tower), positions)


def _baseline(model: Model, run: HeadRun, answer: Any, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer ids (default: this run's top token) and their metric in the recorded run."""
    answer_ids = answer_token_ids(model, answer, run.logits, run.rows).cpu()
    return answer_ids, metric_values(run.logits, answer_ids, metric)
