"""SAELens 6 files both ways: ``cfg.json`` + ``sae_weights.safetensors``.

What SAELens 6 (checked against sae-lens 6.54) writes and reads, per architecture:

- tensors ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``,
  ``b_dec [d_in]``, and ``threshold [d_sae]`` for ``jumprelu`` only; its
  loader is strict on the names, so nothing else goes in the file;
- ``cfg.json``: ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
  ``normalize_activations``, ``reshape_activations``, ``architecture``, ``k`` and
  ``rescale_acts_by_decoder_norm`` for ``topk``, and ``metadata`` (a free dict:
  ``sae_lens_version``, ``hook_name``, ``model_name``, ...). A missing or
  pre-6.0 version goes through SAELens' legacy converter; we follow it.

A BatchTopK SAE is exported as ``jumprelu`` with its learned threshold, as
SAELens does; ``metadata.mmlens`` keeps mmlens' own settings, so loading the
file back into mmlens gives the BatchTopK SAE again (SAELens ignores it).

Loading folds what SAELens does at run time into the weights, so our
:class:`~mmlens.sae.model.SparseAutoencoder` encodes the same:
``apply_b_dec_to_input = false`` moves ``b_dec @ W_enc`` into ``b_enc``;
``rescale_acts_by_decoder_norm`` scales ``W_enc``/``b_enc`` by the decoder
norms and divides ``W_dec`` by them.

Example:
    >>> save_saelens(SparseAutoencoder(8, 32, "topk", k=4), "sae/")  # doctest: +SKIP
    >>> load_saelens("sae/").k  # doctest: +SKIP
    4
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlens.errors import MmlensError
from mmlens.sae.model import SparseAutoencoder

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
FORMAT_VERSION = "6.0.0"  # the SAELens file format we write (its loader reads >= 6.0 as is)
LOADABLE = ("standard", "topk", "jumprelu")
# SAELens applies these two per token at run time; the others are identity at inference
RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")
OWN_KEYS = ("architecture", "d_in", "d_sae", "k", "site", "apply_b_dec_to_input")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def saelens_architecture(sae: SparseAutoencoder) -> str:
    """The architecture name SAELens knows ``sae`` by (BatchTopK runs as JumpReLU at inference).

    Example:
        >>> saelens_architecture(SparseAutoencoder(4, 8, "batchtopk", k=2))
        'jumprelu'
    """
    return "jumprelu" if sae.architecture == "batchtopk" else sae.architecture


def saelens_config(sae: SparseAutoencoder) -> dict[str, Any]:
    """The ``cfg.json`` SAELens 6 reads for ``sae``.

    Example:
        >>> saelens_config(SparseAutoencoder(4, 8, "topk", k=2, site="lm.L1.resid"))["metadata"]["hook_name"]
        'lm.L1.resid'
    """
    architecture = saelens_architecture(sae)
    metadata: dict[str, Any] = {"sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": FORMAT_VERSION,
                                "hook_name": sae.site, "mmlens": sae.config()}
    if sae.extra.get("model") is not None:
        metadata["model_name"] = sae.extra["model"]
    cfg: dict[str, Any] = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": _dtype_name(sae.W_enc.dtype),
                           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
                           "reshape_activations": "none", "metadata": metadata}
    if architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    cfg["architecture"] = architecture
    return cfg


def save_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae`` to ``folder`` (created) as SAELens 6 files; returns the folder.

    Example:
        >>> save_saelens(SparseAutoencoder(8, 32, "jumprelu"), tmp / "sae").joinpath("cfg.json").exists()  # doctest: +SKIP
        True
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = _tensor_names(saelens_architecture(sae))
    save_file({name: getattr(sae, name).detach().contiguous().cpu() for name in names}, str(folder / WEIGHTS))
    (folder / CFG).write_text(json.dumps(saelens_config(sae), indent=2) + "\n")
    return folder


def load_saelens(folder: str | Path) -> SparseAutoencoder:
    """The SAE in a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), as an mmlens SAE.

    Bad files (no config, unknown architecture, missing or misshapen tensors,
    a run-time normalisation mmlens does not apply) give one line.

    Example:
        >>> load_saelens(tmp / "sae").architecture  # doctest: +SKIP
        'jumprelu'
    """
    folder = Path(folder)
    cfg = upgrade_config(_read_config(folder))
    architecture = cfg.get("architecture")
    if architecture not in LOADABLE:
        raise MmlensError(f"{folder / CFG}: SAELens architecture {architecture!r} is not one mmlens loads "
                          f"(it loads {', '.join(LOADABLE)})")
    norm = cfg.get("normalize_activations", "none")
    if norm in RUNTIME_NORMS:
        raise MmlensError(f"{folder / CFG}: normalize_activations={norm!r} rescales each token at run time, "
                          "which mmlens' SAE does not do; fold it into the weights first")
    weights = _read_weights(folder, architecture, int(cfg["d_in"]), int(cfg["d_sae"]))
    metadata = cfg.get("metadata") or {}
    own = metadata.get("mmlens") if isinstance(metadata.get("mmlens"), dict) else {}
    extra = {key: value for key, value in own.items() if key not in OWN_KEYS}
    kind, k = architecture, cfg.get("k")
    if architecture == "jumprelu" and own.get("architecture") == "batchtopk":
        kind, k = "batchtopk", own.get("k")  # our own BatchTopK export: give it back as one
    sae = SparseAutoencoder(int(cfg["d_in"]), int(cfg["d_sae"]), kind, k=int(k) if k is not None else None,
                            site=metadata.get("hook_name") or cfg.get("hook_name"), **extra)
    _fold_runtime(weights, cfg)
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    return sae


def upgrade_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A pre-6.0 SAELens config in 6.0 terms (SAELens' own legacy rules); a 6.x config unchanged.

    Example:
        >>> upgrade_config({"d_in": 4, "d_sae": 8, "hook_point": "blocks.0.hook_resid_pre"})["hook_name"]
        'blocks.0.hook_resid_pre'
    """
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if version and _version_tuple(str(version)) >= (6, 0, 0):
        return cfg
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    new = {renames.get(key, key): value for key, value in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    if new.get("activation_fn") == "topk" and (new.get("activation_fn_kwargs") or {}).get("k") is not None:
        new["architecture"], new["k"] = "topk", new["activation_fn_kwargs"]["k"]
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    return new


def _fold_runtime(weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """Fold SAELens' run-time options into plain weights, in the order SAELens applies them."""
    if cfg.get("architecture") == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # hidden_pre * |W_dec| then acts / |W_dec| @ W_dec: the same as scaled encoder, unit decoder
        norms = weights["W_dec"].norm(dim=-1)
        weights["W_enc"] = weights["W_enc"] * norms
        weights["b_enc"] = weights["b_enc"] * norms
        weights["W_dec"] = weights["W_dec"] / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        # x @ W + b == (x - b_dec) @ W + (b + b_dec @ W): our SAE always subtracts b_dec
        weights["b_enc"] = weights["b_enc"] + weights["b_dec"] @ weights["W_enc"]


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CFG
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise MmlensError(f"no SAELens SAE at {folder}: it needs {CFG} and {WEIGHTS}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MmlensError(f"{path} is not JSON: {error}") from None
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise MmlensError(f"{path} is not an SAE config: it needs d_in and d_sae")
    return cfg


def _read_weights(folder: Path, architecture: str, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    try:
        weights = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise MmlensError(f"{folder / WEIGHTS} is not a safetensors file: {error}") from None
    names = _tensor_names(architecture)
    missing = [name for name in names if name not in weights]
    unexpected = sorted(set(weights) - set(names))
    if missing or unexpected:
        raise MmlensError(f"{folder / WEIGHTS} does not hold a SAELens {architecture} SAE: "
                          f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    for name in names:
        if tuple(weights[name].shape) != shapes[name]:
            raise MmlensError(f"{folder / WEIGHTS}: {name} has shape {list(weights[name].shape)}, "
                              f"cfg.json says {list(shapes[name])}")
    return {name: weights[name].to(torch.float32) for name in names}


def _tensor_names(architecture: str) -> tuple[str, ...]:
    base = ("W_enc", "W_dec", "b_enc", "b_dec")
    return (*base, "threshold") if architecture == "jumprelu" else base


def _dtype_name(dtype: torch.dtype) -> str:
    return next((name for name, value in DTYPES.items() if value == dtype), "float32")


def _version_tuple(version: str) -> tuple[int, ...]:
    # "6.0.0-rc.0" counts as 6.0.0, as SAELens' own check does (it compares against 6.0.0-rc.0)
    parts = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


__all__ = ["load_saelens", "save_saelens", "saelens_config", "upgrade_config"]
