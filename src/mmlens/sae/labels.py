"""Automatic latent labels: the shapes-world concept that best predicts where a latent fires.

A *concept* is a yes/no fact about a token that the shapes world knows for
certain:

- ``colour:red@image`` / ``shape:circle@image``: an image patch that an
  object of that colour (shape) covers (at least a quarter of the patch,
  :func:`mmlens.data.shapes.patch_labels`' rule);
- ``colour:red`` / ``shape:circle``: the same patches **or** a text token
  of that word (a cross-modal concept);
- ``position:left@image`` (right, top, bottom): a patch of an object whose
  centre lies in that half of the image;
- ``answer:red``: the last token of a sample whose answer is ``red`` (the
  position that predicts the answer);
- ``word:how``: a text token of that word.

:func:`label_latents` picks, for each latent, the concept with the best F1
on one half of the samples, and reports that concept's precision and recall
on the other, held-out half. "Fires" is the activation above a cut-off,
chosen with the concept on the fit half among ``fractions`` (0, 10%, 25%,
50%, 75%) of the latent's largest fit-half activation: a TopK latent's
weakest activations are mostly noise, and a dense latent often means its
concept only when it fires strongly.

Example:
    >>> table = ConceptTable(["colour:red@image"], np.array([[True], [False], [True]]),
    ...                      np.array(["a", "a", "b"]), np.ones(3, bool))
    >>> fires = torch.tensor([[1.0], [0.0], [2.0]])
    >>> best = label_activations(fires, table, [7], held_out={"b"})[0]
    >>> best.concept, best.precision, best.recall
    ('colour:red@image', 1.0, 1.0)
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch

from mmlens.errors import MmlensError

if TYPE_CHECKING:
    from mmlens.sae.codes import Codes

GRID_COVER = 0.25  # a patch belongs to an object covering at least this share of it (patch_labels' rule)


@dataclass
class ConceptTable:
    """``truth[i, c]``: token ``i`` has concept ``names[c]``; ``known[i]``: its sample has ground truth."""

    names: list[str]
    truth: np.ndarray  # (tokens, concepts) bool
    sample_ids: np.ndarray  # (tokens,) str
    known: np.ndarray  # (tokens,) bool


@dataclass
class LatentLabel:
    """A latent's best concept (chosen on the fit half) and how well it predicts the latent on the held-out half."""

    latent: int
    concept: str | None
    precision: float  # held out: P(concept | fires)
    recall: float  # held out: P(fires | concept)
    f1: float
    fit_f1: float
    fires: int  # held-out tokens where the latent fires
    support: int  # held-out tokens with the concept
    threshold: float = 0.0  # the latent fires above this (chosen on the fit half)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """One line, e.g. ``colour:red@image (precision 0.97, recall 0.88, held out)``."""
        if self.concept is None:
            return "no concept (the latent never fires on the fit half)"
        return f"{self.concept} (precision {self.precision:.2f}, recall {self.recall:.2f}, held out)"


FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75)


def concept_table(tokens: Any, load: Callable[[str, int], Any]) -> ConceptTable:
    """The concepts of every token of a store's token table (a pandas DataFrame or pyarrow table).

    ``load(shard, sample)`` returns the token's sample (see
    :func:`mmlens.sae.codes.store_samples`); samples without shapes-world
    objects (``objects`` attribute) are marked unknown and never scored.

    Example:
        >>> from mmlens.sae.codes import store_samples
        >>> table = concept_table(store.tokens, store_samples(store))  # doctest: +SKIP
        >>> table.names[:2]  # doctest: +SKIP
        ['colour:red@image', 'colour:green@image']
    """
    from mmlens.data.shapes import COLOURS, SHAPES

    frame = tokens.to_pandas() if hasattr(tokens, "to_pandas") else tokens
    words = sorted(set(frame.loc[frame["modality"] == "text", "token"].astype(str)))
    names = ([f"colour:{c}@image" for c in COLOURS] + [f"shape:{s}@image" for s in SHAPES]
             + [f"colour:{c}" for c in COLOURS] + [f"shape:{s}" for s in SHAPES]
             + [f"position:{p}@image" for p in ("left", "right", "top", "bottom")])
    n = len(frame)
    truth = np.zeros((n, len(names)), dtype=bool)
    known = np.zeros(n, dtype=bool)
    answers: dict[str, np.ndarray] = {}
    column = {name: i for i, name in enumerate(names)}
    positions = frame["position"].to_numpy()
    for (shard, sample), rows in frame.groupby(["shard", "sample"], sort=False).indices.items():
        item = load(shard, int(sample))
        if getattr(item, "objects", None) is None:
            continue
        known[rows] = True
        _image_concepts(frame, rows, item, truth, column)
        last = rows[np.argmax(positions[rows])]
        if item.answer is not None:
            answers.setdefault(f"answer:{item.answer}", np.zeros(n, dtype=bool))[last] = True
    text = (frame["modality"] == "text").to_numpy()
    token = frame["token"].astype(str).to_numpy()
    for kind, values in (("colour", list(COLOURS)), ("shape", list(SHAPES))):
        for value in values:  # the cross-modal concept: the patches or the word
            truth[:, column[f"{kind}:{value}"]] = truth[:, column[f"{kind}:{value}@image"]] | (text & (token == value))
    extra = [answers[a] for a in sorted(answers)] + [text & (token == w) for w in words]
    names += sorted(answers) + [f"word:{w}" for w in words]
    if extra:
        truth = np.concatenate([truth, np.stack(extra, 1)], 1)
    return ConceptTable(names, truth, frame["sample_id"].astype(str).to_numpy(), known)


def _image_concepts(frame: Any, rows: np.ndarray, item: Any, truth: np.ndarray, column: dict[str, int]) -> None:
    """Mark colour, shape and position concepts on the image-patch rows of one sample."""
    image = rows[(frame["modality"].to_numpy()[rows] == "image") & (frame["image"].to_numpy()[rows] == 0)]
    if not len(image) or not item.objects:
        return
    r = frame["patch_row"].to_numpy()[image].astype(int)
    c = frame["patch_col"].to_numpy()[image].astype(int)
    grid = int(max(r.max(), c.max())) + 1
    height, width = item.objects[0].mask.shape
    if height % grid or width % grid:
        return  # the patch grid does not tile the image: no honest patch truth
    ph, pw = height // grid, width // grid
    best = np.full((grid, grid), GRID_COVER * ph * pw - 1e-9)
    owner = np.full((grid, grid), -1)
    for k, obj in enumerate(item.objects):
        cover = obj.mask.reshape(grid, ph, grid, pw).sum(axis=(1, 3))
        win = cover > best
        best, owner = np.where(win, cover, best), np.where(win, k, owner)
    for row, patch_r, patch_c in zip(image, r, c):
        k = owner[patch_r, patch_c]
        if k < 0:
            continue
        obj = item.objects[k]
        truth[row, column[f"colour:{obj.colour}@image"]] = True
        truth[row, column[f"shape:{obj.shape}@image"]] = True
        x0, y0, x1, y1 = obj.box
        truth[row, column["position:left@image" if (x0 + x1) / 2 < width / 2 else "position:right@image"]] = True
        truth[row, column["position:top@image" if (y0 + y1) / 2 < height / 2 else "position:bottom@image"]] = True


def split_held_out(sample_ids: Iterable[str], fraction: float = 0.5) -> set[str]:
    """A fixed ``fraction`` of the sample ids, chosen by a hash of the id (the same ids, the same split).

    Example:
        >>> len(split_held_out([f"s{i}" for i in range(1000)]))
        500
    """
    return {s for s in set(sample_ids) if (zlib.crc32(s.encode()) % 1000) < fraction * 1000}


def label_latents(codes: "Codes", table: ConceptTable, latents: Sequence[int], *,
                  fractions: Sequence[float] = FRACTIONS, held_out: set[str] | None = None) -> list[LatentLabel]:
    """The best concept of each latent in ``latents`` (chosen on the fit half, scored on the held-out half).

    ``codes`` and ``table`` describe the same tokens in the same order.

    Example:
        >>> labels = label_latents(codes, table, [3, 17])  # doctest: +SKIP
        >>> labels[0].text()  # doctest: +SKIP
        'colour:red@image (precision 0.97, recall 0.88, held out)'
    """
    if len(codes) != len(table.sample_ids):
        raise MmlensError(f"{len(codes)} coded tokens but {len(table.sample_ids)} rows of concepts")
    return label_activations(codes.dense(list(latents)), table, latents, fractions=fractions, held_out=held_out)


def label_activations(acts: torch.Tensor, table: ConceptTable, latents: Sequence[int], *,
                      fractions: Sequence[float] = FRACTIONS, held_out: set[str] | None = None) -> list[LatentLabel]:
    """:func:`label_latents` on dense activations ``(tokens, len(latents))``."""
    held_out = split_held_out(table.sample_ids) if held_out is None else set(held_out)
    test = np.isin(table.sample_ids, list(held_out)) & table.known
    fit = ~np.isin(table.sample_ids, list(held_out)) & table.known
    if not fit.any() or not test.any():
        raise MmlensError("labels need samples with shapes-world ground truth on both the fit and held-out halves")
    acts = acts.float().numpy()
    peak = np.where(fit[:, None], acts, 0.0).max(0)  # (latents,) largest fit-half activation
    best_f1 = np.full(len(latents), -1.0)
    best_concept = np.zeros(len(latents), dtype=np.int64)
    best_cut = np.zeros(len(latents))
    for fraction in fractions:  # the cut-off and the concept are chosen together, on the fit half only
        cut = fraction * peak
        scores = _f1(acts[fit] > cut, table.truth[fit])  # (latents, concepts)
        concept, f1 = scores.argmax(1), scores.max(1)
        better = f1 >= best_f1  # a tie goes to the stricter cut-off
        best_f1, best_concept, best_cut = (np.where(better, f1, best_f1), np.where(better, concept, best_concept),
                                           np.where(better, cut, best_cut))
    fires = acts[test] > best_cut
    tp = (fires & table.truth[test][:, best_concept]).sum(0)
    n_fire, n_true = fires.sum(0), table.truth[test].sum(0)[best_concept]
    out = []
    for i, latent in enumerate(latents):
        if peak[i] <= 0:
            out.append(LatentLabel(int(latent), None, 0.0, 0.0, 0.0, 0.0, int(fires[:, i].sum()), 0))
            continue
        p, r = tp[i] / max(n_fire[i], 1), tp[i] / max(n_true[i], 1)
        out.append(LatentLabel(int(latent), table.names[best_concept[i]], round(float(p), 4), round(float(r), 4),
                               round(float(2 * p * r / max(p + r, 1e-12)), 4), round(float(best_f1[i]), 4),
                               int(n_fire[i]), int(n_true[i]), round(float(best_cut[i]), 6)))
    return out


def _f1(fires: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """F1 of every (latent, concept) pair: 2 tp / (fires + true)."""
    tp = fires.T.astype(np.float64) @ truth.astype(np.float64)
    return 2 * tp / np.maximum(fires.sum(0)[:, None] + truth.sum(0)[None, :], 1)


__all__ = ["FRACTIONS", "ConceptTable", "LatentLabel", "concept_table", "label_activations", "label_latents",
           "split_held_out"]
