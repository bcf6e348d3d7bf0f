"""``mmlens neurons``: which decoder neurons serve image, text and special tokens (MINER), and where they sit.

Scores every decoder MLP neuron on held-out shapes-world samples (one dataset
per question type), selects the top ``--ratio`` under a ``--budget``, and
writes into ``--out``: the selection (``neurons_modality.safetensors`` +
``.json``, reloadable with :func:`mmlens.report.files.load_neuron_set`), the score
matrices (``modality_scores.safetensors``), a depth figure, the
top-activating samples of the strongest image neuron, ``neurons.json`` and
``neurons.html``. ``--domains`` adds domain-specific neurons (MMNeuron,
question types as domains) over the decoder, vision tower and projector, and
prints them. The work itself is :func:`mmlens.runner.neurons.find_neurons`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmlens.cli.options import (
    JsonOption,
    MemoryBudgetOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    memory_budget as parse_memory_budget,
    print_json,
    stdout_for_json,
)
from mmlens.cli.samples import load_model
from mmlens.errors import MmlensError, check_choice
from mmlens.neurons.modality import BUDGETS, parse_weights
from mmlens.report.neurons import domain_table
from mmlens.report.output import OutputFolder
from mmlens.runner.neurons import find_neurons


def neurons(
    model: Optional[str] = ModelOption,
    out: Path = OutOption,
    samples: int = typer.Option(40, "--samples", "-n", help="Samples per question type (each type is a dataset)."),
    ratio: float = typer.Option(0.02, "--ratio", help="Share of the decoder's neurons to select per budget."),
    budget: str = typer.Option("modality", "--budget", help=f"One of {', '.join(BUDGETS)}."),
    score: str = typer.Option("mean+max", "--score", help="Statistics and weights, e.g. mean+max or 0.3*frac+0.7*max."),
    exclusive: bool = typer.Option(False, "--exclusive", help="A neuron competes only for its best modality."),
    domains: bool = typer.Option(False, "--domains", help="Also find domain-specific neurons (question types)."),
    top: int = typer.Option(8, "--top", help="Top-activating samples to show for the strongest image neuron."),
    memory_budget: Optional[str] = MemoryBudgetOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Find modality-specific neurons (and with --domains, domain-specific ones); write sets, figures, JSON, HTML."""
    folder = OutputFolder(out, "neurons", locals(), overwrite=overwrite, result="neurons",
                          seeds={"shapes_world_split": "val", "shapes_world_samples": samples})
    check_choice(budget, BUDGETS, "budget")
    if samples < 1 or not 0 < ratio < 1:
        raise MmlensError("--samples must be at least 1 and --ratio between 0 and 1")
    weights = parse_weights(score)
    memory = parse_memory_budget(memory_budget)
    with stdout_for_json(as_json):
        with folder:
            loaded = load_model(Console(stderr=True), model)
            folder.set_model(loaded)
            summary = find_neurons(loaded, folder.path, samples=samples, ratio=ratio, budget=budget,
                                   weights=weights, exclusive=exclusive, domains=domains, top=top,
                                   memory_budget=memory)
        _print_summary(summary, folder.out)
    if as_json:
        print_json({"out": str(folder.out), "report": str(folder.out / "neurons.html"), **summary})


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The selected neurons per modality and layer, the strongest image neuron and, if found, the domain neurons."""
    console = Console()
    console.print(f"[bold]model[/bold]  {summary['model']}   budget {summary['budget']}, ratio {summary['ratio']}")
    table = Table(title="modality-specific neurons per decoder layer")
    table.add_column("modality")
    table.add_column("neurons", justify="right")
    depth = summary["depth"]
    for layer in range(len(next(iter(depth.values()), []))):
        table.add_column(f"L{layer}", justify="right")
    for label, row in depth.items():
        table.add_row(label, str(summary["selected"][label]), *[str(int(v)) for v in row])
    console.print(table)
    if "top_image_neuron" in summary:
        top = summary["top_image_neuron"]
        console.print(f"strongest image neuron: {top['site']}[{top['index']}], fires most on {top['samples'][0]}")
    if "domains" in summary:
        found = domain_table(summary["domains"], summary["domain_neurons"])
        table = Table(title=found["title"])
        for column in found["columns"]:
            table.add_column(column)
        for row in found["rows"]:
            table.add_row(*row)
        console.print(table)
        if "domain_warning" in summary:
            console.print(f"[yellow]note:[/yellow] {escape(summary['domain_warning'])}")
    console.print(f"written to {out}/ (report: {out / 'neurons.html'})")
