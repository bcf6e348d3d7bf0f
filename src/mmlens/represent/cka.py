"""Centred kernel alignment (CKA) between two sets of representations of the same samples.

Three estimators, all in float32:

- ``linear``: linear kernels, the biased HSIC estimator (Kornblith et al. 2019);
- ``rbf``: Gaussian kernels with sigma = the median pairwise distance;
- ``unbiased``: linear kernels with the debiased HSIC estimator (Song et al.
  2012), whose value does not drift up as the width grows against the number
  of samples.

Representations are ``(n, d)`` with the same ``n`` (the samples) and any
widths. :func:`grams` turns each layer into a kernel matrix once, and
:func:`cka_from_grams` compares two of them, so a victim-layer x
suspect-layer matrix costs one Gram matrix per layer plus one dot product per
pair (:func:`cka_matrix`). ``index`` (a resample of the samples, for the
bootstrap) picks rows and columns of the Gram matrices; copies of the same
sample are kept apart in the debiased estimator as its diagonal is.

Example:
    >>> import torch
    >>> x = torch.randn(50, 16)
    >>> round(cka(x, 3.0 * x @ torch.linalg.qr(torch.randn(16, 16))[0]), 5)
    1.0
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmlens.errors import MmlensError, check_choice

KINDS = ("linear", "rbf", "unbiased")


def _check(x: torch.Tensor, name: str = "representation") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise MmlensError(f"a {name} is an (samples, width) matrix, got shape "
                          f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if x.shape[0] < 4:
        raise MmlensError(f"CKA needs at least 4 samples, got {x.shape[0]}")
    x = x.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise MmlensError(f"the {name} has non-finite values (NaN or inf)")
    return x


def gram(x: torch.Tensor, kind: str = "linear") -> torch.Tensor:
    """The kernel matrix of ``x`` (``(n, d)``) for a CKA of ``kind``, float32 ``(n, n)``.

    Features are centred first (it changes no linear-CKA value and keeps
    float32 products small).

    Example:
        >>> gram(torch.eye(4), "rbf").shape
        torch.Size([4, 4])
    """
    check_choice(kind, KINDS, "CKA kind")
    x = _check(x)
    x = x - x.mean(0, keepdim=True)
    if kind != "rbf":
        return x @ x.T
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    d2.fill_diagonal_(0)
    off = d2[~torch.eye(len(x), dtype=torch.bool)]
    sigma2 = off.sqrt().median() ** 2  # sigma = median distance, so CKA ignores isotropic scaling
    if sigma2 <= 0:
        raise MmlensError("every sample has the same representation: the RBF width (median distance) is 0")
    return torch.exp(-d2 / (2 * sigma2))


def grams(layers: Sequence[torch.Tensor], kind: str = "linear") -> torch.Tensor:
    """Kernel matrices of several layers, stacked ``(layers, n, n)``.

    Example:
        >>> grams([torch.randn(8, 3), torch.randn(8, 5)]).shape
        torch.Size([2, 8, 8])
    """
    return torch.stack([gram(x, kind) for x in layers])


def _centre(k: torch.Tensor) -> torch.Tensor:
    """H K H for a batch of kernel matrices ``(..., n, n)``."""
    k = k - k.mean(-1, keepdim=True)
    return k - k.mean(-2, keepdim=True)


def _debias(k: torch.Tensor, same: torch.Tensor | None) -> torch.Tensor:
    """K with its diagonal (and entries between copies of one sample) set to 0."""
    mask = torch.eye(k.shape[-1], dtype=torch.bool, device=k.device) if same is None else same
    return k.masked_fill(mask, 0.0)


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC of zero-diagonal kernels ``(..., n, n)`` (up to a 1/(n(n-3)) that cancels)."""
    n = k.shape[-1]
    ones_k, ones_l = k.sum((-1, -2)), l.sum((-1, -2))
    cross = (k.sum(-1) * l.sum(-1)).sum(-1)
    return (k * l).sum((-1, -2)) + ones_k * ones_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)


def resample(g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Kernel matrices ``(..., n, n)`` on resamples ``index`` (``(m,)`` or ``(b, m)``): ``(..., [b,] m, m)``.

    Example:
        >>> resample(torch.eye(3)[None], torch.tensor([[0, 0, 2]])).shape
        torch.Size([1, 1, 3, 3])
    """
    return g[..., index[..., :, None], index[..., None, :]]


def _same(index: torch.Tensor | None) -> torch.Tensor | None:
    """Which entries pair copies of one sample (the diagonal of a resample); None without a resample."""
    return None if index is None else index[..., :, None] == index[..., None, :]


def paired_cka(kx: torch.Tensor, ky: torch.Tensor, kind: str = "linear",
               index: torch.Tensor | None = None) -> torch.Tensor:
    """CKA of ``kx[...]`` against ``ky[...]``, kernel matrices of the same shape ``(..., n, n)``: ``(...)``.

    ``index`` says which samples a resampled matrix holds (``(n,)`` or
    ``(b, n)`` matching a batch axis just before the matrices), so that copies
    of one sample count as the diagonal in the debiased estimator.

    Example:
        >>> g = grams([torch.randn(10, 4), torch.randn(10, 2)])
        >>> paired_cka(g, g).tolist()
        [1.0, 1.0]
    """
    if kind == "unbiased":
        same = _same(index)
        kx, ky = _debias(kx, same), _debias(ky, same)
        xy, xx, yy = _hsic_unbiased(kx, ky), _hsic_unbiased(kx, kx), _hsic_unbiased(ky, ky)
    else:
        kx, ky = _centre(kx), _centre(ky)
        xy, xx, yy = (kx * ky).sum((-1, -2)), (kx * kx).sum((-1, -2)), (ky * ky).sum((-1, -2))
    return _ratio(xy, xx, yy)


def _ratio(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    denom = (xx.clamp_min(0) * yy.clamp_min(0)).sqrt()
    return torch.where(denom > 0, xy / denom.clamp_min(1e-30), torch.zeros_like(xy))


def unbiased_on_weights(kx: torch.Tensor, ky: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Debiased CKA of ``kx[p]`` against ``ky[p]`` (``(p, n, n)``) on resamples given as counts: ``(p, b)``.

    ``weights`` (``(b, n)``) says how often each sample is drawn. It equals
    :func:`paired_cka` on the gathered resample (copies of a sample kept apart),
    but costs matrix products instead of ``b`` gathered ``n x n`` matrices.

    Example:
        >>> g = grams([torch.randn(10, 4)], "unbiased")
        >>> unbiased_on_weights(g, g, torch.ones(1, 10)).tolist()
        [[1.0]]
    """
    kx, ky = _debias(kx, None), _debias(ky, None)
    w = weights.to(kx.dtype)
    m = w.sum(-1)  # (b,): the resample's size

    def hsic(k: torch.Tensor, l: torch.Tensor, kw: torch.Tensor, lw: torch.Tensor) -> torch.Tensor:
        kl = ((k * l) @ w.T * w.T).sum(-2)  # sum over pairs of distinct samples, weighted: (p, b)
        sk, sl = (kw * w).sum(-1), (lw * w).sum(-1)
        cross = (kw * lw * w).sum(-1)
        return kl + sk * sl / ((m - 1) * (m - 2)) - 2.0 * cross / (m - 2)

    kw, lw = w @ kx, w @ ky  # (p, b, n): row sums of the resampled kernels, per drawn sample
    return _ratio(hsic(kx, ky, kw, lw), hsic(kx, kx, kw, kw), hsic(ky, ky, lw, lw))


def cka_from_grams(kx: torch.Tensor, ky: torch.Tensor, kind: str = "linear",
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """CKA between every pair of ``kx`` ``(a, n, n)`` and ``ky`` ``(b, n, n)``: an ``(a, b)`` matrix.

    ``index`` (``(m,)`` sample indices, repeats allowed) computes it on that
    resample of the samples.

    Example:
        >>> g = grams([torch.randn(10, 4)])
        >>> float(cka_from_grams(g, g)[0, 0])
        1.0
    """
    if kx.shape[-1] != ky.shape[-1]:
        raise MmlensError(f"CKA compares the same samples: {kx.shape[-1]} against {ky.shape[-1]}")
    if index is not None:
        kx, ky = resample(kx, index), resample(ky, index)
    if kind == "unbiased":
        same = _same(index)
        kx, ky = _debias(kx, same), _debias(ky, same)
        xy = torch.stack([_hsic_unbiased(k[None], ky) for k in kx])  # a rows of (b,): a x b x n x n never held
        xx, yy = _hsic_unbiased(kx, kx), _hsic_unbiased(ky, ky)
    else:
        kx, ky = _centre(kx), _centre(ky)
        xy = torch.einsum("aij,bij->ab", kx, ky)
        xx, yy = (kx * kx).sum((-1, -2)), (ky * ky).sum((-1, -2))
    return _ratio(xy, xx[:, None], yy[None, :])


def cka(x: torch.Tensor, y: torch.Tensor, kind: str = "linear") -> float:
    """CKA between two representations ``(n, d1)`` and ``(n, d2)`` of the same ``n`` samples.

    Example:
        >>> x = torch.randn(40, 8)
        >>> round(cka(x, x[:, torch.randperm(8)], "unbiased"), 5)
        1.0
    """
    x, y = _check(x), _check(y)
    if x.shape[0] != y.shape[0]:
        raise MmlensError(f"CKA compares the same samples: {x.shape[0]} rows against {y.shape[0]}")
    return float(cka_from_grams(gram(x, kind)[None], gram(y, kind)[None], kind)[0, 0])


def cka_matrix(victim: Sequence[torch.Tensor], suspect: Sequence[torch.Tensor], kind: str = "linear") -> torch.Tensor:
    """The victim-layer x suspect-layer CKA matrix of two lists of ``(n, d)`` layers.

    Example:
        >>> a = [torch.randn(20, 4) for _ in range(3)]
        >>> cka_matrix(a, a[:2]).shape
        torch.Size([3, 2])
    """
    return cka_from_grams(grams(victim, kind), grams(suspect, kind), kind)
