"""Data selection after PRISM: drop the training samples whose image looks most like the rest of the corpus.

For each sample with an image, one forward pass up to a shallow decoder
layer (the forward stops there): the image tokens' hidden states at that
layer (``lm.L{i}.resid``) are mean-pooled into one vector ``x_i`` (fp32).
The vectors are centred by the corpus mean and normalised,
``z_i = (x_i - mean) / |x_i - mean|``, and the redundancy of sample ``i`` is
its mean cosine similarity to every other sample,
``(z_i . sum_j z_j - 1) / (N - 1)``: one sum and one matrix-vector product,
O(N d), never an N x N matrix. The least redundant ``keep`` fraction of the
image samples is kept; text-only samples are always kept (they are not scored).

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 8)); x[:10] = x[0]  # ten copies of one sample
    >>> result = prism_select(x, [f"s{i}" for i in range(50)], keep=0.5)
    >>> any(f"s{i}" in result.kept for i in range(10))
    False
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.hooks import intervene
from mmlens.model import Model


class _Enough(Exception):
    """Raised by the hook at the scoring layer: nothing after it is needed."""


@dataclass
class PooledTable:
    """Mean-pooled image-token hidden states: ``vectors`` is ``(n, d)`` for ``ids``; ``text_only`` were not scored."""

    ids: list[str]
    vectors: np.ndarray
    layer: int
    text_only: list[str] = field(default_factory=list)


def shallow_layer(n_layers: int) -> int:
    """The default scoring layer: a quarter of the way up the decoder (L1 of 4, L8 of 32).

    Example:
        >>> shallow_layer(4), shallow_layer(32)
        (1, 8)
    """
    return n_layers // 4


def scoring_layer(model: Model, layer: int | None = None) -> int:
    """``layer``, or the default :func:`shallow_layer`, checked against the model's decoder layers.

    Example:
        >>> scoring_layer(mmlens.load("tiny-llava"))  # doctest: +SKIP
        0
    """
    layer = shallow_layer(model.n_layers) if layer is None else layer
    if not 0 <= layer < model.n_layers:
        raise MmlensError(f"layer {layer} is out of range: {model.name} has decoder layers 0-{model.n_layers - 1}")
    return layer


def pooled_image_states(model: Model, samples: Iterable[Sample], *, layer: int | None = None,
                        batch_size: int = 16, progress: Callable[[int], None] | None = None) -> PooledTable:
    """Mean of the image tokens' residual stream after decoder layer ``layer``, per sample with an image.

    The forward pass stops at that layer. Samples without an image are listed
    in ``text_only``; a dataset with no image at all, or a text-only model, is an error.

    Example:
        >>> table = pooled_image_states(mmlens.load("shapes-llava"), open_reader("shapes:val[0:4]"))  # doctest: +SKIP
        >>> table.vectors.shape  # doctest: +SKIP
        (4, 128)
    """
    if not model.adapter.multimodal:
        raise MmlensError(f"{model.name} is a text-only model: PRISM scores image tokens")
    layer = scoring_layer(model, layer)
    site = f"lm.L{layer}.resid"
    ids: list[str] = []
    rows: list[np.ndarray] = []
    text_only: list[str] = []

    def run(batch_samples: list[Sample]) -> None:
        batch = model.prepare([s.prompt for s in batch_samples], [[s.image] for s in batch_samples])
        seen: list[torch.Tensor] = []

        def stop(value: torch.Tensor) -> None:
            seen.append(value[0] if isinstance(value, tuple) else value)
            raise _Enough

        with torch.no_grad(), intervene(model, {site: stop}):
            try:
                model.forward(batch, use_cache=False)
            except _Enough:
                pass
        if not seen:
            raise MmlensError(f"{model.name}: the forward pass never reached {site}")
        hidden = seen[0]
        for row, sample in enumerate(batch_samples):
            where = batch.layout.image_positions(row)
            if where.numel() == 0:
                raise MmlensError(f"sample {sample.id!r}: the model placed no image tokens")
            rows.append(hidden[row, where.to(hidden.device)].float().mean(0).cpu().numpy())
            ids.append(sample.id)
        if progress is not None:
            progress(len(batch_samples))

    def with_images() -> Iterator[Sample]:
        for sample in samples:
            if getattr(sample, "image", None) is not None:
                yield sample
                continue
            text_only.append(sample.id)
            if progress is not None:
                progress(1)

    for chunk in batched(with_images(), batch_size):
        run(list(chunk))
    check_scored(ids, text_only)
    return PooledTable(ids, np.stack(rows), layer, text_only)


def check_scored(ids: Sequence[str], text_only: Sequence[str]) -> None:
    """One line when no sample had an image to score (all text-only, or no samples at all).

    Example:
        >>> check_scored(["a"], [])
    """
    if not ids:
        what = f"its {len(text_only)} samples are all text-only" if text_only else "it has no samples"
        raise MmlensError(f"the data has no images to score ({what}): PRISM ranks samples by their image")


def batched(items: Iterable, size: int) -> Iterator[tuple]:
    """Consecutive tuples of ``size`` items, the last one shorter (``itertools.batched`` before Python 3.12).

    Example:
        >>> list(batched(range(5), 2))
        [(0, 1), (2, 3), (4,)]
    """
    it = iter(items)
    while chunk := tuple(islice(it, size)):
        yield chunk


def redundancy(vectors: np.ndarray) -> np.ndarray:
    """Each row's mean cosine similarity to every other row, after centring by the mean: O(N d), no N x N matrix.

    Example:
        >>> r = redundancy(np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]]))
        >>> bool(r[0] > r[2])
        True
    """
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise MmlensError(f"redundancy needs at least 2 vectors in an (n, d) array, got shape {x.shape}")
    z = x - x.mean(0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)  # a sample at the mean has no direction
    # z_i . sum_j z_j counts z_i . z_i (1, or 0 for a zero vector) once: take it out
    return (z @ z.sum(0) - (z * z).sum(1)) / (len(z) - 1)


@dataclass
class PrismResult:
    """What the selection decided: kept and removed ids and every scored sample's redundancy."""

    ids: list[str]
    scores: np.ndarray
    kept: list[str]
    removed: list[str]
    keep: float
    text_only: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready summary (no per-sample arrays)."""
        s = self.scores
        return {"scored": len(self.ids), "text_only": len(self.text_only), "keep": self.keep,
                "kept": len(self.kept), "removed": len(self.removed),
                "redundancy": {"min": float(s.min()), "median": float(np.median(s)), "max": float(s.max())},
                "threshold": float(s[[self.ids.index(i) for i in self.removed]].min()) if self.removed else None}


def check_keep(keep: float) -> None:
    """One line for a ``keep`` fraction outside (0, 1]."""
    if not (isinstance(keep, (int, float)) and 0 < keep <= 1) or math.isnan(keep):
        raise MmlensError(f"--keep is the fraction of samples to keep, in (0, 1]; got {keep}")


def prism_select(vectors: np.ndarray | PooledTable, ids: Sequence[str] | None = None, *, keep: float = 0.3,
                 text_only: Sequence[str] = ()) -> PrismResult:
    """Keep the least redundant ``keep`` fraction (rounded, at least one) of the scored samples, plus every text-only one.

    Ties go to the earlier sample. ``vectors`` may be a :class:`PooledTable` (its ids and text-only samples used).

    Example:
        >>> x = np.eye(4)[[0, 0, 0, 1, 2, 3]]
        >>> prism_select(x, list("abcdef"), keep=0.5, text_only=["t"]).kept
        ['d', 'e', 'f', 't']
    """
    check_keep(keep)
    if isinstance(vectors, PooledTable):
        ids, text_only, vectors = vectors.ids, vectors.text_only, vectors.vectors
    ids = list(ids or [])
    if len(ids) != len(vectors):
        raise MmlensError(f"{len(vectors)} vectors do not match {len(ids)} sample ids")
    scores = redundancy(vectors)
    n_keep = max(1, min(len(ids), round(keep * len(ids))))
    order = np.argsort(scores, kind="stable")
    chosen = np.zeros(len(ids), bool)
    chosen[order[:n_keep]] = True
    kept = [i for i, c in zip(ids, chosen) if c] + list(text_only)
    removed = [i for i, c in zip(ids, chosen) if not c]
    return PrismResult(ids, scores, kept, removed, keep, list(text_only))
