"""Saving and loading a trained SAE: SAELens' folder layout (``cfg.json`` + ``sae_weights.safetensors``).

:func:`save_sae` and :func:`load_sae` go through :mod:`mmlens.sae.saelens`
(SAELens 6 files, a BatchTopK SAE exported as ``jumprelu``) when it is there,
and otherwise write the same two files with mmlens' own config. Either way
no pickle: safetensors and JSON only.

Example:
    >>> save_sae(SparseAutoencoder(8, 32, "topk", k=4), "sae/")  # doctest: +SKIP
    >>> load_sae("sae/").k  # doctest: +SKIP
    4
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.sae.model import SparseAutoencoder

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _saelens():
    try:
        from mmlens.sae import saelens
    except ImportError:  # not landed yet: the plain writer below
        return None
    return saelens if hasattr(saelens, "save_saelens") and hasattr(saelens, "load_saelens") else None


def save_sae(sae: SparseAutoencoder, folder: str | Path, plain: bool = False) -> Path:
    """Write ``sae`` to ``folder`` (created) as ``cfg.json`` + ``sae_weights.safetensors``; returns the folder.

    ``plain=True`` always writes mmlens' own config, which keeps the exact
    architecture (a BatchTopK SAE stays one): training checkpoints use it.

    Example:
        >>> save_sae(sae, tmp / "sae").joinpath("cfg.json").exists()  # doctest: +SKIP
        True
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    interop = None if plain else _saelens()
    if interop is not None:
        interop.save_saelens(sae, folder)
        return folder
    tensors = {name: getattr(sae, name).detach().contiguous().cpu() for name in TENSORS}
    save_file(tensors, str(folder / WEIGHTS))
    (folder / CFG).write_text(json.dumps({**sae.config(), "format": "mmlens"}, indent=2) + "\n")
    return folder


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """The SAE saved in ``folder``; one clear line when it is missing or not an SAE.

    Example:
        >>> load_sae(tmp / "sae").architecture  # doctest: +SKIP
        'topk'
    """
    folder = Path(folder)
    if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
        raise MmlensError(f"no SAE at {folder}: it needs {CFG} and {WEIGHTS} (train one with mmlens sae train)")
    config = json.loads((folder / CFG).read_text())
    interop = _saelens()
    if interop is not None and config.get("format") != "mmlens":
        return interop.load_saelens(folder)
    config.pop("format", None)
    sae = SparseAutoencoder.from_config(config)
    weights = load_file(str(folder / WEIGHTS))
    missing = [name for name in TENSORS[:4] if name not in weights]
    if missing:
        raise MmlensError(f"{folder / WEIGHTS} lacks {', '.join(missing)}")
    with torch.no_grad():
        for name, value in weights.items():
            if name in TENSORS:
                getattr(sae, name).copy_(value)
    return sae


__all__ = ["load_sae", "save_sae"]
