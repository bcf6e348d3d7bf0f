"""The samples and image patches where one neuron fires most.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> model = mmlens.load("tiny-llava")
    >>> top = top_activations(model, make_dataset("val", 6), "lm.L1.neurons", 5, k=3, progress=False)
    >>> len(top.heatmaps), top.heatmaps[0].shape
    (3, (64, 64))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image

from mmlens.box import Box
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.budget import MemoryBudget
from mmlens.neurons._batches import budget_batches, progress_bar
from mmlens.hooks import intervene
from mmlens.neurons.sites import neuron_width, tower_of

if TYPE_CHECKING:
    from mmlens.model import Model


@dataclass
class TopActivations:
    """The ``k`` samples where neuron ``index`` at ``site`` reaches its highest activation on an image patch.

    ``heatmaps[j]`` is the neuron's activation over sample ``j``'s image (pixel
    size, through the token layout); ``patches[j]`` the ``(row, col)`` of its
    strongest patch and ``boxes[j]`` its pixel :class:`~mmlens.box.Box` ``(x0, y0, x1, y1)``.
    """

    site: str
    index: int
    values: torch.Tensor
    sample_ids: list[str]
    prompts: list[str]
    images: list[Image.Image]
    heatmaps: list[np.ndarray]
    patches: list[tuple[int, int]]
    boxes: list[Box]  # the strongest patch in pixels


def check_top_neuron(model: "Model", site: str, index: int) -> None:
    """Refuse, in one line, what :func:`top_activations` cannot rank: a site that is not one of ``model``'s
    decoder neuron sites, an index past the site's width, a model that takes no images.

    Cheap (no forward pass), so a caller that queues the work (the web app) checks before queueing.

    Example:
        >>> check_top_neuron(model, "vision.L0.neurons", 0)  # doctest: +SKIP
        Traceback (most recent call last):
        mmlens.errors.MmlensError: no decoder neuron site 'vision.L0.neurons' in tiny-llava: ...
    """
    if not (tower_of(site) == "lm" and site.endswith(".neurons") and site in model.sites()):
        raise MmlensError(f"no decoder neuron site {site!r} in {model.name}: top activations are found for "
                          f"lm.L{{i}}.neurons, i below {model.n_layers}")
    if not model.adapter.multimodal:
        raise MmlensError(f"{model.name} takes no images: there are no patches to rank")
    width = neuron_width(model, site)
    if not 0 <= index < width:
        raise MmlensError(f"{site} has {width} neurons; there is no neuron {index}")


def top_activations(model: "Model", samples: Sequence[Sample], site: str, index: int, k: int = 8,
                    memory_budget: MemoryBudget = None, value: str = "gate",
                    progress: bool = True) -> TopActivations:
    """Rank ``samples`` by the neuron's maximum activation over image patches and keep the top ``k``.

    Only decoder neurons (``lm.L{i}.neurons``): image patches are found through
    each batch's :class:`~mmlens.layout.TokenLayout`. ``value`` as in
    :func:`mmlens.intervene` with ``neuron_value``. ``memory_budget`` (bytes or ``"2GB"``; :mod:`mmlens.budget`) sizes how many samples go through each forward.

    Example:
        >>> top.patches[0][0] in range(4)  # tiny-llava has a 4 x 4 patch grid
        True
    """
    check_top_neuron(model, site, index)
    samples = list(samples)
    seen: dict[str, torch.Tensor] = {}
    kept: list[tuple[torch.Tensor, object]] = []  # per batch: (activations (B, S), layout)
    best: list[torch.Tensor] = []

    def read(x: torch.Tensor) -> None:
        seen["value"] = x.detach()[..., index].float().cpu()

    with progress_bar(progress, f"ranking samples for {site}[{index}]", len(samples)) as advance, \
            intervene(model, {site: read}, neuron_value=value):
        for chunk, batch in budget_batches(model, samples, memory_budget, "top activations"):
            with torch.no_grad():
                model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))
            image = batch.layout.mask(Modality.IMAGE)
            best.append(seen["value"].masked_fill(~image, float("-inf")).amax(1))
            kept.append((seen["value"], batch.layout))
            advance(len(chunk))
    values = torch.cat(best)
    top = values.topk(min(k, len(values)))
    sizes = [len(acts) for acts, _ in kept]
    starts = np.cumsum([0] + sizes)
    heatmaps, patches, boxes = [], [], []
    for flat in top.indices.tolist():
        b = int(np.searchsorted(starts, flat, side="right") - 1)
        row = flat - int(starts[b])
        acts, layout = kept[b]
        heatmaps.append(layout.to_heatmaps(acts)[row][0])
        image = layout.mask(Modality.IMAGE)[row]
        position = int(acts[row].masked_fill(~image, float("-inf")).argmax())
        patches.append((int(layout.row[row, position]), int(layout.col[row, position])))
        boxes.append(layout.token_boxes(row)[position][1])
    chosen = [samples[i] for i in top.indices.tolist()]
    return TopActivations(site, index, top.values, [s.id for s in chosen], [s.prompt for s in chosen],
                          [s.image for s in chosen], heatmaps, patches, boxes)
