"""The attention implementation switch: which attention (``"eager"``, ``"sdpa"``, ``"mmlens"``) a model runs.

Through transformers' public ``set_attn_implementation``, with every
sub-model's previous choice (vision tower, text model) put back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from mmlens.errors import MmlensError


@contextmanager
def attention_implementation(hf: torch.nn.Module, implementation: str = "eager") -> Iterator[None]:
    """Run every attention of ``hf`` with ``implementation`` inside the block, then restore each one.

    Uses transformers' public ``set_attn_implementation``; the previous
    choice of every sub-model (vision tower, text model) is put back.

    Example:
        >>> with attention_implementation(model.hf, "eager"):
        ...     out = model.forward(batch)
    """
    setter = getattr(hf, "set_attn_implementation", None)
    if setter is None or not hasattr(hf, "config"):
        raise MmlensError(f"{type(hf).__name__} cannot switch its attention implementation")
    before = _implementations(hf.config)
    if _all_equal(before, implementation):
        yield
        return
    setter(implementation)
    try:
        yield
    finally:
        setter(_restorable(before))


def current_attention(hf: torch.nn.Module) -> str:
    """The attention implementation of ``hf``'s top-level config (``"eager"``, ``"sdpa"``, ...)."""
    return config_attention(hf.config)


def config_attention(config: Any) -> str:
    """The attention implementation a (sub-)config runs (``"eager"`` when it names none).

    Example:
        >>> from transformers import LlamaConfig
        >>> config_attention(LlamaConfig())
        'eager'
    """
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _implementations(config: Any) -> dict[str, Any]:
    """``{"": implementation, sub_config: {...}}``: the form ``set_attn_implementation`` takes back."""
    tree: dict[str, Any] = {"": getattr(config, "_attn_implementation", None)}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            tree[key] = _implementations(sub)
    return tree


def _restorable(tree: dict[str, Any]) -> str | dict[str, str]:
    """What ``set_attn_implementation`` takes back: one name when all agree, else one name per sub-config.

    Every release since 5.4 takes ``{"": top, sub_config: name}`` with plain names (nested dicts came later).
    """
    top = tree[""]
    if _all_equal(tree, top):
        return top
    return {key: value if isinstance(value, str) else value[""] for key, value in tree.items()}


def _all_equal(tree: dict[str, Any], implementation: str) -> bool:
    return all(_all_equal(v, implementation) if isinstance(v, dict) else v == implementation for v in tree.values())
