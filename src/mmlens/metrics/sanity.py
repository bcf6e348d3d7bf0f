"""Model-randomisation sanity checks of explanations (Adebayo et al., 2018).

An explanation that still looks the same once the model's weights are random
does not explain the model. The check re-initialises decoder layers, either in
cascade from the top (the last layer, then the last two, ... then all) or one
layer at a time, and compares each randomised model's heatmaps with the
trained model's by Spearman rank correlation.

Layers are re-initialised with the zoo's own training init
(:func:`mmlens.zoo.train.init_for_training`: linear weights normal with std
``1/sqrt(fan_in)``, biases zero) and norm weights reset to one, each layer from
its own seed (``seed + layer``), so layer ``k`` gets the same random weights in
every cascade step and in the independent run.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> list(cascade(model.n_layers))
    [(1,), (1, 0)]
    >>> random = randomised(model, [1], seed=0)
    >>> bool(torch.equal(random.decoder_layers[0].mlp.up_proj.weight, model.decoder_layers[0].mlp.up_proj.weight))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mmlens.errors import MmlensError
from mmlens.metrics.agreement import rank_agreement
from mmlens.model import Model


def cascade(n_layers: int) -> Iterator[tuple[int, ...]]:
    """Cascading randomisation from the top: ``(n-1,)``, ``(n-1, n-2)``, ... all layers.

    Example:
        >>> list(cascade(3))
        [(2,), (2, 1), (2, 1, 0)]
    """
    for k in range(1, n_layers + 1):
        yield tuple(range(n_layers - 1, n_layers - 1 - k, -1))


def independent(n_layers: int) -> Iterator[tuple[int, ...]]:
    """Independent randomisation: one layer at a time, ``(0,)``, ``(1,)``, ...

    Example:
        >>> list(independent(2))
        [(0,), (1,)]
    """
    for layer in range(n_layers):
        yield (layer,)


def _reinit(module: nn.Module) -> None:
    """The zoo's training init for linear and embedding weights; biases 0, norm weights 1."""
    from mmlens.zoo.train import init_for_training  # the recipe's own init; imported late (training code)

    init_for_training(module)
    for sub in module.modules():
        bias = getattr(sub, "bias", None)
        if isinstance(sub, nn.Linear) and bias is not None:
            nn.init.zeros_(bias)
        elif not isinstance(sub, (nn.Linear, nn.Embedding)) and isinstance(getattr(sub, "weight", None), nn.Parameter):
            nn.init.ones_(sub.weight)  # RMSNorm / LayerNorm scales start at one
            if isinstance(bias, nn.Parameter):
                nn.init.zeros_(bias)


def randomise_layers(model: Model, layers: Iterable[int], seed: int = 0) -> Model:
    """Re-initialise decoder ``layers`` of ``model`` **in place**; returns the model.

    Layer ``k`` is drawn from seed ``seed + k`` whatever else is randomised;
    the global random state is left as it was. See :func:`randomised` for a copy.

    Example:
        >>> import mmlens
        >>> model = randomise_layers(mmlens.load("tiny-llama"), [0], seed=1)
    """
    chosen = sorted(set(int(k) for k in layers))
    bad = [k for k in chosen if not 0 <= k < model.n_layers]
    if bad:
        raise MmlensError(f"no decoder layer {bad[0]}: {model.name} has layers 0-{model.n_layers - 1}")
    with torch.no_grad():
        for k in chosen:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                _reinit(model.decoder_layers[k])
    return model


def randomised(model: Model, layers: Iterable[int], seed: int = 0) -> Model:
    """A deep copy of ``model`` with decoder ``layers`` re-initialised; ``model`` is untouched.

    Example:
        >>> import mmlens
        >>> original = mmlens.load("tiny-llama")
        >>> copy_ = randomised(original, [0, 1])
        >>> copy_ is not original
        True
    """
    hf = copy.deepcopy(model.hf)
    clone = Model(hf, model.processor, model.adapter, f"{model.name}-random-{'-'.join(map(str, sorted(layers)))}")
    return randomise_layers(clone, layers, seed)


def image_grids(scores: torch.Tensor, layout, image: int = 0) -> np.ndarray:
    """Each row's image-token scores on its patch grid, flattened: ``(batch, rows * cols)``.

    ``scores`` is ``(batch, seq)`` (one target's scores).

    Example:
        >>> import mmlens
        >>> from PIL import Image
        >>> model = mmlens.load("tiny-llava")
        >>> batch = model.prepare("<image> what ?", [Image.new("RGB", (64, 64))])
        >>> image_grids(torch.zeros(1, batch.input_ids.shape[1]), batch.layout).ndim
        2
    """
    return np.stack([layout.grid(scores[b], b, image).reshape(-1) for b in range(scores.shape[0])])


def spearman_rows(a: np.ndarray, b: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (NaN where a row is constant).

    ``absolute`` compares magnitudes (Adebayo et al. report both).

    Example:
        >>> spearman_rows(np.array([[1.0, 2, 3]]), np.array([[3.0, 2, 1]])).tolist()
        [-1.0]
    """
    if a.shape != b.shape:
        raise MmlensError(f"heatmaps of shapes {a.shape} and {b.shape} do not pair up")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return np.array([rank_agreement(x, y) for x, y in zip(a, b)])


def bootstrap_mean(values: Sequence[float], resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (NaNs dropped) and its percentile-bootstrap interval ``(mean, low, high)``.

    Example:
        >>> mean, low, high = bootstrap_mean([0.1, 0.2, 0.3, 0.4])
        >>> low <= mean <= high
        True
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
