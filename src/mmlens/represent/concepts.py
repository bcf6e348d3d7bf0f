"""Concept activation vectors (CAV) and TCAV with its significance test (Kim et al., ICML 2018).

A CAV at decoder layer ``l`` is the unit normal of a logistic boundary that
separates concept activations from random counter-examples. The TCAV score of
a class is the share of its samples whose target logit rises when the
activation moves along the CAV (a positive directional derivative). A score is
*significant* when the scores of CAVs trained against many random sets differ
(two-sided t-test) from the scores of random-vs-random CAVs.

Representations are read at ``lm.L{l}.resid`` (a block's output) and, per
sample, averaged over chosen positions: ``"last"`` (the answer position),
``"image"`` (every image token) or a list of image-token indices per sample
(e.g. an object's patches, :func:`object_patches`). The directional derivative
is that of moving *all* the chosen positions along the CAV, so one backward
pass serves every CAV.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> model = mmlens.load("shapes-llava")
    >>> samples = make_dataset("val", 12)
    >>> acts = activations(model, samples, [1])  # {1: (12, 128)}
    >>> cav = train_cav(acts[1][:6].repeat(2, 1), acts[1][6:].repeat(2, 1), layer=1)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch

from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.models import runtime

#: Fewest samples a concept (or a random set) may have.
MIN_CONCEPT_SAMPLES = 10
#: Fewest random counter-example sets for a significance test (Kim et al. use many; the issue asks >= 10).
MIN_RANDOM_SETS = 10

Where = Union[str, Sequence[Sequence[int]]]


#: The layer number that stands for the decoder's input (``lm.embed``: image features merged in).
EMBED = -1


def site_of(layer: int) -> str:
    """The residual-stream site of decoder layer ``layer``; :data:`EMBED` (-1) is the decoder's input.

    Example:
        >>> site_of(2), site_of(-1)
        ('lm.L2.resid', 'lm.embed')
    """
    return "lm.embed" if layer == EMBED else f"lm.L{layer}.resid"


def object_patches(obj: Any, grid: int = 8, min_cover: float = 0.25) -> list[int]:
    """Row-major indices of the ``grid x grid`` image patches that an object covers by at least ``min_cover``.

    Example:
        >>> from mmlens.data.shapes import make_sample
        >>> len(object_patches(make_sample("test", 0).objects[0])) > 0
        True
    """
    mask = np.asarray(obj.mask)
    p = mask.shape[0] // grid
    cover = mask[:grid * p, :grid * p].reshape(grid, p, grid, p).mean(axis=(1, 3))
    hits = np.flatnonzero(cover >= min_cover)
    if hits.size == 0:  # a tiny object straddling patches: its best patch
        hits = np.asarray([int(cover.argmax())])
    return hits.tolist()


def positions_of(batch: Any, where: Where, start: int = 0) -> list[torch.Tensor]:
    """Absolute positions to read, per row of ``batch``; ``where`` rows ``start ..`` when it is a list.

    Example:
        >>> positions_of(batch, "last")[0].tolist() == [batch.input_ids.shape[1] - 1]  # doctest: +SKIP
        True
    """
    rows = batch.input_ids.shape[0]
    if where == "last":
        return [torch.tensor([batch.input_ids.shape[1] - 1]) for _ in range(rows)]
    if where == "image":
        return [batch.layout.image_positions(r) for r in range(rows)]
    if isinstance(where, str):
        raise MmlensError(f"unknown position choice {where!r}; use 'last', 'image' or image-token indices per sample")
    out = []
    for r in range(rows):
        image = batch.layout.image_positions(r)
        index = torch.as_tensor(list(where[start + r]), dtype=torch.long)
        if index.numel() == 0 or int(index.max()) >= image.numel() or int(index.min()) < 0:
            raise MmlensError(f"sample {start + r}: image-token indices must be in [0, {image.numel()})")
        out.append(image[index])
    return out


def prepare_samples(model: Any, chunk: Sequence[Any]) -> Any:
    """A batch of samples' prompts and (when they have one) images.

    Example:
        >>> prepare_samples(model, samples[:2]).input_ids.shape[0]  # doctest: +SKIP
        2
    """
    images = [[s.image] if getattr(s, "image", None) is not None else [] for s in chunk]
    return model.prepare([s.prompt for s in chunk], images if any(images) else None)


def _check_where(where: Where, n: int) -> None:
    if not isinstance(where, str) and len(where) != n:
        raise MmlensError(f"{len(where)} position lists for {n} samples")


@torch.no_grad()
def activations(model: Any, samples: Sequence[Any], layers: Sequence[int], where: Where = "last",
                batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Per layer, a ``(samples, hidden)`` float32 matrix: each sample's residual averaged over ``where``.

    Example:
        >>> acts = activations(model, samples, [0, 3], where="image")
        >>> acts[3].shape == (len(samples), 128)
        True
    """
    _check_where(where, len(samples))
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(samples), batch_size):
        batch = prepare_samples(model, samples[start:start + batch_size])
        with capture(model, [site_of(layer) for layer in layers]) as captured:
            model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))  # no logits are read
        positions = positions_of(batch, where, start)
        for layer in layers:
            value = captured[site_of(layer)].float()
            out[layer].append(torch.stack([value[r, p].mean(0) for r, p in enumerate(positions)]))
    return {layer: torch.cat(parts).cpu() for layer, parts in out.items()}


def gradients(model: Any, samples: Sequence[Any], layers: Sequence[int], target: str | int,
              where: Where = "last", batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Per layer, ``(samples, hidden)``: the gradient of the target logit at the answer position, summed over ``where``.

    The dot product with a direction ``v`` is the directional derivative of
    adding ``v`` at every ``where`` position (TCAV's sensitivity).

    Example:
        >>> grads = gradients(model, samples, [1], target="red")
        >>> grads[1].shape
        torch.Size([12, 128])
    """
    _check_where(where, len(samples))
    token = _token_id(model, target)
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(samples), batch_size):
        batch = prepare_samples(model, samples[start:start + batch_size])
        with capture(model, [site_of(layer) for layer in layers], grads=True) as captured:
            logits = model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf)).logits[:, -1, token]
            logits.float().sum().backward()
        positions = positions_of(batch, where, start)
        for layer in layers:
            grad = captured.grad(site_of(layer)).float()
            out[layer].append(torch.stack([grad[r, p].sum(0) for r, p in enumerate(positions)]))
    return {layer: torch.cat(parts).cpu() for layer, parts in out.items()}


def _token_id(model: Any, target: str | int) -> int:
    if isinstance(target, int):
        return target
    ids = model.tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise MmlensError(f"target {target!r} is {len(ids)} tokens for {model.name}; give one token (or its id)")
    return int(ids[0])


@dataclass
class Cav:
    """A concept activation vector: unit ``vector`` at ``layer``, the boundary's ``bias`` and held-out ``accuracy``."""

    layer: int
    vector: torch.Tensor
    bias: float
    accuracy: float


def _check_set(name: str, acts: torch.Tensor) -> None:
    if acts.ndim != 2 or acts.shape[0] < MIN_CONCEPT_SAMPLES:
        n = acts.shape[0] if acts.ndim == 2 else 0
        raise MmlensError(f"{name} has {n} samples; a CAV needs at least {MIN_CONCEPT_SAMPLES}")


def train_cav(concept: torch.Tensor, counter: torch.Tensor, layer: int = 0, seed: int = 0,
              held_out: float = 0.3) -> Cav:
    """A logistic CAV separating ``concept`` rows from ``counter`` rows; accuracy on a held-out share.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(20, 4, generator=g) + 3, torch.randn(20, 4, generator=g)
        >>> train_cav(a, b).accuracy > 0.9
        True
    """
    _check_set("the concept set", concept)
    _check_set("the counter-example set", counter)
    if concept.shape[1] != counter.shape[1]:
        raise MmlensError(f"concept width {concept.shape[1]} != counter-example width {counter.shape[1]}")
    x = torch.cat([concept, counter]).double().numpy()
    y = np.r_[np.ones(len(concept)), np.zeros(len(counter))]
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(2, int(round(held_out * len(x))))
    test, train = order[:n_test], order[n_test:]
    # Scale once so one regularisation strength fits every layer's norm.
    scale = float(np.linalg.norm(x[train], axis=1).mean()) or 1.0
    from sklearn.linear_model import LogisticRegression  # here, not at import: sklearn is slow to import

    clf = LogisticRegression(max_iter=2000).fit(x[train] / scale, y[train])
    accuracy = float((clf.predict(x[test] / scale) == y[test]).mean())
    w = torch.from_numpy(clf.coef_[0]).float()
    norm = float(w.norm()) or 1.0
    return Cav(layer, w / norm, float(clf.intercept_[0]) / norm * scale, accuracy)


def tcav_score(grads: torch.Tensor, vector: torch.Tensor) -> float:
    """The share of samples whose directional derivative along ``vector`` is positive.

    Example:
        >>> tcav_score(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]]), torch.tensor([1.0, 0.0]))
        0.6666666666666666
    """
    return float((grads @ vector > 0).float().mean())


@dataclass
class TcavResult:
    """TCAV at one layer: the concept's mean score over random sets, the random baseline and the t-test."""

    layer: int
    score: float
    scores: list[float]
    random_scores: list[float]
    p_value: float
    significant: bool
    cav_accuracy: float
    cavs: list[Cav] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for JSON."""
        return {"layer": self.layer, "score": round(self.score, 4), "score_std": round(float(np.std(self.scores)), 4),
                "random_mean": round(float(np.mean(self.random_scores)), 4), "p_value": float(self.p_value),
                "significant": self.significant, "cav_accuracy": round(self.cav_accuracy, 4)}


def significance(scores: Sequence[float], random_scores: Sequence[float], alpha: float = 0.05) -> tuple[float, bool]:
    """Kim et al.'s test: two-sided t-test of concept scores against random-vs-random scores; ``(p, p < alpha)``.

    Example:
        >>> significance([0.9, 0.95, 0.92], [0.5, 0.4, 0.6])[1]
        True
    """
    a, b = np.asarray(scores, float), np.asarray(random_scores, float)
    if np.allclose(a.std(), 0) and np.allclose(b.std(), 0):
        p = 0.0 if not np.isclose(a.mean(), b.mean()) else 1.0
    else:
        with warnings.catch_warnings():  # near-constant scores (all 1.0, say) make scipy warn about precision
            warnings.simplefilter("ignore", RuntimeWarning)
            from scipy import stats  # here, not at import: scipy.stats takes a second to import

            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        p = 1.0 if np.isnan(p) else p
    return p, bool(p < alpha)


def tcav(concept: torch.Tensor, randoms: Sequence[torch.Tensor], grads: torch.Tensor, layer: int = 0,
         alpha: float = 0.05) -> TcavResult:
    """TCAV of a concept at one layer from activations and gradients (no model needed).

    ``randoms`` are at least :data:`MIN_RANDOM_SETS` + 1 random sets: the
    concept is trained against sets ``1 ..`` and set 0 against the same sets
    gives the random-vs-random baseline.

    Example:
        >>> result = tcav(concept_acts, random_acts, grads, layer=1)  # doctest: +SKIP
        >>> result.significant  # doctest: +SKIP
        True
    """
    if len(randoms) < MIN_RANDOM_SETS + 1:
        raise MmlensError(f"{len(randoms)} random sets; the test needs at least {MIN_RANDOM_SETS + 1}")
    if grads.shape[1] != concept.shape[1]:
        raise MmlensError(f"gradient width {grads.shape[1]} != activation width {concept.shape[1]}")
    cavs = [train_cav(concept, r, layer, seed=i) for i, r in enumerate(randoms[1:])]
    baseline = [train_cav(randoms[0], r, layer, seed=i) for i, r in enumerate(randoms[1:])]
    scores = [tcav_score(grads, c.vector) for c in cavs]
    random_scores = [tcav_score(grads, c.vector) for c in baseline]
    p, significant = significance(scores, random_scores, alpha)
    return TcavResult(layer, float(np.mean(scores)), scores, random_scores, p, significant,
                      float(np.mean([c.accuracy for c in cavs])), cavs)
