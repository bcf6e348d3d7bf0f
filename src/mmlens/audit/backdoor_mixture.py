"""Two-component 1-D Gaussian mixtures for BYE, fitted by EM on many columns at once.

BYE fits one mixture per layer (or head) and one over the scores; a bootstrap
refits them hundreds of times, so the EM runs on every column of a matrix
together (a column stops updating once its means move by less than 1e-10,
exactly as a column fitted alone would).

Example:
    >>> x = np.r_[np.zeros(50), np.ones(50)] + np.random.default_rng(0).normal(0, 0.1, 100)
    >>> fit = fit_mixture(x)
    >>> round(fit.means[0], 1), round(fit.means[1], 1)
    (0.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MixtureFit:
    """A 2-component 1-D Gaussian mixture, components sorted by mean (low first)."""

    means: tuple[float, float]
    sigmas: tuple[float, float]
    weights: tuple[float, float]

    def gap(self) -> float:
        """``|mu1 - mu2| / (sigma1 + sigma2)``: the rule asks for more than ``separation``."""
        return abs(self.means[1] - self.means[0]) / max(self.sigmas[0] + self.sigmas[1], 1e-12)

    def log_ratio(self, x: np.ndarray) -> np.ndarray:
        """``log`` of (low component's weighted density / high component's) at each value."""
        x = np.asarray(x, np.float64)
        log_d = [np.log(w) - np.log(s) - 0.5 * ((x - m) / s) ** 2
                 for m, s, w in zip(self.means, self.sigmas, self.weights)]
        return log_d[0] - log_d[1]

    def low_cluster(self, x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
        """Whether each value goes to the low-mean component: log ratio above ``threshold`` (0: posterior > 0.5).

        Values above the high component's mean never do (with unequal sigmas
        the wider low component would otherwise claim the far right tail too).
        """
        x = np.asarray(x, np.float64)
        low = self.log_ratio(x) > threshold
        return low if threshold == 0.0 else low & (x < self.means[1])

    def to_json(self) -> dict:
        return {"means": list(self.means), "sigmas": list(self.sigmas), "weights": list(self.weights),
                "gap": self.gap()}


def fit_mixtures(x: np.ndarray, iterations: int = 200) -> list[MixtureFit]:
    """EM for a 2-component mixture on each column of ``x`` (``(n, k)``), deterministic (25th/75th percentile start).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(300, 2)); x[:100, 1] += 6
        >>> [round(f.gap()) > 1 for f in fit_mixtures(x)]
        [False, True]
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    floor = np.maximum(1e-6, 1e-3 * x.std(0))  # no component collapses onto one value
    mu = np.percentile(x, [25, 75], axis=0).T.copy()  # (k, 2)
    same = mu[:, 0] == mu[:, 1]
    mu[same] = np.stack([x.min(0), x.max(0)], 1)[same]
    sd = np.repeat(np.maximum(x.std(0), floor)[:, None], 2, 1)
    w = np.full_like(mu, 0.5)
    columns = np.ascontiguousarray(x.T)  # (k, n): every reduction runs along contiguous rows
    active = np.ones(x.shape[1], bool)
    for _ in range(iterations):
        cols = np.nonzero(active)[0]
        if cols.size == 0:
            break
        xa, m, s = columns[cols], mu[cols], sd[cols]  # (a, n), (a, 2)
        low, high = (np.log(w[cols, j, None] / s[:, j, None]) - 0.5 * ((xa - m[:, j, None]) / s[:, j, None]) ** 2
                     for j in (0, 1))
        top = np.maximum(low, high)
        r_low, r_high = np.exp(low - top), np.exp(high - top)
        total = r_low + r_high
        r_low /= total
        r_high /= total
        n_k = np.stack([r_low.sum(1), r_high.sum(1)], 1) + 1e-12  # (a, 2)
        new_mu = np.stack([(r_low * xa).sum(1), (r_high * xa).sum(1)], 1) / n_k
        spread = np.stack([(r * (xa - new_mu[:, j, None]) ** 2).sum(1) for j, r in enumerate((r_low, r_high))], 1)
        sd[cols] = np.maximum(np.sqrt(spread / n_k), floor[cols, None])
        w[cols] = n_k / n_k.sum(1, keepdims=True)
        done = np.all(np.abs(new_mu - m) <= 1e-10, 1)
        mu[cols] = new_mu
        active[cols[done]] = False
    fits = []
    for j in range(x.shape[1]):
        order = np.argsort(mu[j])
        fits.append(MixtureFit(tuple(float(v) for v in mu[j, order]), tuple(float(v) for v in sd[j, order]),
                               tuple(float(v) for v in w[j, order])))
    return fits


def fit_mixture(x: np.ndarray, iterations: int = 200) -> MixtureFit:
    """EM for a 2-component 1-D Gaussian mixture (deterministic: started at the 25th and 75th percentiles).

    Example:
        >>> fit = fit_mixture(np.r_[np.zeros(50), np.ones(50)] + np.random.default_rng(0).normal(0, 0.1, 100))
        >>> round(fit.means[0], 1), round(fit.means[1], 1)
        (0.0, 1.0)
    """
    return fit_mixtures(np.asarray(x, np.float64).ravel()[:, None], iterations)[0]


def refine_split(x: np.ndarray, start: np.ndarray, iterations: int = 200) -> np.ndarray:
    """A split refined over every column: EM for 2 Gaussians with one shared covariance, started at ``start``.

    ``x`` is ``(n, k)`` (every unit's entropy), ``start`` a boolean split of
    the rows (BYE's). The mixture is linear discriminant analysis without
    labels: each step weighs the columns by how well they separate the
    current two groups, so units that are not bimodal on their own still
    sharpen the split. Returns each row's log likelihood ratio, flagged
    component against the other (0: posterior 0.5).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(400, 2)); x[:40] += [1.5, 2.5]  # neither column splits alone
        >>> start = x[:, 0] > 2.0  # a rough first split
        >>> refined = refine_split(x, start) > 0
        >>> bool(refined[:40].mean() > start[:40].mean()), bool(refined[40:].mean() < 0.05)
        (True, True)
    """
    x = np.asarray(x, np.float64)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)  # conditioning only: a shared covariance is affine-invariant
    r = np.asarray(start, np.float64)
    if not 0 < r.sum() < len(r):
        raise ValueError("the starting split must flag some rows and not all")
    ridge = 1e-6 * np.eye(x.shape[1])
    for _ in range(iterations):
        weights = np.stack([r, 1.0 - r], 1)  # (n, 2): flagged, other
        n_k = weights.sum(0) + 1e-12
        means = (weights.T @ x) / n_k[:, None]
        centred = [x - means[j] for j in range(2)]
        shared = sum((weights[:, j, None] * centred[j]).T @ centred[j] for j in range(2)) / len(x) + ridge
        inverse = np.linalg.inv(shared)
        log_d = np.stack([np.log(n_k[j] / len(x)) - 0.5 * np.einsum("ij,jk,ik->i", centred[j], inverse, centred[j])
                          for j in range(2)], 1)
        ratio = log_d[:, 0] - log_d[:, 1]
        new_r = 1.0 / (1.0 + np.exp(-np.clip(ratio, -50, 50)))
        if np.abs(new_r - r).max() < 1e-8:
            break
        r = new_r
    return ratio
