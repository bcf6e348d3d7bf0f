"""``mmlens neurons``: which decoder neurons serve image, text and special tokens (MINER), and where they sit.

Scores every decoder MLP neuron on held-out shapes-world samples (one dataset
per question type), selects the top ``--ratio`` under a ``--budget``, and
writes into ``--out``: the selection (``neurons_modality.safetensors`` +
``.json``, reloadable with :func:`mmlens.report.files.load_neuron_set`), the score
matrices (``modality_scores.safetensors``), a depth figure, the
top-activating samples of the strongest image neuron, ``neurons.json`` and
``neurons.html``. ``--domains`` adds domain-specific neurons (MMNeuron,
question types as domains) over the decoder, vision tower and projector, and
prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
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
from mmlens.data.shapes import QUESTION_TYPES, make_sample
from mmlens.errors import MmlensError, check_choice
from mmlens.model import Model
from mmlens.neurons.domain import domain_scores, select_domain_neurons
from mmlens.neurons.modality import BUDGETS, modality_scores, parse_weights, select_modality_neurons
from mmlens.neurons.top import top_activations
from mmlens.report.files import save_json, save_neuron_set, save_tensors
from mmlens.report.inside_html import write_sections
from mmlens.report.neurons import TOWERS, depth_figure, domain_table, neurons_section, top_activations_figure
from mmlens.report.output import OutputFolder

#: How many of each domain's most specific neurons are listed (printed, in the JSON and the page).
DOMAIN_TOP = 5
#: How many of each modality's highest-scoring neurons ``neurons.json`` lists (``strongest``).
STRONGEST = 5


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


def find_neurons(loaded: Model, folder: Path, *, samples: int, ratio: float, budget: str, weights: dict[str, float],
                 exclusive: bool, domains: bool, top: int, memory_budget: int | None = None) -> dict[str, Any]:
    """The work of ``mmlens neurons``: score, select, write sets, figures, ``neurons.json`` and ``neurons.html``.

    Returns the summary that ``neurons.json`` holds.
    """
    data = {qt: [make_sample("val", i, qt) for i in range(samples)] for qt in QUESTION_TYPES}
    statistics = sorted(set(weights) | {"frac", "mean", "max"})
    scores = modality_scores(loaded, data, statistics=statistics, memory_budget=memory_budget)
    chosen = select_modality_neurons(scores, ratio=ratio, budget=budget, weights=weights, exclusive=exclusive)
    chosen.metadata["model"] = loaded.name
    save_neuron_set(chosen, folder / "neurons_modality")
    matrices = {name: scores.statistic(name) for name in statistics}
    save_tensors({**matrices, "combined": scores.combined(weights)}, folder / "modality_scores.safetensors")
    labels, counts = chosen.depth_counts(loaded.n_layers)
    figures = {"depth": depth_figure(counts, labels, f"{loaded.name}: where modality-specific neurons sit")}
    summary: dict[str, Any] = {
        "model": loaded.name, "ratio": ratio, "budget": budget, "weights": weights, "samples": samples,
        "selected": {label: int(row.sum()) for label, row in zip(labels, counts)},
        "depth": {label: row.tolist() for label, row in zip(labels, counts)},
        "files": ["neurons_modality.safetensors", "neurons_modality.json", "modality_scores.safetensors",
                  "depth.png"]}
    summary["strongest"] = {label: _strongest(chosen.where(label=label)) for label in labels}
    image = chosen.where(label="image")
    if len(image) and loaded.adapter.multimodal and top > 0:
        best = int(image.scores.argmax())
        summary["top_image_neuron"], figures["top_image_neuron"] = top_patches(
            loaded, image.sites[best], int(image.indices[best]), samples, top, memory_budget)
        summary["files"].append("top_image_neuron.png")
    if domains:
        summary.update(_domains(loaded, data, memory_budget, folder))
        summary["files"] += ["neurons_domain.safetensors", "neurons_domain.json"]
    for name, figure in figures.items():
        figure.savefig(folder / f"{name}.png")
    summary["files"] += ["neurons.json", "neurons.html"]
    save_json(summary, folder / "neurons.json", "mmlens.Neurons", indent=1)
    write_sections([neurons_section(summary, figures)], folder / "neurons.html",
                   title=f"mmlens neurons · {loaded.name}")
    return summary


def top_patches(loaded: Model, site: str, index: int, samples: int, top: int,
                memory_budget: int | None = None) -> tuple[dict[str, Any], Any]:
    """A decoder neuron's ``top`` top-activating shapes-world images (``samples`` per question type, one image
    each): which samples, how strongly, at which patch, and the figure with that patch boxed.

    Example:
        >>> found, figure = top_patches(mmlens.load("shapes-llava"), "lm.L1.neurons", 65, samples=2, top=4)  # doctest: +SKIP
        >>> len(found["patches"])  # doctest: +SKIP
        4
    """
    pool = [make_sample("val", i) for i in range(samples * len(QUESTION_TYPES))]
    found = top_activations(loaded, pool, site, index, k=top, memory_budget=memory_budget)
    return ({"site": site, "index": index, "samples": found.sample_ids,
             "values": [round(float(v), 4) for v in found.values], "patches": found.patches},
            top_activations_figure(found))


def _strongest(chosen: Any) -> list[dict[str, Any]]:
    """The ``STRONGEST`` highest-scoring neurons of a selection: site, index and score."""
    order = chosen.scores.argsort(descending=True, stable=True)[:STRONGEST]
    return [{"site": chosen.sites[int(k)], "index": int(chosen.indices[int(k)]),
             "score": round(float(chosen.scores[int(k)]), 4)} for k in order]


def _domains(loaded: Model, data: dict, memory_budget: int | None, folder: Path) -> dict[str, Any]:
    """Domain-specific neurons with question types as domains: counts per domain and tower, and the most specific."""
    found = select_domain_neurons(domain_scores(loaded, data, memory_budget=memory_budget))
    found.metadata["model"] = loaded.name
    save_neuron_set(found, folder / "neurons_domain")
    counts = {domain: {tower: len(found.where(label=domain, tower=tower)) for tower in TOWERS}
              for domain in found.metadata["domains"]}
    most = {}
    for domain in found.metadata["domains"]:
        part = found.where(label=domain)
        order = part.scores.argsort(stable=True)[:DOMAIN_TOP]  # the lowest entropy: the most domain-specific
        most[domain] = [{"site": part.sites[int(k)], "index": int(part.indices[int(k)]),
                         "entropy": round(float(part.scores[int(k)]), 4)} for k in order]
    return {"domains": counts, "domain_neurons": most}


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
    console.print(f"written to {out}/ (report: {out / 'neurons.html'})")
