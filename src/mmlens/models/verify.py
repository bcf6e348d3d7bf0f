"""Prove a token layout right by perturbing pixels and watching which tokens change.

Vision towers mix all patches through attention, so first every vision
attention output is zeroed: each image token then depends only on the pixels
of its own patch (or merged patches). Perturbing a small region of the
original image must then change exactly the image tokens whose layout boxes
cover that region, in every view (tile, global view, base image), and nothing
else in the sequence.

A layout that is merely plausible (rows and columns swapped, tiles in the
wrong order, a crop box off by a patch) fails this check.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> report = verify_layout(model, Image.new("RGB", (64, 64), "gray"))
    >>> report.ok
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmlens.box import Box
from mmlens.data.images import open_image
from mmlens.hooks import capture, intervene
from mmlens.layout import TokenLayout
from mmlens.model import Model
from mmlens.models import runtime

#: Resampling kernels (Lanczos, bicubic) reach several pixels with small
#: lobes, further still through chained resizes (Idefics3 resizes twice before
#: cutting tiles). A token changed by less than this fraction of the largest
#: change may sit outside the halo; required tokens must still change at all.
LEAK = 0.02


@dataclass
class RegionCheck:
    """One perturbed region: the tokens that changed against those the layout predicts."""

    region: Box  # the perturbed pixels, (x0, y0, x1, y1)
    changed: list[int]
    required: list[int]  # tokens whose boxes overlap the region's core: must change
    allowed: list[int]  # tokens whose boxes touch the region's halo: may change
    faint: list[int] = field(default_factory=list)  # changed by under LEAK of the largest change: may change

    @property
    def ok(self) -> bool:
        changed = set(self.changed)
        return bool(self.required) and set(self.required) <= changed and changed - set(self.faint) <= set(self.allowed)


@dataclass
class LayoutReport:
    checks: list[RegionCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def failures(self) -> list[RegionCheck]:
        return [check for check in self.checks if not check.ok]


def verify_layout(
    model: Model,
    image: Image.Image | str | Path,
    prompt: str = "<image> what is this ?",
    regions: int = 6,
    seed: int = 0,
    margin: float | None = None,
) -> LayoutReport:
    """Perturb ``regions`` random small boxes of ``image`` and compare changed tokens with the layout.

    ``margin`` (original pixels) absorbs resampling blur at region edges; by
    default a fifth of the smallest patch cell, and for the halo of allowed
    tokens at least a fifth of each view's own cell on each axis (blur is in
    the view's resized pixels: wider where a view or an axis is shrunk more).
    """
    image = open_image(image)  # a path or a PIL image, as everywhere else
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image.convert("RGB")).copy()
    base = model.prepare(prompt, [image])
    layout = base.layout
    cell = _smallest_cell(layout)
    halos = _view_margins(layout, cell / 5 if margin is None else margin, scaled=margin is None)
    margin = cell / 5 if margin is None else margin
    reference = _embeddings(model, image, prompt)
    report = LayoutReport()
    for _ in range(regions):
        region = _random_region(rng, _covered_box(layout, pixels.shape[:2]), side=cell / 2)
        perturbed = pixels.copy()
        x0, y0, x1, y1 = (int(round(v)) for v in region)
        perturbed[y0:y1, x0:x1] = 255 - perturbed[y0:y1, x0:x1]
        changed_embeddings = _embeddings(model, Image.fromarray(perturbed), prompt)
        report.checks.append(_check(layout, reference, changed_embeddings, Box(x0, y0, x1, y1), margin, halos))
    return report


def _embeddings(model: Model, image: Image.Image, prompt: str) -> torch.Tensor:
    """The decoder's input embeddings with every vision attention output zeroed."""
    batch = model.prepare(prompt, [image])
    local = {f"vision.L{i}.attn": torch.zeros_like for i in range(model.n_vision_layers)}
    with torch.no_grad(), intervene(model, local), capture(model, "lm.embed") as captured:
        model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
    return captured["lm.embed"][0]


def _check(
    layout: TokenLayout, before: torch.Tensor, after: torch.Tensor, region: Box, margin: float,
    halos: dict[tuple[int, int], tuple[float, float]],
) -> RegionCheck:
    scale = before.abs().amax().clamp_min(1e-6)
    delta = (after - before).abs().amax(dim=-1)
    changed = (delta > 1e-4 * scale).nonzero().flatten().tolist()
    faint = [p for p in changed if delta[p] < LEAK * delta.max()]
    boxes = layout.token_boxes(0)
    x0, y0, x1, y1 = region
    # The core may be empty (x0 > x1) for a region narrower than two margins: Box() does not check, _overlap does.
    core = Box(x0 + margin, y0 + margin, x1 - margin, y1 - margin)
    required = [p for p, (_, box) in boxes.items() if _overlap(box, core)]
    allowed = []
    for p, (image, box) in boxes.items():
        dy, dx = halos[(image, int(layout.view[0, p]))]
        if _overlap(box, Box(x0 - dx, y0 - dy, x1 + dx, y1 + dy)):
            allowed.append(p)
    return RegionCheck(region=region, changed=changed, required=required, allowed=allowed, faint=faint)


def _overlap(a: Box, b: Box) -> bool:
    """Whether boxes ``a`` and ``b`` share area, ``b`` non-empty."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1 and b.x0 < b.x1 and b.y0 < b.y1


def _view_margins(
    layout: TokenLayout, margin: float, scaled: bool
) -> dict[tuple[int, int], tuple[float, float]]:
    """Halo ``(vertical, horizontal)`` per ``(image, view)``: ``margin``, or a fifth of the view's cell if larger."""
    halos = {}
    for i, info in enumerate(layout.images[0]):
        for v, view in enumerate(info.views):
            cell_h, cell_w = view.box.height / view.rows, view.box.width / view.cols
            halos[(i, v)] = (max(margin, cell_h / 5), max(margin, cell_w / 5)) if scaled else (margin, margin)
    return halos


def _smallest_cell(layout: TokenLayout) -> float:
    sides = []
    for info in layout.images[0]:
        for view in info.views:
            sides += [view.box.height / view.rows, view.box.width / view.cols]
    return min(sides)


def _covered_box(layout: TokenLayout, size: tuple[int, int]) -> Box:
    """The part of the image that every kind of view sees (a centre crop may hide the sides).

    ``size`` is the image's ``(height, width)``. Tiles see the image only
    together, so each kind's views count as the box around them all.
    """
    spans: dict[str, Box] = {}
    for view in layout.images[0][0].views:
        a, v = spans.get(view.kind, view.box), view.box
        spans[view.kind] = Box(min(a.x0, v.x0), min(a.y0, v.y0), max(a.x1, v.x1), max(a.y1, v.y1))
    x0, y0, x1, y1 = 0.0, 0.0, float(size[1]), float(size[0])
    for box in spans.values():
        x0, y0 = max(x0, box.x0), max(y0, box.y0)
        x1, y1 = min(x1, box.x1), min(y1, box.y1)
    return Box(x0, y0, x1, y1)


def _random_region(rng: np.random.Generator, within: Box, side: float) -> Box:
    side = max(2.0, side)
    y = rng.uniform(within.y0 + 1, within.y1 - side - 1)  # y drawn first, as always: same regions per seed
    x = rng.uniform(within.x0 + 1, within.x1 - side - 1)
    return Box(x, y, x + side, y + side)
