"""MMEL-style multi-scale aggregation of Grad-ECLIP tower maps, with per-layer weights fitted on validation samples.

MMEL (Multi-Modal Explainable Learning, arXiv 2509.15243) builds on
Grad-ECLIP and combines explanation maps from several depths of the vision
tower with learnable layer-specific weights. What mmlens implements of it:

- Grad-ECLIP maps (:mod:`mmlens.attribution.grad_eclip`) of several tower
  layers from one forward and one backward pass per target;
- each layer's map scaled to a maximum of 1 per (row, target), so depths of
  different magnitude weigh by the fitted weights only;
- non-negative layer weights summing to 1, fitted on validation samples with
  ground-truth masks (:func:`fit_layer_weights`): they maximise the mean
  energy-in-box of the combined map (Nelder-Mead on a softmax parameterisation,
  started from uniform weights and from every single layer; the best wins);
- the fitted weights stored as JSON (:class:`LayerWeights`), with the model,
  layers, settings, score and samples they came from.

Not implemented: MMEL's Hierarchical Semantic Relationship Module (its
multi-scale feature processing, adaptive attention weighting and cross-modal
alignment are trained networks), and any training or fine-tuning of the model
itself. Without fitted weights the layers the answer reaches weigh equally.

Example:
    >>> import mmlens
    >>> from mmlens.readout import build_targets
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> targets = build_targets(model, model.prepare("<image> what ?", [Image.new("RGB", (32, 32))]), answer="red")
    >>> mmel(model, targets).extras["weights"]  # no fitted weights: uniform over the layers the answer reaches
    [1.0]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmlens.attribution.base import Attribution
from mmlens.attribution.grad_eclip import decoder_scores, patch_heatmaps, patch_shapes, tower_maps
from mmlens.errors import MmlensError
from mmlens.metrics import energy_in_box
from mmlens.model import Model
from mmlens.readout import Targets, build_targets

#: Weights fitted for shipped models (``fit_layer_weights`` on shapes-world val samples), keyed by model name.
SHIPPED = Path(__file__).with_name("mmel_weights.json")


@dataclass
class LayerWeights:
    """Per-layer weights of an MMEL map and where they came from."""

    model: str
    layers: list[int]
    weights: list[float]
    spatial: str = "relu"
    queries: str = "all"
    objective: str = "energy_in_box"
    score: float = float("nan")  # the objective on the fitting samples
    uniform_score: float = float("nan")  # the same with uniform weights, for comparison
    samples: int = 0
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LayerWeights":
        """Weights from their JSON form; one clear error when fields are missing or do not match.

        Example:
            >>> LayerWeights.from_json({"model": "m", "layers": [0, 1], "weights": [0.25, 0.75]}).weights
            [0.25, 0.75]
        """
        try:
            weights = cls(**data)
        except TypeError as error:
            raise MmlensError(f"MMEL weights: {error}") from None
        if len(weights.layers) != len(weights.weights) or not weights.layers:
            raise MmlensError("MMEL weights: give one weight per layer, at least one layer")
        if any(w < 0 for w in weights.weights):
            raise MmlensError("MMEL weights must be non-negative")
        return weights

    def save(self, path: str | Path) -> Path:
        """Write the weights as JSON (into a shared file of several models when ``path`` holds others)."""
        path = Path(path)
        shared = json.loads(path.read_text()) if path.exists() else {}
        shared[self.model] = self.to_json()
        path.write_text(json.dumps(shared, indent=2, sort_keys=True) + "\n")
        return path


def load_weights(model_name: str, path: str | Path | None = None) -> LayerWeights | None:
    """The weights stored for ``model_name`` in ``path`` (default: the shipped file); None when there are none.

    Example:
        >>> load_weights("no-such-model") is None
        True
    """
    file = Path(path) if path is not None else SHIPPED
    if not file.exists():
        if path is not None:
            raise MmlensError(f"no MMEL weights file at {file}")
        return None
    try:
        shared = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise MmlensError(f"{file} is not JSON: {error.msg}") from None
    entry = shared.get(model_name)
    return None if entry is None else LayerWeights.from_json(entry)


def mmel(model: Model, targets: Targets, weights: LayerWeights | str | Path | None = None,
         spatial: str | None = None, queries: str | None = None) -> Attribution:
    """Weighted sum of max-normalised Grad-ECLIP maps of several tower layers.

    ``weights`` is a :class:`LayerWeights`, a JSON file holding them for this
    model, or None: the shipped weights for this model if any, else equal
    weights over the layers the answer reaches. ``spatial`` and ``queries``
    default to the ones the weights were fitted with.

    Example:
        >>> result = mmel(model, targets, LayerWeights("tiny-llava", [0], [1.0]))
        >>> result.extras["layers"]
        [0]
    """
    if weights is not None and not isinstance(weights, LayerWeights):
        weights = load_weights(model.name, weights)
        if weights is None:
            raise MmlensError(f"no MMEL weights for {model.name} in that file")
    elif weights is None:
        weights = load_weights(model.name)
    spatial = spatial or (weights.spatial if weights else "relu")
    queries = queries or (weights.queries if weights else "all")
    maps = tower_maps(model, targets, None if weights is None else weights.layers, spatial, queries, method="mmel")
    if weights is None:
        if not maps.reached:
            raise MmlensError("mmel: the answer does not depend on any tower layer's attention")
        weights = LayerWeights(model.name, maps.reached, [1.0 / len(maps.reached)] * len(maps.reached), spatial, queries)
    grids = combine({i: maps.grids[i] for i in weights.layers}, weights.layers, weights.weights)
    return Attribution(decoder_scores(grids, maps.views, targets),
                       {"patch_grids": grids, "merge": maps.views[0].merge, "patch_shapes": patch_shapes(maps.views),
                        "layers": list(weights.layers),
                        "weights": [round(float(w), 6) for w in weights.weights]})


def combine(grids: dict[int, torch.Tensor], layers: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """``sum_l w_l * grid_l / max(grid_l)``, the maximum taken per (row, target) over every view.

    Example:
        >>> a = torch.tensor([[[[[0.0, 2.0]]]]]); b = torch.tensor([[[[[4.0, 0.0]]]]])
        >>> combine({0: a, 1: b}, [0, 1], [0.5, 0.5]).flatten().tolist()
        [0.5, 0.5]
    """
    total = None
    for layer, weight in zip(layers, weights):
        grid = grids[layer]
        peak = torch.nan_to_num(grid, nan=0.0).flatten(2).amax(-1).clamp_min(1e-12)[..., None, None, None]
        part = grid / peak * float(weight)
        total = part if total is None else total + part
    return total


def fit_layer_weights(model: Model, prompts: Sequence[str], images: Sequence[Any], answers: Sequence[str],
                      masks: Sequence[np.ndarray], layers: Sequence[int] | None = None, spatial: str = "relu",
                      queries: str = "all", batch_size: int = 8, source: str = "") -> LayerWeights:
    """Fit non-negative layer weights (summing to 1) maximising mean energy-in-box on validation samples.

    Each sample is a prompt with one image, its answer (teacher-forced, first
    answer token explained) and a boolean pixel mask of where the evidence is.
    Layers default to those the answer reaches.

    Example:
        >>> from mmlens.data.shapes import make_sample
        >>> samples = [make_sample("val", i, "colour") for i in range(4)]
        >>> fitted = fit_layer_weights(mmlens.load(), [s.prompt for s in samples], [s.image for s in samples],
        ...                            [s.answer for s in samples], [s.target_mask() for s in samples])
        >>> round(sum(fitted.weights), 6)
        1.0
    """
    if not (len(prompts) == len(images) == len(answers) == len(masks)) or not prompts:
        raise MmlensError("fit_layer_weights: give as many prompts, images, answers and masks, at least one")
    heatmaps: list[list[np.ndarray]] = []  # per sample and layer: energies do not combine linearly, maps do
    chosen = list(layers) if layers is not None else None
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        batch = model.prepare(list(prompts[start:stop]), [[image] for image in images[start:stop]])
        targets = build_targets(model, batch, answer=list(answers[start:stop]))
        maps = tower_maps(model, targets, chosen, spatial, queries, method="mmel")
        if chosen is None:
            chosen = maps.reached or sorted(maps.grids)
        shapes = patch_shapes(maps.views)
        for row in range(batch.input_ids.shape[0]):
            heatmaps.append([patch_heatmaps(batch.layout, _normalised(maps.grids[i][row, 0]), maps.views[0].merge,
                                            row, shapes[row])[0] for i in chosen])
    stacks = [np.stack(h) for h in heatmaps]  # each (layers, H, W)
    masks = [np.asarray(m, dtype=bool) for m in masks]

    def objective(w: np.ndarray) -> float:
        return float(np.nanmean([energy_in_box(np.tensordot(w, s, 1), mask=m) for s, m in zip(stacks, masks)]))

    weights, score = _maximise(objective, len(chosen))
    uniform = objective(np.full(len(chosen), 1.0 / len(chosen)))
    return LayerWeights(model.name, [int(i) for i in chosen], [round(float(w), 6) for w in weights], spatial, queries,
                        "energy_in_box", round(score, 6), round(uniform, 6), len(prompts), source)


def _normalised(grid: torch.Tensor) -> torch.Tensor:
    """One row's ``(views, R, C)`` grid over its maximum (as :func:`combine` scales it)."""
    return grid / torch.nan_to_num(grid, nan=0.0).max().clamp_min(1e-12)


def _maximise(objective: Any, count: int) -> tuple[np.ndarray, float]:
    """The best weights on the simplex: Nelder-Mead on softmax logits from uniform and from each single layer."""
    from scipy.optimize import minimize

    def weights_of(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max())
        return e / e.sum()

    best_w, best = np.full(count, 1.0 / count), objective(np.full(count, 1.0 / count))
    starts = [np.zeros(count)] + [np.where(np.arange(count) == i, 4.0, 0.0) for i in range(count)]
    for start in starts if count > 1 else []:
        found = minimize(lambda z: -objective(weights_of(z)), start, method="Nelder-Mead",
                         options={"maxiter": 200 * count, "xatol": 1e-3, "fatol": 1e-5})
        if -found.fun > best:
            best_w, best = weights_of(found.x), -float(found.fun)
    return best_w, best


def main(argv: Sequence[str] | None = None) -> None:
    """Fit and store layer weights on validation samples of the shapes world (or the multi-domain world).

        python -m mmlens.attribution.mmel --model shapes-llava --samples 64
        python -m mmlens.attribution.mmel --model shapes-llava-ft-domain --domains shapes,cells --samples 64
    """
    import argparse

    import mmlens
    from mmlens.data.domains import make_sample as domain_sample
    from mmlens.data.shapes import make_sample

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--domains", default=None, help="multi-domain world domains, interleaved (e.g. shapes,cells); "
                        "default: shapes-world colour and shape questions")
    parser.add_argument("--spatial", default="relu")
    parser.add_argument("--queries", default="all")
    parser.add_argument("--out", default=str(SHIPPED))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = mmlens.load(args.model)
    types = ("colour", "shape")
    domains = args.domains.split(",") if args.domains else None
    drawn = [domain_sample(domains[i % len(domains)], "val", i) if domains else make_sample("val", i, types[i % 2])
             for i in range(args.samples)]
    kept = [s for s in drawn if s.target_objects]  # "no" answers point at nothing
    fitted = fit_layer_weights(model, [s.prompt for s in kept], [s.image for s in kept], [s.answer for s in kept],
                               [s.target_mask() for s in kept], spatial=args.spatial, queries=args.queries,
                               source=f"{args.domains or 'shapes colour/shape'} val 0..{args.samples - 1} with a "
                                      f"target object ({len(kept)})")
    fitted.save(args.out)
    print(json.dumps(fitted.to_json()))


if __name__ == "__main__":
    main()
