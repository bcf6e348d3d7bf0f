"""Shared plumbing of the neuron methods: samples to batches, datasets, and a progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmlens.budget import MemoryBudget, budget_bytes, row_bytes, rows_per_pass
from mmlens.data.sample import IMAGE_SLOT, Sample
from mmlens.errors import MmlensError

if TYPE_CHECKING:
    from mmlens.model import Batch, Model

Datasets = Mapping[str, Sequence[Sample]]
VISION_SHARE = 2  # a forward of the whole model: the language model's estimate, doubled for the vision tower


def as_datasets(samples: Sequence[Sample] | Datasets, name: str = "samples") -> dict[str, list[Sample]]:
    """``{dataset name: samples}`` from either a mapping or one plain sequence.

    Example:
        >>> list(as_datasets([]))
        ['samples']
    """
    if isinstance(samples, Mapping):
        return {str(key): list(value) for key, value in samples.items()}
    return {name: list(samples)}


def chunks(samples: Sequence[Sample], size: int) -> Iterator[list[Sample]]:
    """Consecutive slices of ``size`` samples (the last may be shorter)."""
    if size < 1:
        raise MmlensError("batch_size must be at least 1")
    for start in range(0, len(samples), size):
        yield list(samples[start:start + size])


def budget_batches(model: "Model", samples: Sequence[Sample], memory_budget: MemoryBudget = None,
                   what: str = "neuron scoring") -> Iterator[tuple[list[Sample], "Batch"]]:
    """Consecutive batches of ``samples``, as many per forward as ``memory_budget`` holds (:mod:`mmlens.budget`).

    Each batch is prepared first and its real length priced with
    :func:`~mmlens.budget.row_bytes` (doubled: the vision tower runs in the same
    forward); a batch over the budget is cut down before it runs. A budget
    too small for the first sample raises before any forward pass. Scores do
    not depend on the grouping: every statistic is summed per sample.

    Example:
        >>> [len(chunk) for chunk, _ in budget_batches(model, make_dataset("val", 3), "unlimited")]  # doctest: +SKIP
        [3]
    """
    samples = list(samples)
    budget = budget_bytes(memory_budget, model.device)

    def fitting(batch: "Batch", count: int) -> int:  # one line if even one sample does not fit
        return rows_per_pass(budget, VISION_SHARE * row_bytes(model, batch.input_ids.shape[1]), count, what)

    size, start = 0, 0
    while start < len(samples):
        if not size:  # sized from the first sample, then checked on each batch's real length
            size = fitting(prepare_samples(model, samples[:1]), len(samples))
        part = samples[start:start + size]
        batch = prepare_samples(model, part)
        fits = fitting(batch, len(part))
        if fits < len(part):
            size = fits
            continue
        yield part, batch
        start += len(part)


def prepare_samples(model: "Model", samples: Sequence[Sample], padding_side: str = "left") -> "Batch":
    """One batch of samples; a text-only model gets the prompts without their image slot."""
    prompts = [sample.prompt for sample in samples]
    if not model.adapter.multimodal:
        prompts = [" ".join(p.replace(IMAGE_SLOT, " ").split()) for p in prompts]
        return model.prepare(prompts, padding_side=padding_side)
    return model.prepare(prompts, [[sample.image] for sample in samples], padding_side=padding_side)


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator["Advance"]:
    """A transient rich progress bar on stderr; ``advance(n)`` moves it (a no-op when disabled or off a terminal,
    where a rich bar shows nothing and leaves a blank line when it stops)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield Advance(None, None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        yield Advance(bar, bar.add_task(description, total=total))


class Advance:
    """Moves one progress task forward."""

    def __init__(self, bar: Progress | None, task: object) -> None:
        self._bar, self._task = bar, task

    def __call__(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, steps)  # type: ignore[arg-type]
