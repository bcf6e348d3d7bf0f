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

With ``rescale_acts_by_decoder_norm`` (SAELens' option of that name; the
trainer uses it) the decoder rows are free parameters of any norm: ``pre`` is
multiplied by each row's norm and decoding divides by it, so activations are
coefficients on unit directions whatever the norms. :meth:`fold_decoder_norm`
turns such an SAE into the same function with unit-norm rows and no rescaling,
the form every file holds.
"""

from __future__ import annotations

from typing import Any

import torch

from mmlens.errors import MmlensError, check_choice

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")


class SparseAutoencoder(torch.nn.Module):
    """A sparse autoencoder over one site's activations.

    Example:
        >>> sae = SparseAutoencoder(16, 64, architecture="topk", k=4)
        >>> sae.encode(torch.randn(3, 16)).count_nonzero(-1).le(4).all().item()
        True
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = 32,
                 site: str | None = None, rescale_acts_by_decoder_norm: bool = False, **extra: Any) -> None:
        super().__init__()
        check_choice(architecture, ARCHITECTURES, "SAE architecture")
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
        self.rescale = bool(rescale_acts_by_decoder_norm)
        self.extra = dict(extra)  # carried into config(): e.g. the model name, the store, the harvest sites
        self.W_enc = torch.nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = torch.nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, decoder_norm: float = 1.0) -> None:
        """Decoder rows of norm ``decoder_norm`` and the encoder as their transpose (Gao et al.'s tied init).

        Example:
            >>> sae = SparseAutoencoder(8, 32, rescale_acts_by_decoder_norm=True)
            >>> sae.reset_parameters(0.1); round(float(sae.W_dec.detach().norm(dim=-1).mean()), 3)
            0.1
        """
        torch.nn.init.kaiming_uniform_(self.W_dec)
        self.normalize_decoder()
        self.W_dec.mul_(decoder_norm)
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.zero_()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit norm (the sparsity penalty would otherwise shrink it)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def fold_decoder_norm(self) -> None:
        """The same function with unit-norm decoder rows and no rescaling (norms moved into the encoder).

        Example:
            >>> sae = SparseAutoencoder(8, 32, "topk", k=4, rescale_acts_by_decoder_norm=True)
            >>> sae.reset_parameters(0.1); x = torch.randn(3, 8); before = sae(x)
            >>> sae.fold_decoder_norm(); torch.allclose(sae(x), before, atol=1e-5), sae.rescale
            (True, False)
        """
        if not self.rescale:
            return
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-8)
        self.W_enc.mul_(norms)
        self.b_enc.mul_(norms)
        self.W_dec.div_(norms[:, None])
        self.rescale = False

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` (times the decoder rows' norms when rescaled): what every architecture thresholds."""
        if x.shape[-1] != self.d_in:
            raise MmlensError(f"activations of width {x.shape[-1]} do not match the SAE's d_in={self.d_in}")
        pre = (x.to(self.W_enc.device, self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc  # any device in
        return pre * self.W_dec.norm(dim=-1) if self.rescale else pre

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
        return self.decode_directions(acts) + self.b_dec

    def decode_directions(self, acts: torch.Tensor) -> torch.Tensor:
        """``decode`` without ``b_dec``: the latents' sum of (unit) directions (AuxK reconstructs errors with it)."""
        if self.rescale:
            return (acts / self.W_dec.norm(dim=-1).clamp_min(1e-8)) @ self.W_dec
        return acts @ self.W_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the reconstruction of ``x``."""
        return self.decode(self.encode(x))

    def config(self) -> dict[str, Any]:
        """Plain JSON-able settings, enough to rebuild the module before loading weights.

        Example:
            >>> SparseAutoencoder(8, 32, "topk", k=4, site="lm.L2.resid").config()["site"]
            'lm.L2.resid'
        """
        rescale = {"rescale_acts_by_decoder_norm": True} if self.rescale else {}  # only mid-training
        return {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "k": self.k,
                "site": self.site, "apply_b_dec_to_input": True, **rescale, **self.extra}

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
