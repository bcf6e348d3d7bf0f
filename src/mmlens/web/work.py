"""What each API call runs on the model: explain, look inside, trace, neurons, describe.

Each function takes the loaded model and a stored :class:`~mmlens.web.store.Input`
and returns plain JSON; they run on the queue's worker thread, one at a time.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> from mmlens.web.store import Input
    >>> given = Input("<image> what colour is the circle ?", [Image.new("RGB", (64, 64))])
    >>> explain_input(mmlens.load("tiny-llava"), given, ["rollout"], max_new_tokens=1)["answer_tokens"].__len__()
    1
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from mmlens.attribution.api import explain
from mmlens.causal import token_groups, trace
from mmlens.cli.info import describe
from mmlens.data.shapes_questions import prompt_object_words
from mmlens.errors import MmlensError
from mmlens.layout import Modality
from mmlens.lens import attention_flow, knockout, logit_lens
from mmlens.model import Model
from mmlens.report.figures import png_data_uri
from mmlens.report.inside import answer_emergence_figure, flow_figures, knockout_figure, trace_figures
from mmlens.web.results import explanation_json, lens_json, positions_json, trace_json
from mmlens.web.store import Input


def explain_input(model: Model, given: Input, methods: list[str], max_new_tokens: int | None = None,
                  target: str | None = None, foil: str | None = None) -> dict[str, Any]:
    """``mmlens.explain`` on the input, as :func:`~mmlens.web.results.explanation_json`."""
    explanation = explain(model, given.prompt, given.images, methods=methods, answer=target, foil=foil,
                          max_new_tokens=max_new_tokens, options={"rise": {"seed": 0}} if "rise" in methods else None)
    return explanation_json(explanation)


def lens_input(model: Model, given: Input, top_k: int = 5) -> dict[str, Any]:
    """Logit lens, attention flow and (with an image) knockout of the image, with the report's figures.

    The report's word-grid figure is left out (it takes seconds to draw); the
    page draws the same grid from ``grid``, one layer at a time.
    """
    batch = model.prepare(given.prompt, given.images)
    result = logit_lens(model, batch, top_k=top_k)
    flow = attention_flow(model, batch)
    blocked = None
    figures = {"lens_emergence": answer_emergence_figure(result), **flow_figures(flow)}
    if given.images:
        blocked = knockout(model, batch, {"image": batch.layout.mask(Modality.IMAGE)}, answer=result.answer_ids)
        figures["knockout"] = knockout_figure(blocked)
    return lens_json(result, flow, blocked, figures)


def trace_input(model: Model, given: Input, noise: float, components: list[str],
                progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Causal tracing of the input; ``progress(done, total)`` may raise to stop it (a cancelled job)."""
    if not given.images:
        raise MmlensError("causal tracing corrupts the image: give an image and a prompt with an <image> slot")
    batch = model.prepare(given.prompt, given.images)
    groups = token_groups(model, batch, [given.box], [prompt_object_words(given.prompt)])
    result = trace(model, batch, groups, noise=noise, components=components, progress=progress)
    return trace_json(result, trace_figures(result))


def describe_input(model: Model, given: Input | None) -> dict[str, Any]:
    """The model's family, layers and sites; with an input, its token layout position by position."""
    if given is None:
        return {"model": model.name, "family": model.adapter.family, "model_type": model.hf.config.model_type,
                "class": type(model.hf).__name__, "layers": model.n_layers, "vision_layers": model.n_vision_layers,
                "sites": model.sites()}
    summary = describe(model, given.prompt, given.images)
    batch = model.prepare(given.prompt, given.images)
    summary["positions"] = positions_json(batch.layout, summary["tokens"])
    return summary


def neuron_top_json(model: Model, site: str, index: int, samples: int, top: int = 4) -> dict[str, Any]:
    """One decoder neuron's top-activating shapes-world images (``samples`` per question type), each with its
    strongest patch, and the figure as a data URI: what ``mmlens neurons`` shows for the strongest image neuron.
    """
    from mmlens.runner.neurons import top_patches  # refuses what it cannot rank (mmlens.neurons.top.check_top_neuron)

    found, figure = top_patches(model, site, index, samples, top)
    return {**found, "figure": png_data_uri(figure)}


def neurons_json(model: Model, samples: int, ratio: float, domains: bool = False, top: int = 4) -> dict[str, Any]:
    """Modality-specific neurons on shapes-world samples (``mmlens neurons``), with its figures as data URIs.

    With ``domains``, also the domain-specific ones (``mmlens neurons --domains``):
    ``domains`` counts them per question type and tower, ``domain_neurons`` lists
    the most specific of each.
    """
    from mmlens.runner.neurons import find_neurons  # what `mmlens neurons` runs, written into a private folder
    from mmlens.neurons.modality import parse_weights

    with tempfile.TemporaryDirectory(prefix="mmlens-neurons-") as folder:
        with torch.no_grad():
            summary = find_neurons(model, Path(folder), samples=samples, ratio=ratio, budget="modality",
                                   weights=parse_weights("mean+max"), exclusive=False, domains=domains, top=top)
        figures = {}
        for name in ("depth", "top_image_neuron"):
            path = Path(folder) / f"{name}.png"
            if path.is_file():
                figures[name] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    summary.pop("files", None)  # they were in the private folder, now gone
    return {**summary, "figures": figures}
