"""The neurons job: modality- and domain-specific neurons over shapes-world samples, written as files.

What ``mmlens neurons`` does, and the web app's Neurons page with it:
:func:`find_neurons` scores every decoder MLP neuron on held-out shapes-world
samples (one dataset per question type), selects the top share under a
budget, and writes the selection, the score matrices, the figures,
``neurons.json`` and ``neurons.html`` into a folder; :func:`top_patches`
ranks one decoder neuron's top-activating images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mmlens.data.shapes import QUESTION_TYPES, make_sample
from mmlens.model import Model
from mmlens.neurons.domain import domain_scores, select_domain_neurons
from mmlens.neurons.modality import modality_scores, select_modality_neurons
from mmlens.neurons.top import top_activations
from mmlens.report.files import save_json, save_neuron_set, save_tensors
from mmlens.report.inside_html import write_sections
from mmlens.report.neurons import TOWERS, depth_figure, neurons_section, top_activations_figure

#: How many of each domain's most specific neurons are listed (printed, in the JSON and the page).
DOMAIN_TOP = 5
#: How many of each modality's highest-scoring neurons ``neurons.json`` lists (``strongest``).
STRONGEST = 5
#: Above this share of ln(domains), the most specific neuron is called unspecific: it fires alike everywhere.
UNSPECIFIC = 0.95


def find_neurons(loaded: Model, folder: Path, *, samples: int, ratio: float, budget: str, weights: dict[str, float],
                 exclusive: bool, domains: bool, top: int, memory_budget: int | None = None) -> dict[str, Any]:
    """The work of ``mmlens neurons``: score, select, write sets, figures, ``neurons.json`` and ``neurons.html``.

    Returns the summary that ``neurons.json`` holds.

    Example:
        >>> import mmlens
        >>> from mmlens.neurons.modality import parse_weights
        >>> summary = find_neurons(mmlens.load("shapes-llava"), Path("out/neurons"), samples=4,  # doctest: +SKIP
        ...                        ratio=0.02, budget="modality", weights=parse_weights("mean+max"),
        ...                        exclusive=False, domains=False, top=4)
        >>> sorted(summary["selected"])  # doctest: +SKIP
        ['image', 'special', 'text']
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
    """Domain-specific neurons with question types as domains: counts per domain and tower, and the most specific.

    ``domain_entropy_max`` is ln(domains), the entropy of a neuron that fires alike everywhere; with
    ``domain_warning`` when even the most specific neuron comes within ``UNSPECIFIC`` of it (MMNeuron keeps the
    lowest entropies among the frequently active neurons, and on a small model these can all be always on).
    """
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
    ceiling = math.log(len(found.metadata["domains"]))  # the entropy of a neuron that fires alike in every domain
    summary = {"domains": counts, "domain_neurons": most, "domain_entropy_max": round(ceiling, 4)}
    if len(found) and float(found.scores.min()) >= UNSPECIFIC * ceiling:
        summary["domain_warning"] = (
            f"no neuron is domain-specific here: the lowest entropy among the frequently active neurons is "
            f"{float(found.scores.min()):.3f} of a possible {ceiling:.3f} (a neuron that fires alike in every "
            f"domain); the listed ones are the least unspecific. More samples, or a model trained on distinct "
            f"domains, may find specific ones")
    return summary
