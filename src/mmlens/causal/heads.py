"""Head knockout and head patching, batched like causal tracing, with a layer x head grid as the result.

A head's output is its slice of the output projection's input (the
``lm.L{i}.head{j}`` site). Experiments:

- :func:`knockout_heads`: each head's output replaced by zeros or by its mean
  over the batch's real tokens, in the clean run;
- :func:`patch_heads`: each head's output copied from one run into the other,
  ``clean->corrupt`` (restoring, as tracing) or ``corrupt->clean`` (damaging),
  under the corruptions of :func:`mmlens.causal.trace` (pixel noise, noise on
  the image embeddings, a counterfactual batch).

Every head alone makes the grid; ``group`` adds one more condition, those
heads edited together ("one head or many"). The edited run is recorded once
(:func:`~mmlens.causal.replay.record_layers`) and each condition resumes at its
first edited layer on stacked copies of the batch, copy ``c`` editing
condition ``c`` only, as many copies per pass as the memory budget holds.
Edits cover every position; the metric is read at the last one.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("shapes-llava")
    >>> grid = knockout_heads(model, make_sample("test", 0, "colour"))
    >>> grid.effect.shape  # (layers, heads)
    torch.Size([4, 4])
"""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from typing import Any, Callable, Sequence

import torch

from mmlens.budget import MemoryBudget, plan_passes
from mmlens.causal.head_grid import DIRECTIONS, METRICS, HeadGrid
from mmlens.causal.replay import LayerReplay, record_layers
from mmlens.causal.tracing import _corrupted
from mmlens.errors import MmlensError
from mmlens.hooks import Site, attach, capture
from mmlens.hooks.sites import heads_of, resolve
from mmlens.model import Batch, Model
from mmlens.readout import answer_token_ids, token_probabilities

Head = tuple[int, int]  # (layer, head)
ABLATIONS = ("zero", "mean")
_SPEC = re.compile(r"^(?:lm\.)?L(\d+)\.(?:H|head)(\d+)$", re.IGNORECASE)


def parse_heads(model: Model, specs: Sequence[str | Head]) -> list[Head]:
    """Heads named ``L1.H2``, ``lm.L1.head2`` or ``(1, 2)``, checked against the model (one-line errors).

    Example:
        >>> parse_heads(model, ["L1.H2", (0, 3)])
        [(1, 2), (0, 3)]
    """
    heads = []
    for spec in specs:
        if isinstance(spec, str):
            match = _SPEC.match(spec.strip())
            if not match:
                raise MmlensError(f"unknown head {spec!r}; name heads like L1.H2 (layer 1, head 2)")
            spec = (int(match.group(1)), int(match.group(2)))
        layer, head = int(spec[0]), int(spec[1])
        resolve(model, f"lm.L{layer}.head{head}")  # range and fused-head errors
        heads.append((layer, head))
    return list(dict.fromkeys(heads))


def knockout_heads(model: Model, inputs: Any, *, ablation: str = "zero", heads: Sequence[str | Head] | None = None,
                   group: Sequence[str | Head] = (), answer: str | Sequence[str] | torch.Tensor | None = None,
                   metric: str = "probability", memory_budget: MemoryBudget = None,
                   progress: Callable[[int, int], None] | None = None) -> HeadGrid:
    """Ablate each head (``zero``, or its ``mean`` over the batch's real tokens) in the clean run.

    ``inputs`` is a prepared :class:`Batch` or shapes samples; ``heads`` limits
    the cells computed (default: all); ``group`` heads are also ablated together.

    Example:
        >>> grid = knockout_heads(model, batch, ablation="mean", group=["L3.H0", "L3.H1"])
        >>> grid.group_effect is not None
        True
    """
    check_choice(ablation, ABLATIONS, "ablation")
    start, batch, cells, group = _setup(model, inputs, metric, heads, group)
    replay, values, _ = record_heads(model, batch)
    answer_ids, clean = _baseline(model, replay, answer, metric)
    if ablation == "zero":
        sources = [torch.zeros_like(v[:1, :1]) for v in values]
    else:
        real = batch.inputs.get("attention_mask", torch.ones(batch.input_ids.shape)).bool().to(values[0].device)
        sources = [v[real].mean(0)[None, None] for v in values]
    edited = run_conditions(model, replay, sources, [[c] for c in cells] + ([group] if group else []), answer_ids,
                            metric, memory_budget, progress)
    return _grid(model, batch, answer_ids, "knockout", {"ablation": ablation}, metric, clean, None, cells, group,
                 edited, time.perf_counter() - start)


def patch_heads(model: Model, inputs: Any, *, direction: str = "clean->corrupt", corrupt: str | Batch = "noise",
                noise: float = 3.0, seed: int = 0, heads: Sequence[str | Head] | None = None,
                group: Sequence[str | Head] = (), answer: str | Sequence[str] | torch.Tensor | None = None,
                metric: str = "probability", memory_budget: MemoryBudget = None,
                progress: Callable[[int, int], None] | None = None) -> HeadGrid:
    """Copy each head's output between the clean and the corrupted run (``direction``), as one head or a ``group``.

    ``corrupt``: ``"noise"`` (pixels), ``"embeddings"`` (image-token inputs) or
    a counterfactual :class:`Batch` of the same layout; ``noise`` in units of
    the input's own standard deviation.

    Example:
        >>> grid = patch_heads(model, batch, direction="corrupt->clean", corrupt="embeddings")
        >>> grid.effect.shape == (model.n_layers, 4)
        True
    """
    check_choice(direction, DIRECTIONS, "direction")
    start, batch, cells, group = _setup(model, inputs, metric, heads, group)
    pair = record_pair(model, batch, corrupt, noise, seed)
    answer_ids, clean = _baseline(model, pair.clean, answer, metric)
    _, corrupted = _baseline(model, pair.corrupt, answer_ids, metric)
    target, sources = (pair.corrupt, pair.clean_values) if direction == "clean->corrupt" else (
        pair.clean, pair.corrupt_values)
    edited = run_conditions(model, target, sources, [[c] for c in cells] + ([group] if group else []), answer_ids,
                            metric, memory_budget, progress)
    settings = {"direction": direction, "corruption": pair.corruption}
    return _grid(model, batch, answer_ids, "patching", settings, metric, clean, corrupted, cells, group, edited,
                 time.perf_counter() - start)


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


def projection_sites(model: Model) -> list[Site]:
    """Per decoder layer, its output projection's input: every head's output side by side.

    Example:
        >>> projection_sites(model)[0].name
        'lm.L0.heads'
    """
    return [Site(f"lm.L{i}.heads", heads_of(model, "lm", i).out_proj, "input") for i in range(model.n_layers)]


def record_heads(model: Model, batch: Batch,
                 edits: dict | None = None) -> tuple[LayerReplay, list[torch.Tensor], torch.Tensor]:
    """One forward of ``batch``: its layer replay, each layer's heads ``(batch, seq, heads x head_dim)``, ``lm.embed``.

    Example:
        >>> replay, heads, embeds = record_heads(model, batch)
        >>> len(heads) == model.n_layers
        True
    """
    values: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers)]

    def keep(layer: int):
        def read(value: torch.Tensor) -> None:
            values[layer].append(value.detach())

        return read

    with ExitStack() as stack:
        for layer, site in enumerate(projection_sites(model)):
            stack.enter_context(attach(site, keep(layer)))
        captured = stack.enter_context(capture(model, "lm.embed"))
        replay = record_layers(model, batch, edits)
    return replay, [v[0] for v in values], captured["lm.embed"]


class RecordedPair:
    """The clean and the corrupted run, recorded: replays, head outputs, and the corruption's description."""

    def __init__(self, clean: LayerReplay, clean_values: list[torch.Tensor], corrupt: LayerReplay,
                 corrupt_values: list[torch.Tensor], corruption: dict[str, Any], corrupted: Batch,
                 edits: dict) -> None:
        self.clean, self.clean_values, self.corrupt, self.corrupt_values = clean, clean_values, corrupt, corrupt_values
        self.corruption, self.corrupted, self.edits = corruption, corrupted, edits


def record_pair(model: Model, batch: Batch, corrupt: str | Batch, noise: float, seed: int) -> RecordedPair:
    """Record ``batch`` clean and under ``corrupt`` (see :func:`patch_heads`).

    Example:
        >>> record_pair(model, batch, "noise", 3.0, 0).corruption["kind"]
        'noise'
    """
    clean, clean_values, embeds = record_heads(model, batch)
    corrupted, corruption, embed_edit = _corrupted(batch, embeds, corrupt, noise, seed)
    edits = {"lm.embed": embed_edit} if embed_edit is not None else {}
    corrupt_run, corrupt_values, _ = record_heads(model, corrupted, edits)
    return RecordedPair(clean, clean_values, corrupt_run, corrupt_values, corruption, corrupted, edits)


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


def run_conditions(model: Model, replay: LayerReplay, sources: Sequence[torch.Tensor],
                   conditions: Sequence[Sequence[Head]], answer_ids: torch.Tensor, metric: str,
                   memory_budget: MemoryBudget = None,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The metric ``(conditions, batch)`` with each condition's heads set to ``sources[layer]``'s slice.

    ``sources[layer]`` broadcasts to ``(batch, seq, heads x head_dim)``.
    Conditions sharing a first layer run together, resumed there.

    Example:
        >>> replay, heads, _ = record_heads(model, batch)
        >>> zeros = [torch.zeros(1, 1, h.shape[-1]) for h in heads]
        >>> run_conditions(model, replay, zeros, [[(0, 1)], [(0, 1), (2, 3)]], answer_ids, "logit").shape
        torch.Size([2, 1])
    """
    rows, seq = replay.batch_size, replay.output.shape[1]
    layouts = [heads_of(model, "lm", i) for i in range(model.n_layers)]
    sites = projection_sites(model)
    out = torch.empty(len(conditions), rows)
    by_start: dict[int, list[int]] = {}
    for index, condition in enumerate(conditions):
        by_start.setdefault(min(layer for layer, _ in condition), []).append(index)
    done = 0
    for start, indices in sorted(by_start.items()):
        passes = plan_passes(model, len(indices), seq, memory_budget, rows=rows, what="head patching")

        def run_pass(first: int, stop: int, start: int = start, indices: list[int] = indices) -> None:
            nonlocal done
            part = [conditions[i] for i in indices[first:stop]]
            hidden = replay.inputs[start].repeat(len(part), 1, 1)
            with ExitStack() as stack, torch.no_grad():
                for layer in sorted({layer for condition in part for layer, _ in condition}):
                    edit = _set_heads(layer, part, sources[layer], layouts[layer], rows)
                    stack.enter_context(attach(sites[layer], edit))
                logits = replay.logits(start, hidden)[:, 0]
            out[indices[first:stop]] = metric_values(logits, answer_ids, metric).view(len(part), rows)
            done += len(part)
            if progress is not None:
                progress(done, len(conditions))

        passes.run(run_pass)
    return out


def _set_heads(layer: int, part: Sequence[Sequence[Head]], source: torch.Tensor, layout: Any, rows: int):
    """An edit of layer ``layer``'s projection input: copy ``c`` gets its condition's heads from ``source``."""
    def edit(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        src = source.to(value.device, value.dtype).expand(rows, value.shape[1], value.shape[2])
        for c, condition in enumerate(part):
            for edited_layer, head in condition:
                if edited_layer == layer:
                    columns = layout.columns(head)
                    out[c * rows:(c + 1) * rows, :, columns] = src[..., columns]
        return out

    return edit


# ---- helpers --------------------------------------------------------------
def check_choice(value: str, known: Sequence[str], noun: str) -> None:
    """One line naming the choices when ``value`` is not one of them.

    Example:
        >>> check_choice("zero", ABLATIONS, "ablation")
    """
    if value not in known:
        raise MmlensError(f"unknown {noun} {value!r}; choose one of {', '.join(known)}")


def _setup(model: Model, inputs: Any, metric: str, heads: Sequence[str | Head] | None,
           group: Sequence[str | Head]) -> tuple[float, Batch, list[Head], list[Head]]:
    """What every grid starts from: its start time, the batch, the single-head cells and the group, all checked."""
    check_choice(metric, METRICS, "metric")
    return time.perf_counter(), as_batch(model, inputs), _cells(model, heads), parse_heads(model, group)


def _cells(model: Model, heads: Sequence[str | Head] | None) -> list[Head]:
    """The single-head conditions: ``heads``, or every head of every decoder layer."""
    if heads is not None:
        return parse_heads(model, heads)
    return [(layer, head) for layer in range(model.n_layers) for head in range(heads_of(model, "lm", layer).n_heads)]


def _baseline(model: Model, replay: LayerReplay, answer: Any, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer ids (default: this run's top token) and their metric in the recorded run."""
    with torch.no_grad():
        logits = replay.logits(model.n_layers, replay.inputs[model.n_layers])[:, 0]
    answer_ids = answer_token_ids(model, answer, logits, replay.batch_size).cpu()
    return answer_ids, metric_values(logits, answer_ids, metric)


def _grid(model: Model, batch: Batch, answer_ids: torch.Tensor, kind: str, settings: dict, metric: str,
          clean: torch.Tensor, corrupt: torch.Tensor | None, cells: list[Head], group: list[Head],
          edited: torch.Tensor, seconds: float) -> HeadGrid:
    """Scatter per-condition values ``(conditions, batch)`` into the grid."""
    n_heads = max(heads_of(model, "lm", i).n_heads for i in range(model.n_layers))
    grid = torch.full((batch.input_ids.shape[0], model.n_layers, n_heads), float("nan"))
    for (layer, head), values in zip(cells, edited):
        grid[:, layer, head] = values
    return HeadGrid(model=model.name, prompts=list(batch.prompts),
                    answers=model.tokenizer.convert_ids_to_tokens(answer_ids.tolist()), answer_ids=answer_ids,
                    kind=kind, settings=settings, metric=metric, clean=clean, corrupt=corrupt, edited=grid,
                    group=group, group_edited=edited[len(cells)] if group else None, seconds=seconds)
