"""Backdoor filtering after BYE: samples whose answer position's attention collapses onto a few image tokens.

Per sample, one forward pass on image + question; at every decoder layer the
attention row of the last prompt position, restricted to the image tokens,
averaged over heads and renormalised, gives a Shannon entropy (fp32, nats).
Only that one row per layer is computed (``capture(..., query=-1)``, the
``"mmlens"`` attention function), never the full attention maps.

A layer is *sensitive* when a 2-component 1-D Gaussian mixture over all
samples' entropies has ``|mu1 - mu2| > separation * (sigma1 + sigma2)``
(published: ``separation = 2``). The score is the mean entropy over sensitive
layers; a 2-component mixture over the scores splits the data and the
low-entropy cluster is removed. No sensitive layer: nothing is removed.
``units="heads"`` applies the same rule to every (layer, head) entropy instead
of the head mean (mmlens' variant; see docs/audit.md). The scoring never
sees poison labels; :func:`label_scores` compares its output to them afterwards.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(3.0, 0.05, (200, 3)); h[:20, 1] = rng.normal(1.0, 0.05, 20)
    >>> result = bye_filter(h, [f"s{i}" for i in range(200)])
    >>> result.sensitive, len(result.removed)
    ([1], 20)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.model import Model
from mmlens.models.runtime import last_logits_only

SEPARATION = 2.0  # the published constant: |mu1 - mu2| > 2 (sigma1 + sigma2)


@dataclass
class EntropyTable:
    """Attention entropies per sample: ``layers`` is ``(n, L)`` (head mean), ``heads`` ``(n, L, H)`` or None."""

    ids: list[str]
    layers: np.ndarray
    heads: np.ndarray | None = None

    def units(self, units: str = "layers") -> tuple[np.ndarray, list[str]]:
        """The ``(n, units)`` entropy matrix the rule runs on, and a name per column (``L3`` or ``L3.H1``)."""
        if units == "layers":
            return self.layers, [f"L{i}" for i in range(self.layers.shape[1])]
        if units == "heads":
            if self.heads is None:
                raise MmlensError("head-level entropies were not computed (score with per_head=True)")
            n, n_layers, n_heads = self.heads.shape
            return self.heads.reshape(n, -1), [f"L{i}.H{h}" for i in range(n_layers) for h in range(n_heads)]
        raise MmlensError(f"units is 'layers' or 'heads', got {units!r}")


def _image_row(sample: Sample) -> list:
    image = getattr(sample, "image", None)
    if image is None:
        raise MmlensError(f"sample {sample.id!r} has no image: BYE scores attention to image tokens")
    return [image]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.float().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)  # renormalised over the image tokens
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def attention_entropies(model: Model, samples: Iterable[Sample], *, batch_size: int = 8, per_head: bool = False,
                        progress: Callable[[int], None] | None = None) -> EntropyTable:
    """Entropy of the last prompt position's attention over image tokens, per sample and decoder layer.

    Only the last row of each layer's attention is computed. ``per_head``
    also keeps every head's entropy. ``progress`` is called with the samples done per batch.

    Example:
        >>> table = attention_entropies(mmlens.load("tiny-llava"), open_reader("shapes:val[0:4]"))  # doctest: +SKIP
        >>> table.layers.shape  # doctest: +SKIP
        (4, 2)
    """
    if not model.adapter.multimodal:
        raise MmlensError(f"{model.name} is a text-only model: BYE needs a vision-language model")
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    ids: list[str] = []
    layer_rows: list[np.ndarray] = []
    head_rows: list[np.ndarray] = []
    chunk: list[Sample] = []

    def run(batch_samples: list[Sample]) -> None:
        batch = model.prepare([s.prompt for s in batch_samples], [_image_row(s) for s in batch_samples])
        with torch.no_grad(), capture(model, sites, query=-1, mean_heads=not per_head) as captured:
            model.forward(batch, use_cache=False, **last_logits_only(model.hf))
        for row, sample in enumerate(batch_samples):
            where = batch.layout.image_positions(row)
            if where.numel() == 0:
                raise MmlensError(f"sample {sample.id!r}: the model placed no image tokens")
            # (layers, [heads,] image tokens): the last prompt row of every layer
            probs = torch.stack([captured[s][row][..., where.to(captured[s].device)].float().cpu() for s in sites])
            if per_head:
                head_rows.append(_entropy(probs).numpy())
                probs = probs.mean(1)
            layer_rows.append(_entropy(probs).numpy())
            ids.append(sample.id)
        if progress is not None:
            progress(len(batch_samples))

    for sample in samples:
        chunk.append(sample)
        if len(chunk) == batch_size:
            run(chunk)
            chunk = []
    if chunk:
        run(chunk)
    if not ids:
        raise MmlensError("the data has no samples to score")
    return EntropyTable(ids, np.stack(layer_rows), np.stack(head_rows) if per_head else None)


@dataclass
class MixtureFit:
    """A 2-component 1-D Gaussian mixture, components sorted by mean (low first)."""

    means: tuple[float, float]
    sigmas: tuple[float, float]
    weights: tuple[float, float]

    def gap(self) -> float:
        """``|mu1 - mu2| / (sigma1 + sigma2)``: the rule asks for more than ``separation``."""
        return abs(self.means[1] - self.means[0]) / max(self.sigmas[0] + self.sigmas[1], 1e-12)

    def low_cluster(self, x: np.ndarray) -> np.ndarray:
        """Whether each value is more likely under the low-mean component (posterior > 0.5)."""
        dens = [w * np.exp(-0.5 * ((x - m) / s) ** 2) / s
                for m, s, w in zip(self.means, self.sigmas, self.weights)]
        return dens[0] > dens[1]

    def to_json(self) -> dict:
        return {"means": list(self.means), "sigmas": list(self.sigmas), "weights": list(self.weights),
                "gap": self.gap()}


def fit_mixture(x: np.ndarray, iterations: int = 200) -> MixtureFit:
    """EM for a 2-component 1-D Gaussian mixture (deterministic: started at the 25th and 75th percentiles).

    Example:
        >>> fit = fit_mixture(np.r_[np.zeros(50), np.ones(50)] + np.random.default_rng(0).normal(0, 0.1, 100))
        >>> round(fit.means[0], 1), round(fit.means[1], 1)
        (0.0, 1.0)
    """
    x = np.asarray(x, np.float64).ravel()
    floor = max(1e-6, 1e-3 * float(x.std()))  # no component collapses onto one value
    mu = np.percentile(x, [25, 75]).astype(np.float64)
    if mu[0] == mu[1]:
        mu = np.array([x.min(), x.max()], np.float64)
    sd = np.full(2, max(float(x.std()), floor))
    w = np.array([0.5, 0.5])
    for _ in range(iterations):
        log_d = np.log(w) - np.log(sd) - 0.5 * ((x[:, None] - mu) / sd) ** 2
        log_d -= log_d.max(1, keepdims=True)
        r = np.exp(log_d)
        r /= r.sum(1, keepdims=True)
        n_k = r.sum(0) + 1e-12
        new_mu = (r * x[:, None]).sum(0) / n_k
        sd = np.sqrt((r * (x[:, None] - new_mu) ** 2).sum(0) / n_k).clip(floor)
        w = n_k / n_k.sum()
        if np.allclose(new_mu, mu, rtol=0, atol=1e-10):
            mu = new_mu
            break
        mu = new_mu
    order = np.argsort(mu)
    return MixtureFit(tuple(float(v) for v in mu[order]), tuple(float(v) for v in sd[order]),
                      tuple(float(v) for v in w[order]))


@dataclass
class ByeResult:
    """What the filter decided: kept and removed ids, scores, the mixtures and the sensitive units."""

    ids: list[str]
    kept: list[str]
    removed: list[str]
    scores: np.ndarray | None
    fits: list[MixtureFit]
    names: list[str]
    sensitive: list[int]
    score_fit: MixtureFit | None
    separation: float
    units: str
    note: str = ""
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready summary (no per-sample arrays)."""
        return {"samples": len(self.ids), "kept": len(self.kept), "removed": len(self.removed),
                "units": self.units, "separation": self.separation,
                "sensitive": [self.names[i] for i in self.sensitive], "note": self.note,
                "score_mixture": self.score_fit.to_json() if self.score_fit else None,
                "max_gap": max((f.gap() for f in self.fits), default=0.0)}


def bye_filter(entropy: np.ndarray | EntropyTable, ids: Sequence[str] | None = None, *,
               separation: float = SEPARATION, units: str = "layers") -> ByeResult:
    """BYE's decision on an ``(n, units)`` entropy matrix (or an :class:`EntropyTable`); no labels involved.

    Example:
        >>> bye_filter(np.full((10, 3), 2.0), [str(i) for i in range(10)]).note
        'no sensitive layer (largest gap 0.00 <= 2.0): nothing removed'
    """
    if isinstance(entropy, EntropyTable):
        ids = entropy.ids
        matrix, names = entropy.units(units)
    else:
        matrix = np.asarray(entropy, np.float64)
        names = [f"L{i}" for i in range(matrix.shape[1])]
    ids = list(ids or [])
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise MmlensError(f"entropies of shape {matrix.shape} do not match {len(ids)} sample ids")
    if len(ids) < 4:
        raise MmlensError(f"BYE fits mixtures over samples: {len(ids)} are too few (at least 4)")
    fits = [fit_mixture(matrix[:, j]) for j in range(matrix.shape[1])]
    sensitive = [j for j, f in enumerate(fits) if f.gap() > separation]
    unit_word = "layer" if units == "layers" else "head"
    if not sensitive:
        gap = max(f.gap() for f in fits)
        return ByeResult(ids, list(ids), [], None, fits, names, [], None, separation, units,
                         note=f"no sensitive {unit_word} (largest gap {gap:.2f} <= {separation}): nothing removed")
    scores = matrix[:, sensitive].mean(1)
    score_fit = fit_mixture(scores)
    low = score_fit.low_cluster(scores)
    removed = [i for i, flag in zip(ids, low) if flag]
    kept = [i for i, flag in zip(ids, low) if not flag]
    note = f"{len(sensitive)} sensitive {unit_word}{'s' if len(sensitive) > 1 else ''}; removed {len(removed)}"
    return ByeResult(ids, kept, removed, scores, fits, names, sensitive, score_fit, separation, units, note=note)


def label_scores(ids: Sequence[str], removed: Iterable[str], poisoned: Iterable[str]) -> dict:
    """Precision, recall and F1 of ``removed`` against poison labels; labels naming absent ids are reported.

    Example:
        >>> label_scores(["a", "b", "c"], ["a"], ["a", "z"])["unknown_labels"]
        ['z']
    """
    present, removed_set, labels = set(ids), set(removed), set(poisoned)
    unknown = sorted(labels - present)
    labels &= present
    tp = len(removed_set & labels)
    precision = tp / len(removed_set) if removed_set else (1.0 if not labels else 0.0)
    recall = tp / len(labels) if labels else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"poisoned": len(labels), "removed": len(removed_set), "true_positives": tp, "precision": precision,
            "recall": recall, "f1": f1, "unknown_labels": unknown}
