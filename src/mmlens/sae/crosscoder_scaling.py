"""What a trained crosscoder says about two models: shared and model-only latents, checked by latent scaling.

- **Relative decoder norm** (Lindsey et al.; Minder et al.):
  ``delta = ((|d_B| - |d_A|) / max(|d_A|, |d_B|) + 1) / 2``, 0 when only model
  A decodes the latent, 1 when only B does. ``delta <= 0.1``: A-only,
  ``delta >= 0.9``: B-only, otherwise shared (``low`` / ``high``).
- **Latent scaling** (Minder et al. 2025): a latent can look like one model's
  own because training shrank its other decoder (*complete shrinkage*: the
  other model's reconstruction error still holds it) or because other latents
  reconstruct it in the other model (*latent decoupling*). For latent ``j``
  with decoder direction ``d`` (its "own" model's row: B for B-only and shared
  latents, A for A-only), the closed-form least-squares scale of ``f_j d`` on a
  target ``y`` over the data is
  ``beta = d . sum_i f_j(x_i) y_i / (|d|^2 sum_i f_j(x_i)^2)``, fitted in each
  model ``m`` on two targets:

  - error: ``y = x_m - x_hat_m + f_j d_j^m`` (what is left for latent ``j``);
  - reconstruction: ``y = x_hat_m - f_j d_j^m`` (what the other latents rebuild).

  ``nu_error`` and ``nu_recon`` are the other model's beta over the own
  model's. An "only" latent is flagged as ``shrinkage`` when
  ``nu_error > max_nu_error`` and as ``decoupling`` when
  ``nu_recon > max_nu_recon`` (0.5 each by default: a genuinely one-sided
  latent is near 0, an artifact near 1; the cut-offs are mmlens' choice).

Example:
    >>> relative_norms(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])).tolist()
    [0.0, 0.5, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmlens.sae.crosscoder import Crosscoder, PairedActivations

CLASSES = ("A-only", "shared", "B-only")


def relative_norms(norms: torch.Tensor) -> torch.Tensor:
    """``delta`` per latent from decoder norms ``[d_sae, 2]`` (A, B); 0.5 for a latent with no decoder at all."""
    a, b = norms[:, 0], norms[:, 1]
    return 0.5 * ((b - a) / torch.maximum(a, b).clamp_min(1e-12) + 1)


def classify(delta: torch.Tensor, low: float = 0.1, high: float = 0.9) -> np.ndarray:
    """``"A-only"`` / ``"shared"`` / ``"B-only"`` per latent from relative norms.

    Example:
        >>> classify(torch.tensor([0.05, 0.5, 0.95])).tolist()
        ['A-only', 'shared', 'B-only']
    """
    labels = np.full(delta.shape[0], "shared", dtype=object)
    labels[(delta <= low).numpy()] = "A-only"
    labels[(delta >= high).numpy()] = "B-only"
    return labels


@dataclass
class CrosscoderReport:
    """Per-latent figures of a crosscoder over paired data (arrays of length ``d_sae``) and the totals."""

    delta: np.ndarray
    label: np.ndarray
    fires: np.ndarray  # tokens on which each latent fired
    beta_error: np.ndarray  # [d_sae, 2]: model A, model B
    beta_recon: np.ndarray  # [d_sae, 2]
    nu_error: np.ndarray
    nu_recon: np.ndarray
    flags: list[list[str]]
    fvu: dict[str, float]
    l0: float
    settings: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """How many latents in each class, how many "only" latents survive latent scaling, how many are dead."""
        alive = self.fires > 0
        out: dict[str, Any] = {name: int(((self.label == name) & alive).sum()) for name in CLASSES}
        out["dead"] = int((~alive).sum())
        for name in ("A-only", "B-only"):
            chosen = np.flatnonzero((self.label == name) & alive)
            out[f"{name} surviving"] = int(sum(not self.flags[j] for j in chosen))
            out[f"{name} shrinkage"] = int(sum("shrinkage" in self.flags[j] for j in chosen))
            out[f"{name} decoupling"] = int(sum("decoupling" in self.flags[j] for j in chosen))
        return out

    def latents(self, label: str, surviving: bool = False) -> list[int]:
        """Live latents of one class (``surviving``: only those latent scaling does not flag), most firing first."""
        chosen = [j for j in np.flatnonzero((self.label == label) & (self.fires > 0))
                  if not (surviving and self.flags[j])]
        return sorted((int(j) for j in chosen), key=lambda j: -self.fires[j])

    def row(self, j: int) -> dict[str, Any]:
        """One latent's figures as plain JSON."""
        def num(value: float) -> float | None:
            return None if not np.isfinite(value) else round(float(value), 4)

        return {"latent": j, "class": str(self.label[j]), "delta": num(self.delta[j]), "fires": int(self.fires[j]),
                "beta_error": [num(v) for v in self.beta_error[j]], "beta_recon": [num(v) for v in self.beta_recon[j]],
                "nu_error": num(self.nu_error[j]), "nu_recon": num(self.nu_recon[j]), "flags": self.flags[j]}


@torch.no_grad()
def analyse(cc: Crosscoder, pair: PairedActivations, *, low: float = 0.1, high: float = 0.9,
            max_nu_error: float = 0.5, max_nu_recon: float = 0.5, chunk: int = 8192) -> CrosscoderReport:
    """Classes by relative decoder norm, latent-scaling betas and flags, FVU per model and L0, over every row of ``pair``.

    Example:
        >>> report = analyse(load_crosscoder("cc/"), PairedActivations("a/", "b/", "lm.L2.resid"))  # doctest: +SKIP
        >>> report.counts()["B-only surviving"]  # doctest: +SKIP
        12
    """
    d_sae, d_in = cc.d_sae, cc.d_in
    f_err = torch.zeros(2, d_sae, d_in, dtype=torch.float64)  # sum_i f_j(x_i) (x_m - x_hat_m)_i
    f_rec = torch.zeros(2, d_sae, d_in, dtype=torch.float64)  # sum_i f_j(x_i) x_hat_m,i
    f_sq = torch.zeros(d_sae, dtype=torch.float64)
    fires = torch.zeros(d_sae, dtype=torch.long)
    error, square, total, n, l0 = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), \
        torch.zeros(2, d_in, dtype=torch.float64), 0, 0.0
    for first in range(0, len(pair), chunk):
        xa, xb = pair.read(np.arange(first, min(first + chunk, len(pair))))
        f = cc.encode(xa, xb)
        fd = f.double()
        for m, (x, recon) in enumerate(zip((xa, xb), cc.decode(f))):
            x, recon = x.double(), recon.double()
            f_err[m] += fd.T @ (x - recon)
            f_rec[m] += fd.T @ recon
            error[m] += (x - recon).pow(2).sum()
            square[m] += x.pow(2).sum()
            total[m] += x.sum(0)
        f_sq += fd.pow(2).sum(0)
        fires += (f > 0).sum(0)
        n += xa.shape[0]
        l0 += float((f > 0).sum())
    delta = relative_norms(cc.norms())
    label = classify(delta, low, high)
    own = torch.from_numpy((label != "A-only").astype(np.int64))  # 1 (model B) unless the latent is A-only
    rows = torch.arange(d_sae)
    direction = cc.W_dec[rows, own].double()  # [d_sae, d_in]
    norm2 = direction.pow(2).sum(-1)
    beta_error = torch.zeros(d_sae, 2, dtype=torch.float64)
    beta_recon = torch.zeros(d_sae, 2, dtype=torch.float64)
    for m in range(2):
        self_term = f_sq * (direction * cc.W_dec[:, m].double()).sum(-1)  # sum f_j^2 d . d_j^m
        denominator = (norm2 * f_sq).where(f_sq > 0, torch.tensor(float("nan"), dtype=torch.float64))
        beta_error[:, m] = ((direction * f_err[m]).sum(-1) + self_term) / denominator
        beta_recon[:, m] = ((direction * f_rec[m]).sum(-1) - self_term) / denominator
    other = 1 - own
    nu_error = _ratio(beta_error[rows, other], beta_error[rows, own])
    nu_recon = _ratio(beta_recon[rows, other], beta_recon[rows, own])
    flags: list[list[str]] = []
    for j in range(d_sae):
        mine = []
        if label[j] != "shared":
            if np.isfinite(nu_error[j]) and nu_error[j] > max_nu_error:
                mine.append("shrinkage")
            if np.isfinite(nu_recon[j]) and nu_recon[j] > max_nu_recon:
                mine.append("decoupling")
        flags.append(mine)
    variance = square - total.pow(2).sum(-1) / max(n, 1)
    fvu = {"A": float(error[0] / variance[0]), "B": float(error[1] / variance[1])}
    return CrosscoderReport(delta.numpy(), label, fires.numpy(), beta_error.numpy(), beta_recon.numpy(),
                            nu_error, nu_recon, flags, fvu, l0 / max(n, 1),
                            {"low": low, "high": high, "max_nu_error": max_nu_error, "max_nu_recon": max_nu_recon,
                             "tokens": n})


@torch.no_grad()
def latent_activations(cc: Crosscoder, pair: PairedActivations, latents: list[int], chunk: int = 8192) -> torch.Tensor:
    """Dense activations ``[rows, len(latents)]`` of the chosen latents over every row of ``pair``.

    Example:
        >>> latent_activations(cc, pair, [3, 7]).shape  # doctest: +SKIP
        torch.Size([28800, 2])
    """
    out = []
    for first in range(0, len(pair), chunk):
        xa, xb = pair.read(np.arange(first, min(first + chunk, len(pair))))
        out.append(cc.encode(xa, xb)[:, latents])
    return torch.cat(out) if out else torch.zeros(0, len(latents))


def label_latents(cc: Crosscoder, pair: PairedActivations, latents: list[int]) -> list[Any]:
    """The shapes-world concept that best predicts each latent (fit on half the samples, scored on the other half).

    Uses :func:`mmlens.sae.labels.concept_table` over model A's store (both
    stores hold the same samples); samples without shapes-world truth are skipped.

    Example:
        >>> label_latents(cc, pair, [3])[0].text()  # doctest: +SKIP
        'answer:purple (precision 0.91, recall 0.85, held out)'
    """
    from mmlens.sae.codes import store_samples
    from mmlens.sae.labels import concept_table, label_activations

    if not latents:
        return []
    table = concept_table(pair.a.rows, store_samples(pair.a.store))
    return label_activations(latent_activations(cc, pair, latents), table, latents)


def _ratio(top: torch.Tensor, bottom: torch.Tensor) -> np.ndarray:
    """``top / bottom`` with NaN where the own model's beta is not positive (no scale to compare against)."""
    bottom = bottom.where(bottom > 1e-9, torch.tensor(float("nan"), dtype=bottom.dtype))
    return (top / bottom).numpy()


def auroc_columns(scores: torch.Tensor | np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each column of ``scores`` ``[n, m]`` for the boolean labels ``positive`` ``[n]`` (ties averaged).

    Example:
        >>> auroc_columns(np.array([[0.1], [0.9], [0.2]]), np.array([False, True, False])).tolist()
        [1.0]
    """
    from scipy.stats import rankdata

    scores = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auroc(scores: torch.Tensor | np.ndarray, positive: np.ndarray, groups: np.ndarray, n: int = 1000,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the AUROC of one score column, resampling whole ``groups`` (samples) with replacement.

    Rows of one group (the patches of one image) are not independent, so the
    groups are what is drawn. None when no resample holds both classes.

    Example:
        >>> s = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
        >>> bootstrap_auroc(s, np.array([1, 0, 1, 0, 1, 0], bool), np.array([0, 0, 1, 1, 2, 2]), n=50)
        (1.0, 1.0)
    """
    scores = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    scores, positive = scores.reshape(len(scores), -1)[:, :1], np.asarray(positive, dtype=bool)
    ids, where = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(where == g) for g in range(len(ids))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(ids), len(ids))])
        value = auroc_columns(scores[rows], positive[rows])[0]
        if np.isfinite(value):
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return round(float(np.percentile(values, tail)), 4), round(float(np.percentile(values, 100 - tail)), 4)


def best_latent(scores: torch.Tensor, positive: np.ndarray, validation: np.ndarray, latents: list[int]
                ) -> dict[str, Any]:
    """The latent (of ``latents``, columns of ``scores``) with the best AUROC on the ``validation`` rows, scored on the rest.

    Example:
        >>> s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> best_latent(s, np.array([0, 1, 0, 1], bool), np.array([1, 1, 0, 0], bool), [7, 9])["latent"]
        7
    """
    validation = np.asarray(validation, dtype=bool)
    fit = auroc_columns(scores[validation], positive[validation])
    if np.all(np.isnan(fit)):
        return {"latent": None, "validation_auroc": None, "test_auroc": None, "searched": len(latents)}
    i = int(np.nanargmax(fit))
    test = auroc_columns(scores[~validation][:, [i]], positive[~validation])[0]
    return {"latent": int(latents[i]), "validation_auroc": round(float(fit[i]), 4),
            "test_auroc": None if np.isnan(test) else round(float(test), 4), "searched": len(latents),
            "positives": {"validation": int(positive[validation].sum()), "test": int(positive[~validation].sum())}}


__all__ = ["CLASSES", "CrosscoderReport", "analyse", "auroc_columns", "best_latent", "bootstrap_auroc", "classify",
           "label_latents",
           "latent_activations", "relative_norms"]
