"""A BatchTopK crosscoder over two models' activations at one site, and its training.

One encoder reads both models' activations (their concatenation), one
decoder per model writes them back (Lindsey et al.'s crosscoder, with the
BatchTopK sparsity of the published crosscoder code, Minder et al. 2025):

- ``pre = x_A @ W_enc[0] + x_B @ W_enc[1] + b_enc`` and ``f = relu(pre)``;
- the latents are ranked by ``f * (|W_dec[:, 0]| + |W_dec[:, 1]|)`` (their
  activation times the sum of their decoder norms, so a latent cannot win by
  shrinking its decoder); in training the top ``k x batch`` of the whole
  batch are kept, at inference those over ``threshold`` (a running estimate
  during training, set at the end so that training rows fire ``k`` latents
  on average: :func:`calibrate_threshold`);
- ``x_hat_m = f @ W_dec[:, m] + b_dec[m]`` for model ``m``.

Decoder rows are **not** kept at unit norm: how the norm of a latent's
decoder splits between the models is what says whether it is shared or
one model's own (:mod:`mmlens.sae.crosscoder_scaling`).

Training (:func:`train_crosscoder`) streams batches of the same rows from two
stores harvested on the same samples; loss = summed squared error over both
models / their summed variance, plus AuxK (1/32) over latents dead for
``dead_tokens`` tokens; Adam, lr 1e-3, warm-up then linear decay.
Defaults follow the published code: expansion 32, k 100, AuxK 1/32, lr 1e-3.

Example:
    >>> cc = Crosscoder(16, 64, k=4)
    >>> cc.encode(torch.randn(3, 16), torch.randn(3, 16)).shape
    torch.Size([3, 64])
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.sae.activations import SiteActivations
from mmlens.sae.train import TrainConfig

CFG, WEIGHTS, TRAINING = "crosscoder.json", "crosscoder.safetensors", "training.json"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


class Crosscoder(torch.nn.Module):
    """BatchTopK crosscoder: ``W_enc [2, d_in, d_sae]``, ``W_dec [d_sae, 2, d_in]``, ``b_enc [d_sae]``, ``b_dec [2, d_in]``.

    Example:
        >>> cc = Crosscoder(8, 32, k=2)
        >>> xa, xb = torch.randn(5, 8), torch.randn(5, 8)
        >>> [t.shape for t in cc(xa, xb)]
        [torch.Size([5, 8]), torch.Size([5, 8])]
    """

    def __init__(self, d_in: int, d_sae: int, k: int = 100, site: str | None = None,
                 models: tuple[str | None, str | None] = (None, None), **extra: Any) -> None:
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise MmlensError(f"crosscoder sizes must be positive, got d_in={d_in}, d_sae={d_sae}")
        if k < 1 or k > d_sae:
            raise MmlensError(f"k={k} must be between 1 and the number of latents d_sae={d_sae}")
        self.d_in, self.d_sae, self.k, self.site = int(d_in), int(d_sae), int(k), site
        self.models = tuple(models)
        self.extra = dict(extra)
        self.W_enc = torch.nn.Parameter(torch.empty(2, d_in, d_sae))
        self.W_dec = torch.nn.Parameter(torch.empty(d_sae, 2, d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(2, d_in))
        self.register_buffer("threshold", torch.zeros(()))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, decoder_norm: float = 0.1) -> None:
        """Random decoder rows of norm ``decoder_norm`` per model, the encoder their transpose (published init)."""
        torch.nn.init.normal_(self.W_dec)
        self.W_dec.mul_(decoder_norm / self.W_dec.norm(dim=-1, keepdim=True))
        self.W_enc.copy_(self.W_dec.permute(1, 2, 0))
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.zero_()

    def norms(self) -> torch.Tensor:
        """Decoder norms ``[d_sae, 2]``: each latent's norm in model A and in model B."""
        return self.W_dec.norm(dim=-1)

    def pre_activations(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """``x_A @ W_enc[0] + x_B @ W_enc[1] + b_enc`` for rows ``[n, d_in]`` of each model."""
        for x, name in ((xa, "A"), (xb, "B")):
            if x.shape[-1] != self.d_in:
                raise MmlensError(f"model {name}'s activations have width {x.shape[-1]}, the crosscoder's d_in is "
                                  f"{self.d_in}")
        if xa.shape != xb.shape:
            raise MmlensError(f"the two models' activations differ in shape: {list(xa.shape)} vs {list(xb.shape)}")
        return xa @ self.W_enc[0] + xb @ self.W_enc[1] + self.b_enc

    def activate(self, pre: torch.Tensor, batch: bool = False) -> torch.Tensor:
        """BatchTopK on ``relu(pre)`` ranked by decoder-norm-scaled activation (``batch``: training rule)."""
        f = pre.relu()
        scaled = f * self.norms().sum(-1)
        if batch:
            flat = scaled.reshape(-1)
            keep = flat.topk(min(self.k * scaled.shape[0], flat.numel())).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter(0, keep, True).reshape(f.shape)
        else:
            mask = scaled > self.threshold
        return f * mask

    def encode(self, xa: torch.Tensor, xb: torch.Tensor, batch: bool = False) -> torch.Tensor:
        """Latent activations ``[n, d_sae]`` of paired rows (inference: the learned threshold).

        Example:
            >>> Crosscoder(4, 8, k=2).encode(torch.randn(2, 4), torch.randn(2, 4)).shape
            torch.Size([2, 8])
        """
        return self.activate(self.pre_activations(xa, xb), batch)

    def decode(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two models' reconstructions of latent activations ``[n, d_sae]``."""
        return f @ self.W_dec[:, 0] + self.b_dec[0], f @ self.W_dec[:, 1] + self.b_dec[1]

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode(encode(xa, xb))``."""
        return self.decode(self.encode(xa, xb))

    def config(self) -> dict[str, Any]:
        """Plain JSON-able settings."""
        return {"kind": "crosscoder", "d_in": self.d_in, "d_sae": self.d_sae, "k": self.k, "site": self.site,
                "models": list(self.models), **self.extra}


def save_crosscoder(cc: Crosscoder, folder: str | Path) -> Path:
    """Write ``crosscoder.json`` + ``crosscoder.safetensors`` to ``folder`` (safetensors and JSON only).

    Example:
        >>> save_crosscoder(Crosscoder(4, 8, k=2), tmp / "cc")  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: getattr(cc, name).detach().contiguous().cpu() for name in TENSORS}, str(folder / WEIGHTS))
    (folder / CFG).write_text(json.dumps(cc.config(), indent=2) + "\n")
    return folder


def load_crosscoder(folder: str | Path) -> Crosscoder:
    """The crosscoder saved in ``folder``; one line when there is none.

    Example:
        >>> load_crosscoder(tmp / "cc").k  # doctest: +SKIP
        2
    """
    folder = Path(folder)
    if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
        raise MmlensError(f"no crosscoder at {folder}: it needs {CFG} and {WEIGHTS} (train one with "
                          "mmlens crosscoder train)")
    config = json.loads((folder / CFG).read_text())
    config.pop("kind", None)
    known = {key: config.pop(key) for key in ("d_in", "d_sae", "k", "site")}
    cc = Crosscoder(**known, models=tuple(config.pop("models", (None, None))), **config)
    weights = load_file(str(folder / WEIGHTS))
    with torch.no_grad():
        for name in TENSORS:
            if name not in weights or weights[name].shape != getattr(cc, name).shape:
                raise MmlensError(f"{folder / WEIGHTS}: {name} is missing or does not match {CFG}")
            getattr(cc, name).copy_(weights[name])
    return cc


class PairedActivations:
    """The same rows of one site in two stores harvested on the same samples.

    Example:
        >>> pair = PairedActivations("store-a/", "store-b/", "lm.L2.resid")  # doctest: +SKIP
        >>> xa, xb = pair.read([0, 1])  # doctest: +SKIP
    """

    def __init__(self, store_a: str | Path, store_b: str | Path, site: str, modality: str = "all") -> None:
        self.a = SiteActivations(store_a, site, modality)
        self.b = SiteActivations(store_b, site, modality)
        if self.a.width != self.b.width:
            raise MmlensError(f"{site} is {self.a.width} wide in {store_a} but {self.b.width} in {store_b}")
        keys = ("sample_id", "position")
        fa, fb = self.a.frame(), self.b.frame()
        if len(fa) != len(fb) or not all(np.array_equal(fa[key].to_numpy(), fb[key].to_numpy()) for key in keys):
            raise MmlensError(f"{store_a} and {store_b} do not hold the same samples and positions at {site}: "
                              "harvest both models over the same data")
        self.site, self.width, self.modality = site, self.a.width, modality
        self.names = (_model_name(self.a), _model_name(self.b))
        self.stores = (str(self.a.store.folder), str(self.b.store.folder))

    def __len__(self) -> int:
        return len(self.a)

    def read(self, rows: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both models' float32 activations of row numbers ``rows`` (all when None)."""
        return self.a.read(rows), self.b.read(rows)

    def frame(self):
        """The (shared) row table of model A's store."""
        return self.a.frame()

    def stream(self, batch_size: int, seed: int = 0, start: int = 0, stop: int | None = None):
        """Shuffled ``(x_A, x_B)`` batches: the same rows of both stores (see :meth:`SiteActivations.stream`)."""
        for xa, rows in self.a.stream(batch_size, seed, start, stop):
            yield xa, self.b.read(rows.numpy())


@dataclass
class CrosscoderConfig:
    """Settings of a crosscoder run (published defaults: expansion 32, k 100, AuxK 1/32, lr 1e-3).

    Example:
        >>> CrosscoderConfig().d_sae_for(128)
        4096
    """

    k: int = 100
    expansion: int = 32
    d_sae: int | None = None
    steps: int = 2000
    batch_size: int = 2048
    lr: float = 1e-3
    warmup_steps: int | None = None
    decay_fraction: float = 0.2
    aux_coefficient: float = 1 / 32
    k_aux: int | None = None  # None: d_in // 2
    dead_tokens: int = 1_000_000
    threshold_lr: float = 0.01
    modality: str = "all"
    seed: int = 0
    log_every: int = 50

    def d_sae_for(self, d_in: int) -> int:
        return int(self.d_sae or d_in * self.expansion)

    def lr_factor(self, step: int) -> float:
        """The same schedule as the SAE trainer's (warm-up, constant, linear decay)."""
        return TrainConfig(steps=self.steps, warmup_steps=self.warmup_steps,
                           decay_fraction=self.decay_fraction).lr_factor(step)


def train_crosscoder(pair: PairedActivations, config: CrosscoderConfig, out: str | Path | None = None, *,
                     progress: Callable[[int, dict[str, float]], None] | None = None) -> Crosscoder:
    """Train a crosscoder on ``pair``; with ``out``, save it there with ``training.json``.

    Example:
        >>> cc = train_crosscoder(pair, CrosscoderConfig(k=32, expansion=8, steps=500))  # doctest: +SKIP
    """
    d_sae = config.d_sae_for(pair.width)
    if config.k > d_sae:
        raise MmlensError(f"k={config.k} is larger than the number of latents d_sae={d_sae}")
    torch.manual_seed(config.seed)
    cc = Crosscoder(pair.width, d_sae, config.k, site=pair.site, models=pair.names, stores=list(pair.stores))
    with torch.no_grad():  # start b_dec at each model's mean, as the SAE trainer starts near the data
        sample = np.random.default_rng(config.seed).permutation(len(pair))[:16384]
        xa, xb = pair.read(sample)
        cc.b_dec.copy_(torch.stack([xa.mean(0), xb.mean(0)]))
    optimizer = torch.optim.Adam(cc.parameters(), lr=config.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    history, started = [], time.perf_counter()
    for step, (xa, xb) in enumerate(pair.stream(config.batch_size, config.seed, stop=config.steps)):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * config.lr_factor(step)
        metrics = _step(cc, optimizer, xa, xb, since_fired, config)
        if not math.isfinite(metrics["loss"]):
            raise MmlensError(f"the crosscoder loss is {metrics['loss']} at step {step + 1}; lower --lr")
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, **{key: round(value, 6) for key, value in metrics.items()}})
        if progress is not None:
            progress(step + 1, metrics)
    calibrate_threshold(cc, pair, seed=config.seed)
    seconds = time.perf_counter() - started
    if out is not None:
        save_crosscoder(cc, out)
        summary = {"config": asdict(config), "site": pair.site, "rows": len(pair), "d_in": pair.width,
                   "d_sae": d_sae, "seconds": round(seconds, 3),
                   "tokens_per_s": round(config.steps * config.batch_size / max(seconds, 1e-9), 1),
                   "history": history}
        (Path(out) / TRAINING).write_text(json.dumps(summary, indent=1) + "\n")
    return cc


@torch.no_grad()
def calibrate_threshold(cc: Crosscoder, pair: Any, rows: int = 16384, seed: int = 0) -> float:
    """Set the inference threshold so that ``rows`` random rows of ``pair`` fire ``k`` latents each on average.

    The running estimate kept during training lags behind the growing
    activations of a short run (measured: L0 41 at k=4 after 20 steps), so
    the end of training sets it from the data, as BatchTopK itself would pick.

    Example:
        >>> calibrate_threshold(cc, pair)  # doctest: +SKIP
        0.42
    """
    chosen = np.random.default_rng(seed).permutation(len(pair))[:rows]
    scaled = cc.pre_activations(*pair.read(chosen)).relu() * cc.norms().sum(-1)
    flat = scaled.reshape(-1)
    keep = min(cc.k * len(chosen), flat.numel())
    cc.threshold.copy_(flat.topk(keep).values[-1] if keep else torch.zeros(()))
    return float(cc.threshold)


def _model_name(acts: SiteActivations) -> str | None:
    """The model a store was harvested from (its manifest's name), if it says."""
    return getattr(acts.store, "model", None)


def _step(cc: Crosscoder, optimizer: torch.optim.Optimizer, xa: torch.Tensor, xb: torch.Tensor,
          since_fired: torch.Tensor, config: CrosscoderConfig) -> dict[str, float]:
    """One Adam step: FVU over both models + AuxK; fired counters and the inference threshold move."""
    pre = cc.pre_activations(xa, xb)
    f = cc.activate(pre, batch=True)
    ra, rb = cc.decode(f)
    x = torch.cat([xa, xb], -1)
    recon = torch.cat([ra, rb], -1)
    variance = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = (recon - x).pow(2).sum() / variance
    dead = since_fired >= config.dead_tokens
    aux = _auxk(cc, pre, (x - recon).detach(), dead, config.k_aux or cc.d_in // 2)
    loss = fvu + config.aux_coefficient * aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(cc.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        fired = (f > 0).any(0)
        since_fired.add_(xa.shape[0]).masked_fill_(fired, 0)
        scaled = (f * cc.norms().sum(-1))
        kept = scaled[scaled > 0]
        if kept.numel():  # the running minimum kept activation is the inference threshold
            lowest = kept.min()
            cc.threshold.copy_(lowest if float(cc.threshold) == 0 else
                               (1 - config.threshold_lr) * cc.threshold + config.threshold_lr * lowest)
    return {"loss": float(loss.detach()), "fvu": float(fvu.detach()), "aux": float(aux.detach()), "l0": float((f > 0).sum(-1).float().mean()),
            "dead": float(dead.float().mean())}


def _auxk(cc: Crosscoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK over both models: the top ``k_aux`` dead latents reconstruct the residual, as a FVU."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    top = pre.masked_fill(~dead, float("-inf")).topk(min(k_aux, n_dead), dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    recon = acts @ cc.W_dec.reshape(cc.d_sae, -1)
    return (recon - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)


__all__ = ["Crosscoder", "CrosscoderConfig", "PairedActivations", "calibrate_threshold", "load_crosscoder",
           "save_crosscoder",
           "train_crosscoder"]
