"""``mmlens neurons``: which decoder neurons serve image, text and special tokens (MINER), and where they sit.

Scores every decoder MLP neuron on held-out shapes-world samples (one dataset
per question type), selects the top ``--ratio`` under a ``--budget``, and
writes into ``--out``: the selection (``neurons_modality.safetensors`` +
``.json``, reloadable with :func:`mmlens.report.files.load_neuron_set`), the score
matrices (``modality_scores.safetensors``), a depth figure, the
top-activating samples of the strongest image neuron, and ``neurons.json``.
``--domains`` adds domain-specific neurons (MMNeuron, question types as
domains) over the decoder, vision tower and projector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from mmlens.cli.options import JsonOption, ModelOption, OutOption
from mmlens.cli.samples import load_model
from mmlens.data.shapes import QUESTION_TYPES, make_sample
from mmlens.errors import MmlensError
from mmlens.neurons.domain import domain_scores, select_domain_neurons
from mmlens.neurons.modality import BUDGETS, modality_scores, parse_weights, select_modality_neurons
from mmlens.neurons.neuron_set import NeuronSet
from mmlens.neurons.top import top_activations
from mmlens.report.files import save_neuron_set
from mmlens.report.neurons import depth_figure, top_activations_figure


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
    batch_size: int = typer.Option(16, "--batch-size", help="Samples per forward pass."),
    as_json: bool = JsonOption,
) -> None:
    """Find modality-specific neurons (and with --domains, domain-specific ones); write sets, figures and JSON."""
    if budget not in BUDGETS:
        raise MmlensError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if samples < 1 or not 0 < ratio < 1:
        raise MmlensError("--samples must be at least 1 and --ratio between 0 and 1")
    weights = parse_weights(score)
    console = Console(stderr=True)
    loaded = load_model(console, model)
    data = {qt: [make_sample("val", i, qt) for i in range(samples)] for qt in QUESTION_TYPES}
    statistics = sorted(set(weights) | {"frac", "mean", "max"})
    scores = modality_scores(loaded, data, statistics=statistics, batch_size=batch_size)
    chosen = select_modality_neurons(scores, ratio=ratio, budget=budget, weights=weights, exclusive=exclusive)
    chosen.metadata["model"] = loaded.name
    out.mkdir(parents=True, exist_ok=True)
    save_neuron_set(chosen, out / "neurons_modality")
    matrices = {name: scores.statistic(name).contiguous() for name in statistics}
    save_file({**matrices, "combined": scores.combined(weights).contiguous()}, str(out / "modality_scores.safetensors"))
    labels, counts = chosen.depth_counts(loaded.n_layers)
    depth_figure(counts, labels, f"{loaded.name}: where modality-specific neurons sit").savefig(out / "depth.png")
    summary = {"model": loaded.name, "ratio": ratio, "budget": budget, "weights": weights, "samples": samples,
               "selected": {label: int(row.sum()) for label, row in zip(labels, counts)},
               "depth": {label: row.tolist() for label, row in zip(labels, counts)},
               "files": ["neurons_modality.safetensors", "neurons_modality.json", "modality_scores.safetensors",
                         "depth.png"]}
    image = chosen.where(label="image")
    if len(image) and loaded.adapter.multimodal and top > 0:
        best = int(image.scores.argmax())
        site, index = image.sites[best], int(image.indices[best])
        pool = [make_sample("val", i) for i in range(samples * len(QUESTION_TYPES))]  # one image each
        found = top_activations(loaded, pool, site, index, k=top, batch_size=batch_size)
        top_activations_figure(found).savefig(out / "top_image_neuron.png")
        summary["top_image_neuron"] = {"site": site, "index": index, "samples": found.sample_ids,
                                       "values": [round(float(v), 4) for v in found.values], "patches": found.patches}
        summary["files"].append("top_image_neuron.png")
    if domains:
        summary["domains"] = _domains(loaded, data, batch_size, out)
        summary["files"] += ["neurons_domain.safetensors", "neurons_domain.json"]
    (out / "neurons.json").write_text(json.dumps(summary, indent=1))
    _print_summary(chosen, labels, counts, summary, out)
    if as_json:
        print(json.dumps(summary))


def _domains(loaded, data, batch_size: int, out: Path) -> dict:
    """Domain-specific neurons with question types as domains; returns counts per domain and tower."""
    found = select_domain_neurons(domain_scores(loaded, data, batch_size=batch_size))
    found.metadata["model"] = loaded.name
    save_neuron_set(found, out / "neurons_domain")
    return {domain: {tower: len(found.where(label=domain, tower=tower)) for tower in ("lm", "vision", "projector")}
            for domain in found.metadata["domains"]}


def _print_summary(chosen: NeuronSet, labels: list[str], counts, summary: dict, out: Path) -> None:
    console = Console()
    console.print(f"[bold]model[/bold]  {summary['model']}   budget {summary['budget']}, ratio {summary['ratio']}")
    table = Table(title="modality-specific neurons per decoder layer")
    table.add_column("modality")
    table.add_column("neurons", justify="right")
    for layer in range(counts.shape[1]):
        table.add_column(f"L{layer}", justify="right")
    for label, row in zip(labels, counts):
        table.add_row(label, str(int(row.sum())), *[str(int(v)) for v in row])
    console.print(table)
    if "top_image_neuron" in summary:
        top = summary["top_image_neuron"]
        console.print(f"strongest image neuron: {top['site']}[{top['index']}], fires most on {top['samples'][0]}")
    console.print(f"written to {out}/")
