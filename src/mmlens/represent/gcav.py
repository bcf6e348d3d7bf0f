"""GCAV: a global, cross-layer concept activation vector (after He et al., ICCV 2025), and TCAV on it (TGCAV).

Two papers use the name. This is the cross-layer one (He, Sinha, Xiong and
Zhang, "GCAV: A Global Concept Activation Vector Framework for Cross-Layer
Consistency in Interpretability", ICCV 2025), not the steering method of
Zhang et al. (AAAI 2025), because the issue asks for a concept vector whose
TCAV scores vary less across layers, which is the ICCV paper's claim; the
AAAI method is a way to add per-layer CAVs, which :mod:`mmlens.represent.steering`
already covers.

What is implemented, in the paper's three parts (sizes, loss weights and the
optimiser are ours; the paper's code was not at hand):

1. **Alignment.** Per layer ``l`` a linear encoder ``E_l`` (width -> ``k``) and
   decoder ``D_l`` (``k`` -> width) map each layer's CAVs into one shared
   space. Loss: an InfoNCE term that pulls a concept's embeddings from every
   layer together and pushes other concepts' apart, plus reconstruction
   ``|D_l(E_l v) - v|^2``.
2. **Fusion.** Attention over layers: a learned query scores each layer's
   embedding; the softmax-weighted sum is the global vector ``g``.
3. **Back to each layer.** ``D_l(g)``, normalised, is the GCAV at layer ``l``,
   trained to stay close (cosine) to the concept's mean CAV at that layer so
   it keeps the concept.

All parts are trained together with Adam on the CAVs alone (no activations).
A run of CAVs (one per layer, trained against the same random set) fuses into
one GCAV per layer, so TGCAV's significance test runs over the same random
sets as TCAV's.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> cavs = {c: torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=g), dim=-1) for c in "abc"}
    >>> model = fit_gcav(cavs, steps=50)
    >>> model.fuse(cavs["a"][0]).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from mmlens.errors import MmlensError


class GlobalCav(nn.Module):
    """Encoders, decoders and the attention query of a fitted GCAV (one shared width ``k``)."""

    def __init__(self, n_layers: int, width: int, k: int = 32) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(nn.Linear(width, k) for _ in range(n_layers))
        self.decoders = nn.ModuleList(nn.Linear(k, width) for _ in range(n_layers))
        self.query = nn.Parameter(torch.zeros(k))
        self.k = k

    def embed(self, runs: torch.Tensor) -> torch.Tensor:
        """``(..., layers, width)`` CAVs -> ``(..., layers, k)`` unit embeddings."""
        return nn.functional.normalize(
            torch.stack([e(runs[..., l, :]) for l, e in enumerate(self.encoders)], dim=-2), dim=-1)

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """Attention weights over layers for embeddings ``z`` (``(..., layers, k)``)."""
        return torch.softmax(z @ self.query / self.k ** 0.5, dim=-1)

    def fuse(self, run: torch.Tensor) -> torch.Tensor:
        """Per-layer CAVs ``(..., layers, width)`` -> the GCAV at every layer, same shape, unit rows.

        Example:
            >>> model.fuse(cavs[0]).norm(dim=-1)  # doctest: +SKIP
            tensor([1., 1., 1.])
        """
        with torch.no_grad():
            return self._decode(self._global(run.float()))

    def _global(self, runs: torch.Tensor) -> torch.Tensor:
        z = self.embed(runs)
        return (self.weights(z)[..., None] * z).sum(-2)

    def _decode(self, g: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(torch.stack([d(g) for d in self.decoders], dim=-2), dim=-1)


@dataclass
class GcavFit:
    """Losses at the end of fitting."""

    contrastive: float
    reconstruction: float
    relevance: float


def fit_gcav(cavs: Mapping[str, torch.Tensor], k: int = 32, steps: int = 400, lr: float = 1e-2,
             temperature: float = 0.1, seed: int = 0) -> GlobalCav:
    """Fit alignment, fusion and decoders on CAVs ``{concept: (runs, layers, width)}`` (at least 2 concepts).

    Example:
        >>> model = fit_gcav({"red": red_cavs, "blue": blue_cavs, "green": green_cavs})  # doctest: +SKIP
    """
    if len(cavs) < 2:
        raise MmlensError(f"GCAV's contrastive alignment needs at least 2 concepts, got {len(cavs)}")
    shapes = {tuple(v.shape[1:]) for v in cavs.values()}
    if len(shapes) != 1 or any(v.ndim != 3 for v in cavs.values()):
        raise MmlensError(f"every concept needs CAVs of one shape (runs, layers, width); got {sorted(shapes)}")
    n_layers, width = next(iter(shapes))
    torch.manual_seed(seed)
    model = GlobalCav(n_layers, width, k)
    names = list(cavs)
    data = torch.cat([cavs[c].float() for c in names])  # (all runs, layers, width)
    label = torch.cat([torch.full((len(cavs[c]),), i) for i, c in enumerate(names)])
    means = torch.stack([nn.functional.normalize(cavs[c].float().mean(0), dim=-1) for c in names])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    same = label[:, None] == label[None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: extra threads only spin against each other
    try:
        _fit(model, optimiser, data, label, means, same, steps, temperature)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _fit(model: GlobalCav, optimiser: torch.optim.Optimizer, data: torch.Tensor, label: torch.Tensor,
         means: torch.Tensor, same: torch.Tensor, steps: int, temperature: float) -> None:
    """The training loop of :func:`fit_gcav`; the final losses go to ``model.fit_losses``."""
    n_layers = data.shape[1]
    for _ in range(steps):
        z = model.embed(data)  # (runs, layers, k)
        loss_c = z.new_zeros(())
        for a in range(n_layers):  # InfoNCE between every pair of layers
            for b in range(n_layers):
                if a != b:
                    log_p = (z[:, a] @ z[:, b].T / temperature).log_softmax(-1)
                    loss_c = loss_c - (log_p * same).sum(-1).div(same.sum(-1)).mean()
        loss_c = loss_c / max(n_layers * (n_layers - 1), 1)
        recon = torch.stack([d(z[:, l]) for l, d in enumerate(model.decoders)], dim=1)
        loss_r = ((nn.functional.normalize(recon, dim=-1) - data) ** 2).sum(-1).mean()
        decoded = model._decode(model._global(data))  # (runs, layers, width)
        loss_v = (1 - (decoded * means[label]).sum(-1)).mean()
        loss = loss_c + loss_r + loss_v
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        loss_c, loss_r, loss_v = loss_c.detach(), loss_r.detach(), loss_v.detach()
    model.fit_losses = GcavFit(loss_c.item(), loss_r.item(), loss_v.item())  # type: ignore[attr-defined]


def direction_accuracy(concept: torch.Tensor, counter: torch.Tensor, vector: torch.Tensor, seed: int = 0,
                       held_out: float = 0.3) -> float:
    """Held-out accuracy of classifying concept against counter-examples by the projection on ``vector``.

    The threshold (midpoint of the two training means' projections) is set on
    the training share, as a CAV's bias would be.

    Example:
        >>> a, b = torch.randn(20, 3) + torch.tensor([4.0, 0, 0]), torch.randn(20, 3)
        >>> direction_accuracy(a, b, torch.tensor([1.0, 0, 0])) > 0.9
        True
    """
    x = torch.cat([concept, counter]).float()
    y = torch.cat([torch.ones(len(concept)), torch.zeros(len(counter))])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(2, int(round(held_out * len(x))))
    test, train = order[:n_test], order[n_test:]
    p = x @ vector.float()
    cut = (p[train][y[train] == 1].mean() + p[train][y[train] == 0].mean()) / 2
    sign = 1.0 if p[train][y[train] == 1].mean() >= cut else -1.0
    return float((((p[test] - cut) * sign > 0).float() == y[test]).float().mean())
