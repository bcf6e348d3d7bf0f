"""SAE-V: cross-modal latents and a per-sample image-text alignment score, for data filtering.

The published recipe (Lou et al., ICML 2025, "SAE-V"), every number a named parameter:

1. each token's top ``top_latents`` (50) latents;
2. each latent's top ``top_tokens`` (30) tokens over the data (among the tokens
   whose top latents hold it);
3. a latent with at least ``min_per_modality`` (5) text and 5 image tokens among
   them scores the mean pairwise cosine between the residuals (the SAE's
   input) of its top ``pairs`` (5) text and top 5 image tokens; other latents score 0;
4. a sample scores the sum of its latents' scores.

"Its latents" (step 4) is ``within="both"`` by default: latents among the top
latents of at least one of the sample's image tokens **and** one of its text
tokens, i.e. the cross-modal latents the sample's image and text share; a
misaligned pair shares fewer. ``within="any"`` sums every latent any of its
tokens holds. Special tokens count as neither modality.

Example:
    >>> scores = sae_v_scores(sae, Store.open("store/"))  # doctest: +SKIP
    >>> kept, removed = keep_top(scores.sample_ids, scores.sample_scores, 0.5)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from mmlens.errors import MmlensError
from mmlens.sae.codes import Codes, encode_store

if TYPE_CHECKING:
    from mmlens.store import Store

WITHIN = ("both", "any")


@dataclass
class SaeVParams:
    """The recipe's numbers (defaults: the published ones)."""

    top_latents: int = 50
    top_tokens: int = 30
    min_per_modality: int = 5
    pairs: int = 5
    within: str = "both"

    def check(self) -> None:
        if self.within not in WITHIN:
            raise MmlensError(f"within is one of {', '.join(WITHIN)} (got {self.within!r})")
        if min(self.top_latents, self.top_tokens, self.min_per_modality, self.pairs) < 1:
            raise MmlensError("top_latents, top_tokens, min_per_modality and pairs are at least 1")
        if self.pairs > self.min_per_modality:
            raise MmlensError(f"pairs ({self.pairs}) cannot exceed min_per_modality ({self.min_per_modality})")
        if 2 * self.min_per_modality > self.top_tokens:
            raise MmlensError(f"top_tokens ({self.top_tokens}) must hold min_per_modality of each modality "
                              f"({self.min_per_modality})")


@dataclass
class SaeVScores:
    """Per-latent cross-modal scores and per-sample sums."""

    latent_scores: torch.Tensor  # (d_sae,) 0 for latents that are not cross-modal
    cross_modal: torch.Tensor  # (d_sae,) bool: passed step 3's test
    sample_ids: list[str]
    sample_scores: np.ndarray
    params: SaeVParams = field(default_factory=SaeVParams)

    def to_json(self) -> dict[str, Any]:
        return {"params": vars(self.params), "cross_modal_latents": int(self.cross_modal.sum()),
                "samples": {s: round(float(v), 6) for s, v in zip(self.sample_ids, self.sample_scores)}}


def sae_v_scores(sae: Any, store: "Store", site: str | None = None, params: SaeVParams | None = None, *,
                 codes: Codes | None = None, batch_size: int = 4096) -> SaeVScores:
    """SAE-V scores of every latent and every sample of ``store`` (see the module's recipe).

    Example:
        >>> s = sae_v_scores(sae, store, params=SaeVParams(within="any"))  # doctest: +SKIP
        >>> len(s.sample_ids) == len(set(store.tokens.column("sample_id").to_pylist()))  # doctest: +SKIP
        True
    """
    params = params or SaeVParams()
    params.check()
    codes = codes if codes is not None else encode_store(sae, store, site, top=params.top_latents,
                                                         batch_size=batch_size)
    if codes.latents.shape[1] > params.top_latents:  # codes kept more latents than step 1 asks
        codes = Codes(codes.site, codes.index, codes.latents[:, :params.top_latents],
                      codes.values[:, :params.top_latents], codes.d_sae)
    frame = store.tokens.select(["sample_id", "modality"]).to_pandas().iloc[codes.index]
    modality = frame["modality"].to_numpy()
    latent_scores, cross = latent_cross_scores(codes, modality, lambda rows: store.read(codes.site, rows), params)
    ids, scores = sample_sums(codes, frame["sample_id"].astype(str).to_numpy(), modality, latent_scores,
                              params.within)
    return SaeVScores(latent_scores, cross, ids, scores, params)


def latent_cross_scores(codes: Codes, modality: np.ndarray, read: Any,
                        params: SaeVParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3: each latent's cross-modal score (0 when it fails the modality test) and the pass mask.

    ``read(rows)`` returns the residuals ``(len(rows), d)`` of coded rows
    (positions into ``codes``).
    """
    token, latent, value = _pairs(codes)
    order = np.lexsort((-value, latent))  # by latent, strongest token first
    token, latent, value = token[order], latent[order], value[order]
    starts = np.searchsorted(latent, np.arange(codes.d_sae))
    rank = np.arange(len(latent)) - starts[latent]
    top = rank < params.top_tokens
    token, latent = token[top], latent[top]
    is_text, is_image = modality[token] == "text", modality[token] == "image"
    n_text = np.bincount(latent[is_text], minlength=codes.d_sae)
    n_image = np.bincount(latent[is_image], minlength=codes.d_sae)
    passed = (n_text >= params.min_per_modality) & (n_image >= params.min_per_modality)
    scores = torch.zeros(codes.d_sae)
    chosen = np.flatnonzero(passed)
    if len(chosen):
        text_rows = _first_per_latent(token[is_text], latent[is_text], chosen, params.pairs)
        image_rows = _first_per_latent(token[is_image], latent[is_image], chosen, params.pairs)
        rows = np.concatenate([text_rows.ravel(), image_rows.ravel()])
        x = torch.nn.functional.normalize(read(codes.index[rows]).float(), dim=-1)
        t = x[:text_rows.size].reshape(len(chosen), params.pairs, -1)
        i = x[text_rows.size:].reshape(len(chosen), params.pairs, -1)
        scores[torch.from_numpy(chosen)] = torch.einsum("lpd,lqd->lpq", t, i).mean((1, 2))
    return scores, torch.from_numpy(passed)


def sample_sums(codes: Codes, sample_ids: np.ndarray, modality: np.ndarray, latent_scores: torch.Tensor,
                within: str = "both") -> tuple[list[str], np.ndarray]:
    """Step 4: each sample's sum of its latents' scores (``within``: see the module), samples in first-seen order.

    Example:
        >>> import torch
        >>> codes = Codes("s", np.arange(3), torch.tensor([[0], [0], [1]]), torch.ones(3, 1), d_sae=2)
        >>> sample_sums(codes, np.array(["a", "a", "b"]), np.array(["image", "text", "text"]),
        ...             torch.tensor([0.5, 0.25]))
        (['a', 'b'], array([0.5, 0. ]))
    """
    names, first = np.unique(sample_ids, return_index=True)
    names = names[np.argsort(first)]
    code = {name: i for i, name in enumerate(names)}
    sample = np.array([code[s] for s in sample_ids], dtype=np.int64)
    token, latent, _ = _pairs(codes)
    key = sample[token] * codes.d_sae + latent
    if within == "both":
        held = np.intersect1d(np.unique(key[modality[token] == "image"]), np.unique(key[modality[token] == "text"]))
    elif within == "any":
        held = np.unique(key)
    else:
        raise MmlensError(f"within is one of {', '.join(WITHIN)} (got {within!r})")
    weights = latent_scores.double().numpy()[held % codes.d_sae]
    return [str(n) for n in names], np.bincount(held // codes.d_sae, weights=weights, minlength=len(names))


def keep_top(sample_ids: Sequence[str], scores: np.ndarray, keep: float) -> tuple[list[str], list[str]]:
    """The ``keep`` fraction of samples with the highest scores, and the rest (ties broken by id order).

    Example:
        >>> keep_top(["a", "b", "c", "d"], np.array([0.1, 0.9, 0.5, 0.2]), 0.5)
        (['b', 'c'], ['d', 'a'])
    """
    if not 0 < keep <= 1:
        raise MmlensError(f"keep is a fraction in (0, 1] (got {keep})")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    n = int(round(keep * len(order)))
    return [sample_ids[i] for i in order[:n]], [sample_ids[i] for i in order[n:]]


def _pairs(codes: Codes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coded row, latent, value) of every active entry of the codes."""
    active = (codes.values > 0).numpy()
    token = np.nonzero(active)[0]
    return token, codes.latents.numpy()[active].astype(np.int64), codes.values.numpy()[active]


def _first_per_latent(token: np.ndarray, latent: np.ndarray, chosen: np.ndarray, n: int) -> np.ndarray:
    """For each latent in ``chosen``, its first ``n`` tokens (input sorted by latent, strongest first): (L, n)."""
    starts = np.searchsorted(latent, chosen)
    return token[starts[:, None] + np.arange(n)[None, :]]


__all__ = ["SaeVParams", "SaeVScores", "WITHIN", "keep_top", "latent_cross_scores", "sae_v_scores", "sample_sums"]
