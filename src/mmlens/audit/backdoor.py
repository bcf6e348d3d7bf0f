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
of the head mean (mmlens' variant; see docs/audit.md); ``units="positions"``,
``keys="all"``, ``combine``, ``threshold`` and ``log`` are the other options
tried there (only ``threshold`` helped). The scoring never
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

from mmlens.audit.backdoor_mixture import MixtureFit, fit_mixture, fit_mixtures, refine_split
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.hooks import capture
from mmlens.model import Model
from mmlens.models.runtime import last_logits_only

SEPARATION = 2.0  # the published constant: |mu1 - mu2| > 2 (sigma1 + sigma2)


@dataclass
class EntropyTable:
    """Attention entropies per sample.

    ``layers`` is ``(n, L)`` (head mean), ``heads`` ``(n, L, H)`` or None, both
    at the last prompt position; ``positions`` ``(n, P, L, H)`` or None: every
    head at each of the last ``P`` prompt positions (the last one at ``[:, -1]``);
    ``shares`` ``(n, L, H)`` or None: the image tokens' share of each head's
    last row (what the entropy's renormalisation sets aside).
    """

    ids: list[str]
    layers: np.ndarray
    heads: np.ndarray | None = None
    positions: np.ndarray | None = None
    shares: np.ndarray | None = None

    def units(self, units: str = "layers") -> tuple[np.ndarray, list[str]]:
        """The ``(n, units)`` matrix the rule runs on, and a name per column (``L3``, ``L3.H1``, ``q-2.L3.H1``)."""
        if units == "layers":
            return self.layers, [f"L{i}" for i in range(self.layers.shape[1])]
        if units == "heads":
            if self.heads is None:
                raise MmlensError("head-level entropies were not computed (score with per_head=True)")
            n, n_layers, n_heads = self.heads.shape
            return self.heads.reshape(n, -1), [f"L{i}.H{h}" for i in range(n_layers) for h in range(n_heads)]
        if units == "positions":
            if self.positions is None:
                raise MmlensError("entropies at several prompt positions were not computed (score with positions > 1)")
            n, n_pos, n_layers, n_heads = self.positions.shape
            return self.positions.reshape(n, -1), [f"q{q - n_pos}.L{i}.H{h}" for q in range(n_pos)
                                                   for i in range(n_layers) for h in range(n_heads)]
        raise MmlensError(f"units is 'layers', 'heads' or 'positions', got {units!r}")


def _image_row(sample: Sample) -> list:
    image = getattr(sample, "image", None)
    if image is None:
        raise MmlensError(f"sample {sample.id!r} has no image: BYE scores attention to image tokens")
    return [image]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.float().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)  # renormalised over the keys read
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def attention_entropies(model: Model, samples: Iterable[Sample], *, batch_size: int = 8, per_head: bool = False,
                        progress: Callable[[int], None] | None = None, positions: int = 1,
                        keys: str = "image", shares: bool = False) -> EntropyTable:
    """Entropy of the last prompt position's attention over image tokens, per sample and decoder layer.

    Only the last row (or the last ``positions`` rows) of each layer's
    attention is computed. ``per_head`` also keeps every head's entropy;
    ``positions > 1`` keeps every head at each of the last ``positions`` prompt
    positions in ``table.positions``. ``keys="all"`` takes the entropy of the
    whole row instead of the image tokens' share (published: ``"image"``).
    ``shares`` also keeps each head's image share of its last row (what ``--refine`` reads beside the entropies).
    ``progress`` is called with the samples done per batch.

    Example:
        >>> table = attention_entropies(mmlens.load("tiny-llava"), open_reader("shapes:val[0:4]"))  # doctest: +SKIP
        >>> table.layers.shape  # doctest: +SKIP
        (4, 2)
    """
    if not model.adapter.multimodal:
        raise MmlensError(f"{model.name} is a text-only model: BYE needs a vision-language model")
    if keys not in ("image", "all") or positions < 1:
        raise MmlensError(f"keys is 'image' or 'all' and positions at least 1, got {keys!r} and {positions}")
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    rows = list(range(-positions, 0)) if positions > 1 else -1
    keep_heads = per_head or positions > 1 or shares
    ids: list[str] = []
    found: dict[str, list[np.ndarray]] = {"layers": [], "heads": [], "positions": [], "shares": []}
    chunk: list[Sample] = []

    def run(batch_samples: list[Sample]) -> None:
        batch = model.prepare([s.prompt for s in batch_samples], [_image_row(s) for s in batch_samples])
        with torch.no_grad(), capture(model, sites, query=rows, mean_heads=not keep_heads) as captured:
            model.forward(batch, use_cache=False, **last_logits_only(model.hf))
        for row, sample in enumerate(batch_samples):
            where = batch.layout.image_positions(row)
            if where.numel() == 0:
                raise MmlensError(f"sample {sample.id!r}: the model placed no image tokens")
            # (layers, [heads,] [positions,] keys): the asked prompt rows of every layer
            probs = torch.stack([captured[s][row].float().cpu() for s in sites])
            if shares:  # (layers, heads[, positions]): the image tokens' mass of the last row, before renormalising
                found["shares"].append((probs[..., -1, :] if positions > 1 else probs)[..., where].sum(-1).numpy())
            probs = probs[..., where] if keys == "image" else probs
            if positions > 1:  # (layers, heads, positions, keys) -> (positions, layers, heads)
                found["positions"].append(_entropy(probs).permute(2, 0, 1).numpy())
                probs = probs[:, :, -1]
            if keep_heads:
                found["heads"].append(_entropy(probs).numpy())
                probs = probs.mean(1)
            found["layers"].append(_entropy(probs).numpy())
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
    return EntropyTable(ids, np.stack(found["layers"]), np.stack(found["heads"]) if per_head else None,
                        np.stack(found["positions"]) if positions > 1 else None,
                        np.stack(found["shares"]) if shares else None)


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
    refined: np.ndarray | None = None  # with refine: each row's log ratio over every unit (flagged against kept)

    def summary(self) -> dict:
        """JSON-ready summary (no per-sample arrays)."""
        return {"samples": len(self.ids), "kept": len(self.kept), "removed": len(self.removed),
                "units": self.units, "separation": self.separation,
                "sensitive": [self.names[i] for i in self.sensitive], "note": self.note,
                "score_mixture": self.score_fit.to_json() if self.score_fit else None,
                "max_gap": max((f.gap() for f in self.fits), default=0.0), **self.extra}


COMBINE = ("mean", "zmean", "min")


def _combine(matrix: np.ndarray, sensitive: list[int], fits: list[MixtureFit], combine: str) -> np.ndarray:
    """One score per sample from the sensitive units: their mean (published), or z-scores against each unit's
    high (clean) component."""
    chosen = matrix[:, sensitive]
    if combine == "mean":
        return chosen.mean(1)
    # "zmean"/"min": units on different scales weigh alike, measured against their clean (high) component
    mu = np.array([fits[j].means[1] for j in sensitive])
    sd = np.array([fits[j].sigmas[1] for j in sensitive])
    z = (chosen - mu) / sd
    return z.mean(1) if combine == "zmean" else z.min(1)


def bye_filter(entropy: np.ndarray | EntropyTable, ids: Sequence[str] | None = None, *,
               separation: float = SEPARATION, units: str = "layers", combine: str = "mean",
               threshold: float = 0.0, log: bool = False, fits: list[MixtureFit] | None = None,
               refine: bool = False) -> ByeResult:
    """BYE's decision on an ``(n, units)`` entropy matrix (or an :class:`EntropyTable`); no labels involved.

    The defaults are the published rule. mmlens' options: ``combine`` the
    sensitive units by ``"zmean"`` or ``"min"`` of their z-scores instead of the
    mean; ``threshold`` on the score mixture's log likelihood ratio (low
    component against high; 0 is posterior 0.5); ``log`` fits every mixture to
    log-entropies. ``fits`` reuses the per-unit mixtures of an earlier call on
    the same matrix (and ``log``), so that a sweep over the other settings fits them once.
    ``refine`` starts from the published split (posterior 0.5) and refines it
    over every unit at once (:func:`~mmlens.audit.backdoor_mixture.refine_split`,
    a shared-covariance mixture), reading each head's image share too when the
    table has them (``attention_entropies(..., shares=True)``); ``threshold``
    then cuts the refined log ratio.
    It runs only where BYE found a sensitive unit, so "no backdoor" stays "nothing removed".

    Example:
        >>> bye_filter(np.full((10, 3), 2.0), [str(i) for i in range(10)]).note
        'no sensitive layer (largest gap 0.00 <= 2.0): nothing removed'
    """
    shares = None
    if isinstance(entropy, EntropyTable):
        ids = entropy.ids
        matrix, names = entropy.units(units)
        if entropy.shares is not None:
            shares = entropy.shares.reshape(len(ids), -1).astype(np.float64)
    else:
        matrix = np.asarray(entropy, np.float64)
        names = [f"L{i}" for i in range(matrix.shape[1])]
    ids = list(ids or [])
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise MmlensError(f"entropies of shape {matrix.shape} do not match {len(ids)} sample ids")
    if len(ids) < 4:
        raise MmlensError(f"BYE fits mixtures over samples: {len(ids)} are too few (at least 4)")
    if combine not in COMBINE:
        raise MmlensError(f"combine is one of {', '.join(COMBINE)}, got {combine!r}")
    if log:
        matrix = np.log(np.clip(matrix, 1e-6, None))  # entropies are >= 0; a one-token row has 0
    if fits is None:
        fits = fit_mixtures(matrix)
    elif len(fits) != matrix.shape[1]:
        raise MmlensError(f"{len(fits)} mixtures given for {matrix.shape[1]} units")
    sensitive = [j for j, f in enumerate(fits) if f.gap() > separation]
    unit_word = "layer" if units == "layers" else "head"
    settings = {"combine": combine, "threshold": threshold, "log": log, "refine": refine}
    if not sensitive:
        gap = max(f.gap() for f in fits)
        return ByeResult(ids, list(ids), [], None, fits, names, [], None, separation, units,
                         note=f"no sensitive {unit_word} (largest gap {gap:.2f} <= {separation}): nothing removed",
                         extra=settings)
    scores = _combine(matrix, sensitive, fits, combine)
    score_fit = fit_mixture(scores)
    refined = None
    if refine:
        start = score_fit.low_cluster(scores, 0.0)
        settings["refine_start"] = int(start.sum())
        features = matrix if shares is None else np.concatenate([matrix, shares], 1)
        settings["refine_shares"] = shares is not None
        refined = refine_split(features, start) if 0 < start.sum() < len(start) else np.where(start, np.inf, -np.inf)
        low = refined > threshold
    else:
        low = score_fit.low_cluster(scores, threshold)
    removed = [i for i, flag in zip(ids, low) if flag]
    kept = [i for i, flag in zip(ids, low) if not flag]
    note = f"{len(sensitive)} sensitive {unit_word}{'s' if len(sensitive) > 1 else ''}; removed {len(removed)}"
    if refine:
        read = f"all {matrix.shape[1]} {unit_word}s" + (" and their image shares" if shares is not None else "")
        note += f" (refined over {read} from {settings['refine_start']})"
    return ByeResult(ids, kept, removed, scores, fits, names, sensitive, score_fit, separation, units, note=note,
                     extra=settings, refined=refined)


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
