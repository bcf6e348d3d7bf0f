"""Results as the JSON the web API answers: explanations, the logit lens, tracing, the token layout.

Pure functions of result objects (no model, no web framework), so the API and
the tests read the same numbers. Figures come from :mod:`mmlens.report` as PNG
data URIs; word colours from the HTML report's own shading.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> e = mmlens.explain(mmlens.load("tiny-llava"), "<image> hi", [Image.new("RGB", (64, 64))],
    ...                    methods=["rollout"], max_new_tokens=2)
    >>> explanation_json(e)["methods"]["rollout"]["targets"][0]["top"]["image"]
    0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmlens.attribution.explanation import image_grids_json, round_or_none  # to_json's: one definition
from mmlens.layout import Modality, PatchCells, TokenLayout
from mmlens.report.figures import display_token, png_data_uri, visible_token
from mmlens.report.html import shaded_words, what_was_explained  # the report's word shading: one definition

if TYPE_CHECKING:
    from mmlens.attribution.explanation import Explanation
    from mmlens.causal.tracing import CausalTrace
    from mmlens.lens import AttentionFlow, Knockout, LogitLens


def explanation_json(e: "Explanation") -> dict[str, Any]:
    """Per method and answer token: the patch grids, the strongest patch, the prompt words with their colours.

    ``top`` is the patch with the highest score (the reddest one on the page);
    ``position`` its index in ``tokens``. The numbers are those of
    :meth:`Explanation.to_json <mmlens.attribution.explanation.Explanation.to_json>`
    (grids, prompt scores, image share, milliseconds), read straight from the
    scores: the layout's patch cells are found once for every method and token,
    and nothing the page does not show (extras, the token list) is converted.

    Example:
        >>> sorted(explanation_json(e)["methods"]["rollout"]["targets"][0])
        ['grids', 'image_share', 'position', 'prompt', 'token', 'top', 'words']
    """
    cells = e.layout.cells(0)
    text = cells.modality == int(Modality.TEXT)
    methods = {}
    for method, tensor in e.scores.items():
        exact = tensor.detach().cpu()  # the prompt's scores at the method's own precision, as to_json reads them
        values = exact.float().numpy()  # (targets, seq) in float32, as the layout's grids hold them
        targets = []
        for j, token in enumerate(e.answer_tokens):
            row, last, line = values[j], e.positions[j], exact[j].tolist()  # (a tensor indexed by numpy is slow)
            targets.append({"token": visible_token(token), "position": last, "grids": image_grids_json(cells, row),
                            "top": _top(cells, row), "prompt": [[e.tokens[p], round(line[p], 6)]
                                                              for p in np.flatnonzero(text[:last + 1]).tolist()],
                            "image_share": round_or_none(e.image_share(method, j)),
                            "words": [{"kind": w["kind"], "text": w["text"], "title": w["title"], "style": w["style"]}
                                      for w in shaded_words(e, method, j, row)]})
        methods[method] = {"targets": targets, "signed": e.signed(method),
                           "milliseconds": round_or_none(e.milliseconds.get(method, math.nan), 3)}
    return {"model": e.model, "prompt": e.prompt, "answer": e.answer, "model_answer": e.model_answer,
            "target": e.target, "foil": e.foil, "explained": [list(line) for line in what_was_explained(e)],
            "answer_tokens": [visible_token(t) for t in e.answer_tokens], "image_share": e.IMAGE_SHARE,
            "layout": {**e.layout.describe(0, cells), "positions": _positions(cells)}, "methods": methods}


def position_grids(layout: TokenLayout) -> list[list[list[list[int | None]]]]:
    """Per image and view, the sequence position of each patch on its grid (None where no token sits).

    Example:
        >>> position_grids(e.layout)[0][0][0][0]  # image 0, view 0, row 0, column 0
        1
    """
    return _positions(layout.cells(0))


def top_patch(layout: TokenLayout, scores: torch.Tensor) -> dict[str, Any] | None:
    """The image token with the highest score: image, view, row, column, position and score (None: no image).

    Example:
        >>> top_patch(e.layout, e.scores["rollout"][0])["row"] in range(8)
        True
    """
    return _top(layout.cells(0), scores.detach().float().cpu().numpy())


def _positions(cells: PatchCells) -> list[list[list[list[int | None]]]]:
    return [[[[None if v < 0 else v for v in line] for line in cells.positions(i, v).tolist()]
             for v in range(len(views))] for i, views in enumerate(cells.views)]


def _top(cells: PatchCells, scores: np.ndarray) -> dict[str, Any] | None:
    top = cells.top(scores)
    return None if top is None else {**top, "score": round(top["score"], 6)}


def positions_json(layout: TokenLayout, tokens: list[str]) -> list[dict[str, Any]]:
    """One entry per position: its token and where it came from (modality, image, view, row, column).

    Example:
        >>> positions_json(e.layout, e.tokens)[0]["modality"]
        'special'
    """
    columns = [t[0].tolist() for t in (layout.modality, layout.image, layout.view, layout.row, layout.col)]
    out = []
    for p, (modality, image, view, row, col) in enumerate(zip(*columns)):
        entry: dict[str, Any] = {"position": p, "token": visible_token(tokens[p], strip=False),
                                 "modality": Modality(modality).name.lower()}
        if modality == int(Modality.IMAGE):
            kind = layout.images[0][image].views[view].kind
            entry.update(image=image, view=view, kind=kind, row=row, col=col)
        out.append(entry)
    return out


def lens_json(lens: "LogitLens", flow: "AttentionFlow", blocked: "Knockout | None",
              figures: dict[str, Any]) -> dict[str, Any]:
    """The logit lens per layer at the answer position, its word grid over the image, attention flow, knockout.

    ``grid[layer]["views"]`` holds the words of every view of every image
    (``words`` and ``probs``: the first view's); ``images`` each view's kind,
    patch grid and pixel box, so the page lays the words where the view sits.

    Example:
        >>> sorted(lens_json(lens, flow, None, {}))[:3]
        ['answer', 'emerges_at', 'figures']
    """
    shares = flow.by_layer(0).tolist()
    layers = []
    for layer, name in enumerate(lens.layer_names):
        layers.append({"layer": name, "top1": display_token(lens.vocabulary[int(lens.top_ids[layer, 0, lens.position, 0])]),
                       "p": round_or_none(lens.top_probs[layer, 0, lens.position, 0]),
                       "entropy": round_or_none(lens.entropy[layer, 0, lens.position]),
                       "answer_rank": int(lens.answer_rank[layer, 0]), "answer_prob": round_or_none(lens.answer_prob[layer, 0]),
                       # row 0 is the decoder's input: no attention has happened yet
                       "attention": None if layer == 0 else dict(zip(flow.modalities, map(round_or_none, shares[layer - 1])))})
    images = lens.layout.describe(0)["images"]  # each view's box and grid: where the page lays its words
    grid = []
    if images:
        for layer in range(len(lens.layer_names)):
            views = [_word_grid(lens, layer, i, v) for i, image in enumerate(images) for v in range(len(image["views"]))]
            grid.append({"words": views[0]["words"], "probs": views[0]["probs"], "views": views})
    emergence = lens.emergence_layer(0)
    return {"answer": display_token(lens.vocabulary[int(lens.answer_ids[0])]).strip(),
            "emerges_at": None if emergence is None else lens.layer_names[emergence], "images": images,
            "layers": layers, "grid": grid, "knockout": None if blocked is None else knockout_json(blocked),
            "figures": {name: png_data_uri(figure) for name, figure in figures.items()}}


def _word_grid(lens: "LogitLens", layer: int, image: int, view: int) -> dict[str, Any]:
    """One view's top-1 words and probabilities at ``layer``, on its patch grid."""
    words, probs = lens.word_grid(layer, 0, image, view)
    return {"image": image, "view": view, "words": [[display_token(str(w)) for w in row] for row in words],
            "probs": [[round_or_none(p) for p in row] for row in probs]}


def knockout_json(blocked: "Knockout") -> dict[str, Any]:
    """P(answer) per layer window and blocked group, and the baseline with nothing blocked."""
    return {"groups": blocked.groups, "window": blocked.window, "window_starts": blocked.window_starts,
            "baseline": round_or_none(blocked.baseline[0]),
            "probability": [[round_or_none(blocked.probability[w, g, 0]) for g in range(len(blocked.groups))]
                            for w in range(len(blocked.window_starts))]}


def trace_json(result: "CausalTrace", figures: dict[str, Any]) -> dict[str, Any]:
    """The trace's own JSON (recovery rates, strongest layers, probabilities) and its figures."""
    return {**result.to_json(), "answer": display_token(result.answers[0]).strip(),
            "figures": {name: png_data_uri(figure) for name, figure in figures.items()}}
