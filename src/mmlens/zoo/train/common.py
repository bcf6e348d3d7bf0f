"""Pieces every zoo training recipe shares: schedule, init, checkpoints, logging.

Example:
    >>> lr_factor(0, 100, 10)
    0.1
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero.

    Example:
        >>> lr_factor(0, 100, 10), lr_factor(100, 100, 10)
        (0.1, 0.0)
    """
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def init_for_training(*modules: nn.Module) -> None:
    """Re-initialise linear layers (std ``1/sqrt(fan_in)``) and embeddings (std 1).

    transformers' LLaMA init (std 0.02 everywhere) leaves a 128-wide decoder
    with near-zero attention logits whose gradients are near zero too: stage 2
    then sat for thousands of steps at "some object's colour" (67% colour
    accuracy even on perfect one-hot patch features); with this init the same
    run reaches 100% in 200 steps.

    Example:
        >>> layer = nn.Linear(256, 4)
        >>> init_for_training(layer)
        >>> 0.04 < float(layer.weight.std()) < 0.09
        True
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1.0)


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves half a checkpoint


def _resume(path: Path, opt: torch.optim.Optimizer, stage: str, **modules: nn.Module) -> int:
    """Load a stage's checkpoint (written by :func:`_save_state`) into ``modules`` and ``opt``; the step to start at.

    ``modules`` name the checkpoint's keys (``tower=...``, ``head=...`` or ``model=...``); 0 when there is none.
    """
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=True)
    for key, module in modules.items():
        module.load_state_dict(state[key])
    opt.load_state_dict(state["opt"])
    _log(f"{stage}: resuming at step {state['step']}")
    return state["step"]


def _reuse_tower(tower: nn.Module, cache: Path) -> bool:
    """Load a stage-1 tower cached by :func:`_cache_tower`; False when there is none."""
    if not cache.exists():
        return False
    tower.load_state_dict(load_file(cache))
    _log(f"stage 1: reusing {cache}")
    return True


def _cache_tower(tower: nn.Module, cache: Path, checkpoint: Path) -> None:
    """Save the trained stage-1 tower for reuse and drop the stage's resume checkpoint."""
    tower.eval()
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, cache)
    checkpoint.unlink(missing_ok=True)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _optimise(opt: torch.optim.Optimizer, params: list, loss: torch.Tensor, lr: float) -> None:
    """One clipped AdamW step at learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _run_stage(name: str, total: int, start: int, step_fn, save_fn, every: int = 100) -> None:
    """Loop ``step_fn(step) -> (loss, acc)`` with progress and checkpoints."""
    t0, seen, stats = time.time(), 0, []
    for step in range(start, total):
        stats.append(step_fn(step))
        seen += 1
        if (step + 1) % 25 == 0 or step + 1 == total:
            loss, acc = np.mean(stats, axis=0)
            rate = seen / (time.time() - t0)
            _log(f"{name} step {step + 1}/{total} loss {loss:.3f} acc {acc:.3f} "
                 f"{rate:.2f} steps/s eta {(total - step - 1) / rate / 60:.1f} min")
            stats = []
        if (step + 1) % every == 0 and step + 1 < total:
            save_fn(step + 1)


def _fmt(acc: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in acc.items())
