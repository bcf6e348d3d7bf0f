"""Training checkpoints of an SAE: weights, optimizer and loop state, replaced atomically.

``out/checkpoint/`` holds the SAE (:func:`~mmlens.sae.files.save_sae`, plain
format so a BatchTopK SAE stays one), ``optimizer.safetensors`` (Adam's
moments and the per-latent counters) and ``state.json`` (step, settings,
history). A new checkpoint is written to ``out/.checkpoint-tmp`` and swapped
in by renames, so a kill at any moment leaves one whole checkpoint.

Example:
    >>> write_checkpoint(out, sae, optimizer, {"step": 500}, {"since_fired": since})  # doctest: +SKIP
    >>> sae, tensors, state = read_checkpoint(out)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.sae.files import load_sae, save_sae
from mmlens.sae.model import SparseAutoencoder

CHECKPOINT, TMP, OLD = "checkpoint", ".checkpoint-tmp", ".checkpoint-old"
STATE, OPTIMIZER = "state.json", "optimizer.safetensors"


def write_checkpoint(out: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     tensors: dict[str, torch.Tensor]) -> Path:
    """Replace ``out/checkpoint`` with this one; returns its folder.

    ``tensors`` are extra loop tensors (e.g. steps since each latent fired).
    """
    tmp, final, old = out / TMP, out / CHECKPOINT, out / OLD
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(sae, tmp, plain=True)
    flat = dict(tensors)
    for index, param in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(param, {}).items():
            flat[f"adam.{index}.{key}"] = value.detach().reshape(value.shape).contiguous().cpu()
    save_file({name: value.contiguous().cpu() for name, value in flat.items()}, str(tmp / OPTIMIZER))
    (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path) -> Path | None:
    """The whole checkpoint in ``out``, if any (the old one when a kill hit the swap)."""
    for name in (CHECKPOINT, OLD):
        if (out / name / STATE).is_file():
            return out / name
    return None


def read_checkpoint(folder: Path, optimizer_params: list[torch.nn.Parameter] | None = None
                    ) -> tuple[SparseAutoencoder, dict[str, torch.Tensor], dict[str, Any]]:
    """The SAE, the extra tensors (``adam.*`` included) and the state of a checkpoint folder."""
    try:
        state = json.loads((folder / STATE).read_text())
        tensors = load_file(str(folder / OPTIMIZER))
    except (OSError, ValueError) as error:
        raise MmlensError(f"the checkpoint at {folder} is unreadable ({error}); remove it to start over") from None
    return load_sae(folder), tensors, state


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put Adam's saved moments and step counts back into ``optimizer`` (same parameter order).

    Moments go to their parameter's device; step counts stay on the CPU, where Adam keeps them.
    """
    for index, param in enumerate(optimizer.param_groups[0]["params"]):
        saved = {key.split(".", 2)[2]: value for key, value in tensors.items() if key.startswith(f"adam.{index}.")}
        if saved:
            optimizer.state[param] = {key: value.clone() if key == "step" else value.to(param.device, copy=True)
                                      for key, value in saved.items()}


__all__ = ["find_checkpoint", "read_checkpoint", "restore_optimizer", "write_checkpoint"]
