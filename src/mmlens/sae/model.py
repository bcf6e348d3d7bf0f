"""The sparse autoencoder itself: four architectures with SAELens 6 encode semantics.

``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``
and a ``threshold [d_sae]`` buffer, exactly the tensors SAELens saves, so an
export behaves the same there (:mod:`mmlens.sae.saelens`). Every architecture
subtracts ``b_dec`` from the input first (SAELens ``apply_b_dec_to_input``):

- ``standard``: ``relu(pre)`` (trained with an L1 penalty);
- ``topk``: the ``k`` largest of ``pre`` per token, then ``relu`` (SAELens' order);
- ``batchtopk``: in training the ``k x batch`` largest of ``relu(pre)`` over the
  whole batch; at inference a JumpReLU with the learned ``threshold``;
- ``jumprelu``: ``relu(pre) * (pre > threshold)``.

where ``pre = (x - b_dec) @ W_enc + b_enc``.
"""

from __future__ import annotations

from typing import Any

import torch

from mmlens.errors import MmlensError

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")


class SparseAutoencoder(torch.nn.Module):
    """A sparse autoencoder over one site's activations.

    Example:
        >>> sae = SparseAutoencoder(16, 64, architecture="topk", k=4)
        >>> sae.encode(torch.randn(3, 16)).count_nonzero(-1).le(4).all().item()
        True
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = 32,
                 site: str | None = None, **extra: Any) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise MmlensError(f"unknown SAE architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        if d_in < 1 or d_sae < 1:
            raise MmlensError(f"SAE sizes must be positive, got d_in={d_in}, d_sae={d_sae}")
        if architecture in ("topk", "batchtopk"):
            if k is None or k < 1:
                raise MmlensError(f"a {architecture} SAE needs k >= 1, got k={k}")
            if k > d_sae:
                raise MmlensError(f"k={k} is larger than the number of latents d_sae={d_sae}")
        self.d_in, self.d_sae, self.architecture = int(d_in), int(d_sae), architecture
        self.k = int(k) if k is not None and architecture in ("topk", "batchtopk") else None
        self.site = site
        self.extra = dict(extra)  # carried into config(): e.g. the model name, the store, the harvest sites
        self.W_enc = torch.nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = torch.nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-norm decoder rows and the encoder as their transpose (Gao et al.'s tied init)."""
        torch.nn.init.kaiming_uniform_(self.W_dec)
        self.normalize_decoder()
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.zero_()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit norm (the sparsity penalty would otherwise shrink it)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc``, the input every architecture thresholds."""
        if x.shape[-1] != self.d_in:
            raise MmlensError(f"activations of width {x.shape[-1]} do not match the SAE's d_in={self.d_in}")
        return (x.to(self.W_enc.device, self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc  # any device in

    def activate(self, pre: torch.Tensor, batch: bool = False) -> torch.Tensor:
        """The architecture's nonlinearity over pre-activations ``[..., d_sae]``.

        ``batch=True`` asks BatchTopK for its training rule (top ``k x rows``
        over everything); otherwise BatchTopK uses its learned threshold.

        Example:
            >>> SparseAutoencoder(2, 3, "topk", k=1).activate(torch.tensor([[1.0, -2.0, 3.0]])).tolist()
            [[0.0, 0.0, 3.0]]
        """
        if self.architecture == "standard":
            return pre.relu()
        if self.architecture == "topk":
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        if self.architecture == "batchtopk" and batch:
            flat = pre.relu().reshape(-1)
            rows = flat.numel() // self.d_sae
            top = flat.topk(min(self.k * rows, flat.numel()))
            return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(pre.shape)
        return pre.relu() * (pre > self.threshold)  # jumprelu, and batchtopk at inference

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``[..., d_in]``.

        Example:
            >>> SparseAutoencoder(8, 32, "standard").encode(torch.randn(5, 8)).shape
            torch.Size([5, 32])
        """
        return self.activate(self.pre_activations(x))

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of latent activations ``[..., d_sae]``.

        Example:
            >>> sae = SparseAutoencoder(8, 32, "standard")
            >>> torch.equal(sae.decode(torch.zeros(32)), sae.b_dec.detach())
            True
        """
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the reconstruction of ``x``."""
        return self.decode(self.encode(x))

    def config(self) -> dict[str, Any]:
        """Plain JSON-able settings, enough to rebuild the module before loading weights.

        Example:
            >>> SparseAutoencoder(8, 32, "topk", k=4, site="lm.L2.resid").config()["site"]
            'lm.L2.resid'
        """
        return {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "k": self.k,
                "site": self.site, "apply_b_dec_to_input": True, **self.extra}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SparseAutoencoder":
        """The (freshly initialised) SAE that ``config()`` describes.

        Example:
            >>> SparseAutoencoder.from_config(SparseAutoencoder(8, 32, "topk", k=4).config()).k
            4
        """
        known = {key: config[key] for key in ("d_in", "d_sae", "architecture", "k", "site") if key in config}
        extra = {key: value for key, value in config.items() if key not in known and key != "apply_b_dec_to_input"}
        return cls(**known, **extra)
