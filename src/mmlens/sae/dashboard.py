"""What a latent dashboard shows, as data: top image patches, top text tokens in context, histogram, mix, logits.

:func:`build_dashboards` reads an SAE's codes over an activation store
(:func:`mmlens.sae.codes.encode_store`) and returns one
:class:`LatentDashboard` per latent; :mod:`mmlens.report.sae_pages` renders
them as HTML. Nothing here runs the model: the unembedding is passed in
(:func:`unembedding_of` reads it off a loaded model).

Example:
    >>> from mmlens.sae import SparseAutoencoder
    >>> from mmlens.store import Store
    >>> boards = build_dashboards(sae, Store.open("store/"), latents=[3, 17])  # doctest: +SKIP
    >>> boards[0].top_images[0].patch  # doctest: +SKIP
    (2, 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from mmlens.errors import MmlensError
from mmlens.sae.codes import Codes, encode_store
from mmlens.sae.labels import LatentLabel

if TYPE_CHECKING:
    from mmlens.model import Model
    from mmlens.sae.labels import ConceptTable
    from mmlens.store import Store

MODALITIES = ("image", "text", "special")


@dataclass
class ImageExample:
    """One sample's strongest patch for the latent, and the latent over that image's patch grid (``heat``)."""

    sample_id: str
    shard: str
    sample: int
    value: float
    patch: tuple[int, int]  # (row, col) of the strongest patch
    heat: np.ndarray  # (grid rows, grid cols) activation on every patch of that image view


@dataclass
class TextExample:
    """A text token where the latent fires, with the tokens around it and the latent on each."""

    sample_id: str
    value: float
    position: int
    tokens: list[str]
    values: list[float]
    focus: int  # index of the token itself in ``tokens``


@dataclass
class LatentDashboard:
    """Everything one latent's page shows."""

    latent: int
    site: str
    fires: int  # tokens where the latent is active
    frequency: float  # fires / tokens
    modality_mix: dict[str, float]  # share of the firing tokens by modality
    histogram: tuple[list[int], list[float]]  # counts and bin edges of the non-zero activations
    top_images: list[ImageExample] = field(default_factory=list)
    top_texts: list[TextExample] = field(default_factory=list)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    label: LatentLabel | None = None


def unembedding_of(model: "Model") -> tuple[torch.Tensor, list[str]]:
    """The unembedding ``(vocab, d)`` with the final norm's gain folded in, and each token's text.

    A decoder direction ``d`` promotes token ``t`` by ``W[t] @ d`` (the
    norm's per-channel gain applies; its per-token scale does not change the order).

    Example:
        >>> import mmlens
        >>> W, words = unembedding_of(mmlens.load("shapes-llava"))
        >>> W.shape[0] == len(words)
        True
    """
    weight = model.module(model.adapter.unembed).weight.detach().float()
    norm = model.module(model.adapter.final_norm)
    gain = getattr(norm, "weight", None)
    if gain is not None:
        weight = weight * gain.detach().float()
    tokenizer = model.tokenizer
    words = [str(tokenizer.convert_ids_to_tokens(i)) for i in range(weight.shape[0])]
    return weight, words


def choose_latents(codes: Codes, n: int = 32) -> list[int]:
    """The ``n`` latents that fire on the most tokens (dead ones never), most frequent first.

    Example:
        >>> choose_latents(codes, 2)  # doctest: +SKIP
        [17, 3]
    """
    counts = codes.firing_counts()
    order = torch.argsort(counts, descending=True, stable=True)
    return [int(j) for j in order[:n] if counts[j] > 0]


def build_dashboards(sae: Any, store: "Store", latents: Sequence[int] | None = None, *, codes: Codes | None = None,
                     unembedding: tuple[torch.Tensor, list[str]] | None = None,
                     concepts: "ConceptTable | None" = None, n_latents: int = 32, n_images: int = 8,
                     n_texts: int = 8, context: int = 6, n_logits: int = 8, bins: int = 24) -> list[LatentDashboard]:
    """One :class:`LatentDashboard` per latent (``latents``, or the ``n_latents`` most frequent ones).

    ``concepts`` (:func:`mmlens.sae.labels.concept_table` of the same store)
    adds the automatic label; ``unembedding`` (:func:`unembedding_of`) adds
    the promoted and suppressed tokens.

    Example:
        >>> boards = build_dashboards(sae, store, [3], n_images=4)  # doctest: +SKIP
        >>> len(boards[0].top_images) <= 4  # doctest: +SKIP
        True
    """
    codes = codes if codes is not None else encode_store(sae, store)
    if len(codes) != len(store):
        raise MmlensError("dashboards need the codes of every token of the store")
    chosen = list(latents) if latents is not None else choose_latents(codes, n_latents)
    bad = [j for j in chosen if not 0 <= int(j) < codes.d_sae]
    if bad:
        raise MmlensError(f"the SAE has {codes.d_sae} latents; there is no latent {bad[0]}")
    frame = store.tokens.to_pandas()
    acts = codes.dense(chosen).numpy()
    labels: dict[int, LatentLabel] = {}
    if concepts is not None:
        from mmlens.sae.labels import label_activations

        labels = {lab.latent: lab for lab in label_activations(torch.from_numpy(acts), concepts, chosen)}
    logits = _logits(sae, chosen, unembedding, n_logits) if unembedding is not None else {}
    modality = frame["modality"].to_numpy()
    out = []
    for i, j in enumerate(chosen):
        a = acts[:, i]
        active = a > 0
        counts, edges = np.histogram(a[active], bins=bins) if active.any() else (np.zeros(bins, int), np.zeros(bins + 1))
        mix = {m: float((active & (modality == m)).sum() / max(active.sum(), 1)) for m in MODALITIES}
        promoted, suppressed = logits.get(int(j), ([], []))
        out.append(LatentDashboard(int(j), codes.site, int(active.sum()), float(active.mean()) if len(a) else 0.0, mix,
                                   ([int(c) for c in counts], [float(e) for e in edges]),
                                   _top_images(frame, a, n_images), _top_texts(frame, a, n_texts, context),
                                   promoted, suppressed, labels.get(int(j))))
    return out


def _top_images(frame: Any, a: np.ndarray, n: int) -> list[ImageExample]:
    """The strongest image patch of each sample, the ``n`` strongest samples, with the latent over their grid."""
    image = (frame["modality"] == "image").to_numpy() & (a > 0)
    if not image.any():
        return []
    rows = np.flatnonzero(image)
    rows = rows[np.argsort(-a[rows], kind="stable")]
    key = frame["shard"].to_numpy().astype(str)
    sample = frame["sample"].to_numpy()
    seen, out = set(), []
    for row in rows:  # strongest first: the first patch met per sample is its best
        sid = (key[row], int(sample[row]))
        if sid in seen:
            continue
        seen.add(sid)
        out.append(_image_example(frame, a, int(row)))
        if len(out) == n:
            break
    return out


def _image_example(frame: Any, a: np.ndarray, row: int) -> ImageExample:
    at = frame.iloc[row]
    same = ((frame["shard"] == at["shard"]) & (frame["sample"] == at["sample"]) & (frame["image"] == at["image"])
            & (frame["view"] == at["view"]) & (frame["modality"] == "image")).to_numpy()
    rr = frame["patch_row"].to_numpy()[same].astype(int)
    cc = frame["patch_col"].to_numpy()[same].astype(int)
    heat = np.zeros((rr.max() + 1, cc.max() + 1), dtype=np.float32)
    heat[rr, cc] = a[same]
    return ImageExample(str(at["sample_id"]), str(at["shard"]), int(at["sample"]), float(a[row]),
                        (int(at["patch_row"]), int(at["patch_col"])), heat)


def _top_texts(frame: Any, a: np.ndarray, n: int, context: int) -> list[TextExample]:
    """The ``n`` strongest text tokens, each with ``context`` tokens either side of its own sample."""
    text = np.flatnonzero((frame["modality"] == "text").to_numpy() & (a > 0))
    text = text[np.argsort(-a[text], kind="stable")][:n]
    shard = frame["shard"].to_numpy().astype(str)
    sample = frame["sample"].to_numpy()
    position = frame["position"].to_numpy()
    token = frame["token"].astype(str).to_numpy()
    modality = frame["modality"].to_numpy()
    out = []
    for row in text:
        same = np.flatnonzero((shard == shard[row]) & (sample == sample[row]))
        same = same[np.argsort(position[same], kind="stable")]
        k = int(np.flatnonzero(same == row)[0])
        window = same[max(0, k - context):k + context + 1]
        words = ["<image>" if modality[w] == "image" else token[w] for w in window]
        out.append(TextExample(str(frame["sample_id"].iloc[row]), float(a[row]), int(position[row]), words,
                               [float(a[w]) for w in window], int(np.flatnonzero(window == row)[0])))
    return out


def _logits(sae: Any, latents: Sequence[int], unembedding: tuple[torch.Tensor, list[str]],
            n: int) -> dict[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    weight, words = unembedding
    with torch.no_grad():
        directions = sae.W_dec.detach().float()[list(latents)]  # (L, d)
        if directions.shape[1] != weight.shape[1]:
            raise MmlensError(f"the SAE writes {directions.shape[1]} dims but the unembedding reads {weight.shape[1]}")
        scores = directions @ weight.T  # (L, vocab)
    n = min(n, scores.shape[1])
    out = {}
    for i, j in enumerate(latents):
        up, down = scores[i].topk(n), (-scores[i]).topk(n)
        out[int(j)] = ([(words[t], round(float(v), 4)) for v, t in zip(up.values, up.indices)],
                       [(words[t], round(float(-v), 4)) for v, t in zip(down.values, down.indices)])
    return out


__all__ = ["ImageExample", "LatentDashboard", "TextExample", "build_dashboards", "choose_latents", "unembedding_of"]
