"""Unlearning methods: gradient ascent, gradient difference and NPO, on a zoo LLaVA with its tower frozen.

Each step draws ``batch`` forget examples and (for methods with a retain
term) ``batch`` retain examples, in a seeded order (the zoo fine-tuner's
:func:`~mmlens.zoo.train.finetune.order`), and takes one clipped AdamW step
on the projector and decoder:

- ``ga``, gradient ascent: minimise ``-CE(forget)``;
- ``gd``, gradient difference: ``-CE(forget) + CE(retain)``;
- ``npo``, negative preference optimisation (Zhang et al., 2024):
  ``-(2 / beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))`` on
  the forget set, ``p_ref`` the model before unlearning (computed once);
- ``npo-rt``: NPO plus ``CE(retain)``.

The vision tower's features are cached once per example (as the fine-tuner
does), so a step runs only projector and decoder.

Example:
    >>> import mmlens
    >>> from mmlens.audit.unlearning import forget_set, retain_set
    >>> model = mmlens.load("shapes-llava")
    >>> log = unlearn(model, "gd", forget_set("train", 32), retain_set("train", 32),
    ...               UnlearnConfig(steps=5, batch=8))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mmlens.errors import MmlensError, check_choice
from mmlens.zoo.train.common import _optimise
from mmlens.zoo.train.finetune import (IGNORE, FinetuneConfig, _FeatureCache, _trainable, as_example, encode_examples,
                                       forward_on_features, order)

#: The methods :func:`unlearn` knows, and whether each has a retain term.
METHODS: dict[str, bool] = {"ga": False, "gd": True, "npo": False, "npo-rt": True}


@dataclass
class UnlearnConfig:
    """Step budget and optimiser of one unlearning run (the same for every method in a comparison)."""

    steps: int = 40
    batch: int = 16
    lr: float = 3e-4  # 1e-4 left gradient difference at 98% forget accuracy after 30 steps
    beta: float = 1.0  # NPO's inverse temperature (the NPO paper: 0.1; here 0.1 made NPO follow GA step for step)
    retain_weight: float = 1.0
    seed: int = 0


def check_method(method: str) -> str:
    """``method`` if :func:`unlearn` knows it, else one line.

    Example:
        >>> check_method("npo")
        'npo'
    """
    return check_choice(method, METHODS, "unlearning method")


class _Stream:
    """Encoded batches of one example set, in the fine-tuner's seeded order, tower features cached."""

    def __init__(self, hf: Any, processor: Any, samples: Sequence[Any], batch: int, seed: int) -> None:
        self.examples = [as_example(s) for s in samples]
        if not self.examples:
            raise MmlensError("an unlearning set is empty")
        self.hf, self.processor = hf, processor
        self.cfg = FinetuneConfig(batch=batch, seed=seed)
        self.cache = _FeatureCache(hf, processor, self.examples, chunk=256)

    def answer_logprobs(self, idx: np.ndarray) -> torch.Tensor:
        """Per example, the mean log-probability of its answer tokens under the current weights."""
        batch = encode_examples(self.processor, [self.examples[i] for i in idx])
        logits = forward_on_features(self.hf, batch["input_ids"], batch["attention_mask"], self.cache.get(idx))
        labels, logits = batch["labels"][:, 1:], logits[:, :-1].float()
        keep = labels != IGNORE
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (logp * keep).sum(1) / keep.sum(1).clamp_min(1)

    def step_indices(self, step: int) -> np.ndarray:
        return order(len(self.examples), self.cfg, step)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO's forget loss from per-example log-probabilities under the model and the reference.

    At ``logp == ref_logp`` it is ``(2 / beta) log 2``; it falls as ``logp`` falls.

    Example:
        >>> round(npo_loss(torch.zeros(3), torch.zeros(3), 0.1).item(), 3)
        13.863
    """
    return -(2.0 / beta) * nn.functional.logsigmoid(-beta * (logp - ref_logp)).mean()


def unlearn(model: Any, method: str, forget: Sequence[Any], retain: Sequence[Any], cfg: UnlearnConfig,
            log_every: int = 10) -> dict[str, Any]:
    """Unlearn ``forget`` from ``model`` (an :class:`mmlens.Model` of a LLaVA) in place; returns a log.

    Example:
        >>> log = unlearn(model, "npo", forget, retain, UnlearnConfig(steps=20))  # doctest: +SKIP
        >>> log["method"]
        'npo'
    """
    check_method(method)
    if cfg.steps < 1 or cfg.batch < 1 or cfg.lr <= 0 or cfg.beta <= 0:
        raise MmlensError(f"steps, batch, lr and beta must be positive (got {cfg.steps}, {cfg.batch}, "
                          f"{cfg.lr}, {cfg.beta})")
    hf, processor = model.hf, model.processor
    if not hasattr(getattr(hf, "model", None), "multi_modal_projector"):
        raise MmlensError(f"{model.name}: unlearning here needs a LLaVA (a vision tower and a projector)")
    params = _trainable(hf, FinetuneConfig())
    forget_stream = _Stream(hf, processor, forget, cfg.batch, cfg.seed)
    retain_stream = _Stream(hf, processor, retain, cfg.batch, cfg.seed + 1) if METHODS[method] else None
    ref = None
    if method.startswith("npo"):  # the reference is the model before unlearning: one pass, no graph
        with torch.no_grad():
            ref = forget_stream.answer_logprobs(np.arange(len(forget_stream.examples)))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    hf.train()
    hf.model.vision_tower.eval()
    t0, history = time.time(), []
    for step in range(cfg.steps):
        idx = forget_stream.step_indices(step)
        logp = forget_stream.answer_logprobs(idx)
        loss = npo_loss(logp, ref[idx], cfg.beta) if ref is not None else logp.mean()  # ga/gd: ascend CE = -(-logp)
        retain_ce = torch.zeros(())
        if retain_stream is not None:
            retain_ce = -retain_stream.answer_logprobs(retain_stream.step_indices(step)).mean()
            loss = loss + cfg.retain_weight * retain_ce
        _optimise(opt, params, loss, cfg.lr)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "forget_logp": round(logp.mean().item(), 4),
                            "retain_ce": round(retain_ce.item(), 4)})
    hf.eval()
    return {"method": method, "config": asdict(cfg), "n_forget": len(forget), "n_retain": len(retain),
            "seconds": round(time.time() - t0, 1), "history": history}


def save_unlearned(model: Any, folder: str | Path, record: dict[str, Any]) -> Path:
    """Write the model (safetensors + configs + processor) and ``unlearning.json`` to ``folder``.

    ``mmlens.load(folder)`` reloads it.

    Example:
        >>> save_unlearned(model, "out/unlearning/gd", log)  # doctest: +SKIP
    """
    from mmlens.store.files import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.hf.save_pretrained(folder, safe_serialization=True)
    model.processor.save_pretrained(folder)
    write_json_atomic(folder / "unlearning.json", record)  # last and whole: its presence marks a finished model
    return folder
