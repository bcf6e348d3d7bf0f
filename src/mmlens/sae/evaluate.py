"""How good an SAE is, per modality (image tokens, text tokens, all).

- :func:`reconstruction` over a store's rows: fraction of variance unexplained
  (FVU, ``sum |x - x_hat|^2 / sum |x - mean|^2``, the mean taken within the
  modality), L0 (latents firing per token), dead latents (never fire) and
  dense latents (fire on more than ``dense`` of the tokens);
- :func:`loss_recovered` through the model: the SAE's reconstruction is
  spliced in at its site (:func:`mmlens.hooks.intervene`) at the tokens of one
  modality, and the next-token loss of the answer (the position after the
  prompt, the only one the shapes models were trained on) is compared with
  the clean run and with the site zero-ablated at the same tokens:
  ``(L_zero - L_sae) / (L_zero - L_clean)``. When zero ablation moves the
  loss by less than :data:`MIN_GAP` nats either way (a model that answers as well
  without the site, or a loss already near 0), the ratio divides noise by
  noise: it is NaN (undefined) and :func:`undefined_recovery` says why.

Example:
    >>> stats = reconstruction(sae, SiteActivations("store/", sae.site))  # doctest: +SKIP
    >>> stats["image"]["fvu"], stats["all"]["l0"]  # doctest: +SKIP
    (0.04, 31.9)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

from mmlens.data.readers.base import images_of
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError
from mmlens.layout import Modality
from mmlens.models import runtime
from mmlens.sae.activations import SiteActivations
from mmlens.sae.model import SparseAutoencoder

SPLITS = ("image", "text", "all")


def check_width(sae: SparseAutoencoder, width: int, where: str) -> None:
    """One line when activations of ``width`` cannot go through ``sae``."""
    if width != sae.d_in:
        raise MmlensError(f"{where} has width {width} but the SAE's d_in is {sae.d_in}: it was trained on another "
                          "site or model")


@torch.no_grad()
def reconstruction(sae: SparseAutoencoder, acts: SiteActivations, dense: float = 0.1,
                   chunk: int = 8192) -> dict[str, dict[str, Any]]:
    """FVU, L0, dead and dense latents over every row of ``acts``, for image tokens, text tokens and all.

    Example:
        >>> reconstruction(sae, acts)["all"]["fvu"] < 0.1  # doctest: +SKIP
        True
    """
    check_width(sae, acts.width, f"the store's site {acts.site}")
    modality = acts.frame()["modality"].to_numpy()
    masks = {"image": torch.from_numpy(modality == "image"), "text": torch.from_numpy(modality == "text")}
    sums = {name: _Sums(sae.d_sae, acts.width) for name in SPLITS}
    for x, rows in acts.chunks(chunk):
        codes = sae.encode(x)
        error = (sae.decode(codes) - x).double().pow(2).sum(-1)
        for name in SPLITS:
            keep = slice(None) if name == "all" else masks[name][rows]
            sums[name].add(x[keep], error[keep], codes[keep] > 0)
    return {name: sums[name].result(dense) for name in SPLITS if sums[name].n}


class _Sums:
    """Running sums for one modality's FVU, L0 and firing counts (float64)."""

    def __init__(self, d_sae: int, width: int) -> None:
        self.n, self.error, self.square, self.l0 = 0, 0.0, 0.0, 0.0
        self.total = torch.zeros(width, dtype=torch.float64)
        self.fired = torch.zeros(d_sae, dtype=torch.long)

    def add(self, x: torch.Tensor, error: torch.Tensor, firing: torch.Tensor) -> None:
        x = x.double()
        self.n += x.shape[0]
        self.error += float(error.sum())
        self.square += float(x.pow(2).sum())
        self.total += x.sum(0)
        self.l0 += float(firing.sum())
        self.fired += firing.sum(0)

    def result(self, dense: float) -> dict[str, Any]:
        variance = self.square - float(self.total.pow(2).sum()) / self.n  # sum |x - mean|^2
        frequency = self.fired.double() / self.n
        return {"tokens": self.n, "fvu": self.error / max(variance, 1e-30), "l0": self.l0 / self.n,
                "dead": int((self.fired == 0).sum()), "dense": int((frequency > dense).sum()),
                "dead_fraction": float((self.fired == 0).double().mean())}


def answer_ids(model, samples: Sequence[Sample]) -> torch.Tensor:
    """The first token id of each sample's answer (as the model would write it after the prompt)."""
    tokenizer = model.tokenizer
    ids = []
    for sample in samples:
        if sample.answer is None:
            raise MmlensError(f"sample {sample.id} has no answer: loss recovered needs answered samples")
        token = tokenizer.convert_tokens_to_ids(sample.answer)
        if token is None or token == tokenizer.unk_token_id:  # sub-word vocabularies: the answer's first piece
            token = tokenizer(" " + sample.answer, add_special_tokens=False)["input_ids"][0]
        ids.append(int(token))
    return torch.tensor(ids)


#: Smallest zero-ablation gap ``|L_zero - L_clean|`` (nats, absolute) for which the loss recovered is defined:
#: 0.01 nats is a 1% change of perplexity, below run-to-run noise of a few hundred answers.
MIN_GAP = 0.01


@torch.no_grad()
def loss_recovered(model, sae: SparseAutoencoder, samples: Sequence[Sample], site: str | None = None,
                   splits: Sequence[str] = SPLITS, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> dict[str, dict[str, float]]:
    """Answer loss clean, with the SAE spliced in, and zero-ablated, per modality; and the loss recovered.

    The edit touches only the tokens of that modality (``all``: every real
    token); the loss is the mean cross-entropy of the answer's first token at
    the last prompt position. ``recovered`` is NaN when the gap is below
    :data:`MIN_GAP` (see :func:`undefined_recovery`).

    Example:
        >>> loss_recovered(model, sae, samples)["all"]["recovered"] > 0.9  # doctest: +SKIP
        True
    """
    from mmlens.hooks import intervene

    site = site or sae.site
    if not site:
        raise MmlensError("the SAE does not say its site: pass site=")
    samples = list(samples)
    totals = {name: {"sae": 0.0, "zero": 0.0} for name in splits}
    clean, n = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        batch = model.prepare([s.prompt for s in chunk], [images_of(s) for s in chunk])
        target = answer_ids(model, chunk).to(model.device)
        clean += _answer_loss(model, batch, target, nullcontext())
        for name in splits:
            where = _positions(batch, name)
            for kind in ("sae", "zero"):
                edit = _splice(sae, where) if kind == "sae" else _zero(where)
                totals[name][kind] += _answer_loss(model, batch, target, intervene(model, {site: edit}))
        n += len(chunk)
        if progress is not None:
            progress(len(chunk))
    result = {}
    for name in splits:
        l_clean, l_sae, l_zero = clean / n, totals[name]["sae"] / n, totals[name]["zero"] / n
        gap = l_zero - l_clean
        result[name] = {"clean_loss": l_clean, "sae_loss": l_sae, "zero_loss": l_zero,
                        "recovered": (l_zero - l_sae) / gap if abs(gap) >= MIN_GAP else float("nan"), "samples": n}
    return result


def undefined_recovery(name: str, losses: dict[str, float]) -> str | None:
    """Why the loss recovered of one split (``name``) is undefined, in one line; None when it is defined.

    Example:
        >>> undefined_recovery("all", {"clean_loss": 0.001, "sae_loss": 0.001, "zero_loss": 0.0012})
        'loss recovered (all) is undefined: zero ablation changes the loss by 0.0002 nats (< 0.01), nothing to recover'
    """
    gap = losses["zero_loss"] - losses["clean_loss"]
    if abs(gap) >= MIN_GAP:
        return None
    return (f"loss recovered ({name}) is undefined: zero ablation changes the loss by {gap:.4f} nats "
            f"(< {MIN_GAP:g}), nothing to recover")


def _positions(batch, name: str) -> torch.Tensor:
    """``(batch, seq)`` mask of the tokens a split edits."""
    modality = batch.layout.modality
    if name == "all":
        return modality != int(Modality.PAD)
    return modality == int(Modality[name.upper()])


def _splice(sae: SparseAutoencoder, where: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def edit(value: torch.Tensor) -> torch.Tensor:
        check_width(sae, value.shape[-1], "the model's site")
        out = value.clone()
        mask = where.to(value.device)
        out[mask] = sae(value[mask].float()).to(value.dtype)
        return out
    return edit


def _zero(where: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def edit(value: torch.Tensor) -> torch.Tensor:
        return value.masked_fill(where.to(value.device)[..., None], 0)
    return edit


def _answer_loss(model, batch, target: torch.Tensor, context) -> float:
    """Summed cross-entropy of ``target`` after the last prompt token (left padding: position -1)."""
    with context:
        logits = model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf)).logits[:, -1].float()
    return float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))


__all__ = ["MIN_GAP", "SPLITS", "answer_ids", "check_width", "loss_recovered", "reconstruction", "undefined_recovery"]
