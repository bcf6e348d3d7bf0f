"""Training an SAE on one site of an activation store.

The loop (:func:`train_sae`):

- batches from :class:`~mmlens.sae.activations.SiteActivations` (shuffled,
  a pure function of seed and step, so a resumed run reads the same ones);
- loss: the batch's fraction of variance unexplained, plus ``l1_coefficient``
  x the latents' L1 (``standard``, scaled by the batch's RMS norm) or
  ``aux_coefficient`` x AuxK (``topk``/``batchtopk``, Gao et al.: the top
  ``k_aux`` dead latents reconstruct the residual; dead = not fired for
  ``dead_tokens`` tokens);
- Adam, linear warm-up then constant then linear decay to 0 over the last
  ``decay_fraction`` of the steps; gradients clipped to norm 1;
- decoder rows at unit norm: the gradient's component along each row is
  removed before the step and the rows renormalised after (Gao et al.).
  ``decoder_init_norm=0.1`` instead starts free rows at that norm with
  activations rescaled by the rows' norms (SAELens' TopK default,
  :class:`~mmlens.sae.model.SparseAutoencoder`'s ``rescale_acts_by_decoder_norm``);
  small rows make Adam's fixed-size steps larger relative to the weights, so
  the same ``lr`` trains faster early on. The finished SAE is folded to
  unit-norm rows either way;
- ``b_dec`` starts at the geometric median (or mean) of a sample of rows;
- BatchTopK learns its inference threshold as a running average (rate
  ``threshold_lr``) of the smallest activation each batch keeps;
- a checkpoint every ``checkpoint_every`` steps (:mod:`mmlens.sae.checkpoint`):
  a killed run started again continues and ends with the same weights;
- a NaN or infinite loss stops the run with its step number and keeps the
  last good checkpoint.

Example:
    >>> acts = SiteActivations("store/", "lm.L2.resid")  # doctest: +SKIP
    >>> sae = train_sae(acts, TrainConfig(k=32, expansion=8, steps=2000), out="sae/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from mmlens.errors import MmlensError, check_choice
from mmlens.sae.activations import SiteActivations, TensorActivations
from mmlens.sae.checkpoint import find_checkpoint, read_checkpoint, restore_optimizer, write_checkpoint
from mmlens.sae.files import save_sae
from mmlens.sae.model import ARCHITECTURES, SparseAutoencoder

TRAINING = "training.json"
RESUMABLE = {"steps", "checkpoint_every", "log_every"}  # settings a resumed run may change


@dataclass
class TrainConfig:
    """Settings of an SAE training run (all JSON-able; saved with every checkpoint).

    Example:
        >>> TrainConfig(architecture="batchtopk", k=16).d_sae_for(128)
        1024
    """

    architecture: str = "topk"
    k: int | None = 32
    expansion: int = 8
    d_sae: int | None = None  # overrides expansion
    steps: int = 2000
    batch_size: int = 4096
    lr: float | None = None  # None: Gao et al.'s 2e-4 / sqrt(d_sae / 2**14)
    warmup_steps: int | None = None  # None: 5% of the steps
    decay_fraction: float = 0.2
    l1_coefficient: float = 1.0
    aux_coefficient: float = 1 / 32
    k_aux: int | None = None  # None: d_in // 2
    dead_tokens: int = 1_000_000
    threshold_lr: float = 0.01
    decoder_init_norm: float | None = None  # None: unit-norm rows throughout; 0.1: SAELens' free rows
    b_dec_init: str = "geometric_median"
    modality: str = "all"
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50

    def d_sae_for(self, d_in: int) -> int:
        """The number of latents for inputs of width ``d_in``."""
        return int(self.d_sae or self.expansion * d_in)

    def learning_rate(self, d_sae: int) -> float:
        """``lr``, or Gao et al.'s scaling rule for ``d_sae`` latents."""
        return float(self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2 ** 14))

    def lr_factor(self, step: int) -> float:
        """The schedule's multiplier at (0-based) ``step``: warm-up, constant, linear decay to 0.

        Example:
            >>> [round(TrainConfig(steps=10, warmup_steps=2, decay_fraction=0.5).lr_factor(s), 2) for s in (0, 4, 9)]
            [0.5, 1.0, 0.2]
        """
        warmup = self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)
        factor = min(1.0, (step + 1) / max(1, warmup))
        decay = int(self.steps * self.decay_fraction)
        if decay > 0 and step >= self.steps - decay:
            factor = min(factor, (self.steps - step) / decay)
        return factor

    def check(self) -> None:
        """One clear line for a setting that cannot work."""
        check_choice(self.architecture, ARCHITECTURES, "SAE architecture")
        if self.architecture == "jumprelu":  # no straight-through estimator here: it would train a plain ReLU
            raise MmlensError("jumprelu SAEs are loaded and evaluated, not trained, by mmlens: train batchtopk, "
                              "which is saved as a jumprelu SAE")
        if self.steps < 1 or self.batch_size < 1:
            raise MmlensError("steps and batch size must be at least 1")
        if self.decoder_init_norm is not None and not self.decoder_init_norm > 0:
            raise MmlensError(f"decoder_init_norm must be positive (or None for unit norm), got {self.decoder_init_norm}")
        check_choice(self.b_dec_init, ("geometric_median", "mean", "zeros"), "b_dec init")


def geometric_median(x: torch.Tensor, iterations: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The geometric median of the rows of ``x`` (Weiszfeld's iterations).

    Example:
        >>> geometric_median(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])).round(decimals=1).tolist()
        [0.5, 0.5]
    """
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(1e-8)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() <= tol * (median.norm() + 1e-12):
            return new
        median = new
    return median


def auxk_loss(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              k_aux: int) -> torch.Tensor:
    """Gao et al.'s AuxK loss: the top ``k_aux`` dead latents' reconstruction of ``residual``, as a FVU.

    Example:
        >>> float(auxk_loss(sae, pre, x - sae(x), torch.zeros(sae.d_sae, dtype=torch.bool), 8))  # doctest: +SKIP
        0.0
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    top = masked.topk(min(k_aux, n_dead), dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    recon = sae.decode_directions(acts)  # no b_dec: it reconstructs an error, not an activation
    return (recon - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)


def train_sae(acts: SiteActivations | TensorActivations, config: TrainConfig, out: str | Path | None = None, *,
              progress: Callable[[int, dict[str, float]], None] | None = None,
              on_step: Callable[[int], None] | None = None,
              device: str | torch.device | None = None) -> SparseAutoencoder:
    """Train an SAE on ``acts``; with ``out``, checkpoint there, resume from there, and save the result there.

    ``device`` is where the SAE trains: by default a GPU when there is one,
    else the CPU. Batches move there as they are read; checkpoints are written
    from the CPU, so a run may resume on another device.

    ``progress(step, metrics)`` is called after each step, ``on_step(step)``
    too (tests stop a run with it). The finished SAE is saved in ``out``
    (:func:`~mmlens.sae.files.save_sae`) with ``training.json`` (settings,
    history, speed).

    Example:
        >>> sae = train_sae(SiteActivations(store, "lm.L1.resid"), TrainConfig(steps=100, batch_size=256))  # doctest: +SKIP
    """
    config.check()
    out = Path(out) if out is not None else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d_sae = config.d_sae_for(acts.width)
    sae = SparseAutoencoder(acts.width, d_sae, config.architecture, config.k, site=acts.site,
                            rescale_acts_by_decoder_norm=config.decoder_init_norm is not None, **_provenance(acts))
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(d_sae))
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)  # tokens since each latent last fired
    state: dict[str, Any] = {"step": 0, "history": [], "threshold_set": False, "seconds": 0.0}
    saved = find_checkpoint(out) if out is not None else None
    if saved is not None:
        sae, since_fired, state = _resume(saved, config, optimizer, sae)
    else:
        torch.manual_seed(config.seed)
        sae.reset_parameters(config.decoder_init_norm or 1.0)
        _init_b_dec(sae, acts, config)
    started, first = time.perf_counter() - state["seconds"], state["step"]
    for step, (x, _) in enumerate(acts.stream(config.batch_size, config.seed, start=first, stop=config.steps),
                                  start=first):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(d_sae) * config.lr_factor(step)
        metrics = _step(sae, optimizer, x.to(device, non_blocking=True), since_fired, config, state)
        done = step + 1
        if not math.isfinite(metrics["loss"]):
            last = find_checkpoint(out) if out is not None else None
            kept = f"the last good checkpoint ({json.loads((last / 'state.json').read_text())['step']} steps) is kept " \
                   f"in {last}" if last is not None else "no checkpoint was written yet"
            raise MmlensError(f"the SAE loss is {metrics['loss']} at step {done}; {kept}; lower --lr or check the store")
        state["step"] = done
        if done % config.log_every == 0 or done == config.steps:
            state["history"].append({"step": done, **{k: round(v, 6) for k, v in metrics.items()}})
        if out is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            state["seconds"] = time.perf_counter() - started
            write_checkpoint(out, sae, optimizer, {**state, "config": asdict(config)}, {"since_fired": since_fired})
        if progress is not None:
            progress(done, metrics)
        if on_step is not None:
            on_step(done)
    state["seconds"] = time.perf_counter() - started
    sae.fold_decoder_norm()  # the checkpoint keeps the free rows (a rerun resumes from them); files hold unit rows
    if out is not None:
        save_sae(sae, out)
        summary = {"config": asdict(config), "site": acts.site, "d_in": acts.width, "d_sae": d_sae,
                   "rows": len(acts), "steps": state["step"], "tokens": state["step"] * config.batch_size,
                   "seconds": round(state["seconds"], 3),
                   "tokens_per_s": round(state["step"] * config.batch_size / max(state["seconds"], 1e-9), 1),
                   "history": state["history"]}
        (out / TRAINING).write_text(json.dumps(summary, indent=1) + "\n")
    return sae


def _step(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, since_fired: torch.Tensor,
          config: TrainConfig, state: dict[str, Any]) -> dict[str, float]:
    """One optimizer step on batch ``x``; updates the fired counters and BatchTopK's threshold."""
    pre = sae.pre_activations(x)
    acts = sae.activate(pre, batch=sae.architecture == "batchtopk")
    recon = sae.decode(acts)
    centred = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = (recon - x).pow(2).sum() / centred
    loss = fvu
    aux = x.new_zeros(())
    if sae.architecture == "standard":
        rms = (centred / x.shape[0]).sqrt()
        aux = acts.sum(-1).mean() / rms
        loss = loss + config.l1_coefficient * aux
    elif sae.architecture in ("topk", "batchtopk") and config.aux_coefficient > 0:
        dead = since_fired >= config.dead_tokens
        aux = auxk_loss(sae, pre, (x - recon).detach(), dead, config.k_aux or sae.d_in // 2)
        loss = loss + config.aux_coefficient * aux
    if not torch.isfinite(loss):
        return {"loss": float(loss.detach())}
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        if not sae.rescale and sae.W_dec.grad is not None:  # no step along the rows: their norm is fixed at 1
            sae.W_dec.grad -= (sae.W_dec.grad * sae.W_dec).sum(-1, keepdim=True) * sae.W_dec
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()
    if not sae.rescale:
        sae.normalize_decoder()
    with torch.no_grad():
        fired = (acts > 0).any(0)
        since_fired += x.shape[0]
        since_fired[fired] = 0
        if sae.architecture == "batchtopk" and bool((acts > 0).any()):
            smallest = float(acts[acts > 0].min())
            current = float(sae.threshold[0]) if state["threshold_set"] else smallest
            sae.threshold.fill_((1 - config.threshold_lr) * current + config.threshold_lr * smallest)
            state["threshold_set"] = True
    return {"loss": float(loss.detach()), "fvu": float(fvu.detach()), "aux": float(aux.detach()),
            "l0": float((acts > 0).sum(-1).float().mean()),
            "dead": float((since_fired >= config.dead_tokens).float().mean()),
            "lr": optimizer.param_groups[0]["lr"]}


def _init_b_dec(sae: SparseAutoencoder, acts: SiteActivations, config: TrainConfig) -> None:
    if config.b_dec_init == "zeros":
        return
    rng = torch.Generator().manual_seed(config.seed)
    sample = acts.read(torch.randperm(len(acts), generator=rng)[:16384].numpy())
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(sample) if config.b_dec_init == "geometric_median" else sample.mean(0))


def _resume(folder: Path, config: TrainConfig, optimizer: torch.optim.Optimizer, fresh: SparseAutoencoder
            ) -> tuple[SparseAutoencoder, torch.Tensor, dict[str, Any]]:
    """Load a checkpoint into ``fresh`` (whose parameters ``optimizer`` holds), refusing other settings."""
    sae, tensors, state = read_checkpoint(folder)
    saved = TrainConfig(**{f.name: state["config"][f.name] for f in fields(TrainConfig) if f.name in state["config"]})
    changed = [f.name for f in fields(TrainConfig)
               if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)]
    if changed or sae.d_in != fresh.d_in or sae.site != fresh.site:
        what = ", ".join(changed) or "site or width"
        raise MmlensError(f"{folder.parent} holds a run with other settings ({what}); use another --out or --overwrite")
    with torch.no_grad():
        for name, value in sae.state_dict().items():
            fresh.state_dict()[name].copy_(value)
    restore_optimizer(optimizer, tensors)
    since_fired = tensors["since_fired"].to(fresh.W_dec.device)
    return fresh, since_fired, {key: value for key, value in state.items() if key != "config"}


def _provenance(acts: SiteActivations | TensorActivations) -> dict[str, Any]:
    """What the SAE was trained on, kept in its config (nothing of a store for in-memory activations)."""
    if acts.store is None:
        return {"modality": acts.modality}
    return {"model": acts.store.model, "store": str(acts.store.folder), "modality": acts.modality}


__all__ = ["TrainConfig", "auxk_loss", "geometric_median", "train_sae"]
