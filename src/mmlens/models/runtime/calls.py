"""Decoder-layer calls: the cache keyword read from signatures, cache stand-ins, recorded calls and masks for replays."""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

import torch

from mmlens.errors import MmlensError


# Keyword arguments a recorded call drops before it is made again: they steer
# transformers' own bookkeeping (caches, output format), not the computation.
_BOOKKEEPING = frozenset({"cache_position", "return_dict", "output_attentions", "output_hidden_states", "use_cache"})
_CACHE_NAME = re.compile(r"\b\w*Cache\b")
_cache_keywords: dict[type, str | None] = {}


def cache_keyword(module: torch.nn.Module) -> str | None:
    """The keyword under which ``module.forward`` takes its key/value cache; None when it takes none.

    Read from the signature: the parameter annotated with a ``Cache`` type.
    Unannotated code (older releases) falls back to the parameter named like a
    cache (``past_key_values``, ``layer_past``), never ``use_cache``.

    Example:
        >>> cache_keyword(mmlens.load("tiny-llama").decoder_layers[0])
        'cache'
    """
    kind = type(module)
    if kind not in _cache_keywords:
        _cache_keywords[kind] = _read_cache_keyword(module)
    return _cache_keywords[kind]


def _read_cache_keyword(module: torch.nn.Module) -> str | None:
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return None
    named = [p for p in parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for parameter in named:
        if _mentions_cache(parameter.annotation):
            return parameter.name
    for parameter in named:
        if parameter.name not in _BOOKKEEPING and re.search(r"past|(^|_)cache$", parameter.name):
            return parameter.name
    return None


def _mentions_cache(annotation: Any) -> bool:
    """Whether a type annotation (a class, a union or a string) names a cache class."""
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):
        return bool(_CACHE_NAME.search(annotation))
    if isinstance(annotation, type):
        return any(base.__name__.endswith("Cache") for base in annotation.__mro__)
    return any(_mentions_cache(arg) for arg in typing.get_args(annotation))


def replayable_kwargs(module: torch.nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` of a recorded call of ``module`` without its cache and output bookkeeping, ``use_cache=False``.

    Example:
        >>> replayable_kwargs(layer, {"cache": None, "attention_mask": None, "use_cache": True})
        {'attention_mask': None, 'use_cache': False}
    """
    drop = _BOOKKEEPING | {cache_keyword(module)}
    return {**{k: v for k, v in kwargs.items() if k not in drop}, "use_cache": False}


class KeyValueRecorder:
    """Stands in for a transformers cache: keeps each layer's keys and values, hands them back unchanged.

    Example:
        >>> recorder = KeyValueRecorder()
        >>> keys, values = recorder.update(torch.ones(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
        >>> recorder.seen[0][0].shape
        torch.Size([1, 2, 3, 4])
    """

    def __init__(self) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        self.seen[layer_idx] = (keys.detach(), values.detach())
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class PrefixCache:
    """Stands in for a transformers cache: puts recorded keys and values of positions ``< offset`` first.

    ``kv[layer]`` holds one batch of recorded ``(keys, values)``; a pass of
    ``copies`` stacked batches sees the prefix repeated ``copies`` times.

    Example:
        >>> cache = PrefixCache([(torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4))], offset=3, copies=2)
        >>> cache.update(torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 2, 4), 0)[0].shape
        torch.Size([2, 2, 5, 4])
    """

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], offset: int, copies: int) -> None:
        self.kv, self.offset, self.copies = kv, offset, copies

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        old_keys, old_values = (t[:, :, :self.offset].repeat(self.copies, 1, 1, 1) for t in self.kv[layer_idx])
        return torch.cat([old_keys.to(keys.dtype), keys], 2), torch.cat([old_values.to(values.dtype), values], 2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.offset


@dataclass
class LayerCall:
    """One recorded call of a decoder layer: its hidden state, other arguments by name, and cache keyword.

    Positional arguments are bound to their names through the layer's
    signature (GPT-2 blocks take the cache and the mask positionally), so a
    call is ``layer(hidden, **kwargs)`` for every family. ``kwargs`` never
    holds the cache; :meth:`run` passes one under the keyword the layer names.

    Example:
        >>> call = LayerCall.split(layer, (hidden,), {"attention_mask": None, "cache": None})
        >>> torch.equal(call.run(layer), layer(hidden, attention_mask=None))
        True
    """

    hidden: torch.Tensor  # (batch, seq, width)
    kwargs: dict[str, Any]
    cache_key: str | None
    cache_given: bool = False  # whether the recorded call came with a real cache

    @classmethod
    def split(cls, layer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> "LayerCall":
        """The call ``layer(*args, **kwargs)`` as seen by a forward pre-hook, by name, cache removed."""
        named = _by_name(layer, args, kwargs)
        hidden_key = next(iter(named))
        key = cache_keyword(layer)
        hidden = named.pop(hidden_key)
        if not isinstance(hidden, torch.Tensor):
            raise MmlensError(f"{type(layer).__name__} was called without a hidden state")
        given = key is not None and named.get(key) is not None
        return cls(hidden.detach(), {k: v for k, v in named.items() if k != key}, key, given)

    def arguments(self, hidden: torch.Tensor, kwargs: dict[str, Any] | None = None,
                  cache: Any = None) -> tuple[tuple, dict[str, Any]]:
        """``(args, kwargs)`` that make the call again on ``hidden``, with ``cache`` under the cache keyword."""
        kwargs = dict(self.kwargs if kwargs is None else kwargs)
        if cache is not None:
            if self.cache_key is None:
                raise MmlensError("this decoder layer takes no key/value cache")
            kwargs[self.cache_key] = cache
        return (hidden,), kwargs

    def run(self, layer: torch.nn.Module, hidden: torch.Tensor | None = None,
            kwargs: dict[str, Any] | None = None, cache: Any = None) -> torch.Tensor:
        """Call ``layer`` again (on ``hidden`` and ``kwargs`` when given) and return its output hidden state."""
        args, kwargs = self.arguments(self.hidden if hidden is None else hidden, kwargs, cache)
        output = layer(*args, **kwargs)
        return output[0] if isinstance(output, tuple) else output

    def cuttable(self, key: str) -> bool:
        """Whether argument ``key`` can be cut to a suffix of positions (see :meth:`suffix_kwargs`)."""
        return key in ("attention_mask", "position_embeddings", "position_ids", "cache_position", "use_cache")

    def suffix_kwargs(self, offset: int, dtype: torch.dtype) -> dict[str, Any]:
        """The keyword arguments for queries ``offset ..`` against all keys (the earlier ones come from a cache)."""
        seq = self.hidden.shape[1]
        out: dict[str, Any] = {}
        for key, value in self.kwargs.items():
            if key == "attention_mask":
                value = causal_mask(seq, offset, dtype, self.hidden.device) if value is None else value[..., offset:, :]
            elif key == "position_embeddings" and value is not None:
                value = tuple(v[..., offset:, :] for v in value)
            elif key in ("position_ids", "cache_position") and isinstance(value, torch.Tensor):
                value = value[..., offset:]
            elif key == "use_cache":
                continue
            out[key] = value
        return out


def _by_name(layer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of a call by its parameter name, the hidden state first."""
    try:
        bound = inspect.signature(layer.forward).bind_partial(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise MmlensError(f"{type(layer).__name__}: cannot read its call ({error})") from error
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise MmlensError(f"{type(layer).__name__}: extra positional arguments cannot be replayed")
        else:
            named[name] = value
    if not named:
        raise MmlensError(f"{type(layer).__name__} was called without a hidden state")
    return named


def causal_mask(seq: int, offset: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``(1, 1, seq - offset, seq)`` mask: query ``offset + i`` sees keys ``<= offset + i``.

    Example:
        >>> causal_mask(3, 1, torch.float32, torch.device("cpu"))[0, 0, 0].tolist()[:2]
        [0.0, 0.0]
    """
    queries = torch.arange(offset, seq, device=device)[:, None]
    keys = torch.arange(seq, device=device)[None]
    mask = torch.zeros(seq - offset, seq, dtype=dtype, device=device)
    return mask.masked_fill(keys > queries, torch.finfo(dtype).min)[None, None]


def blocks_later_keys(mask: Any, offset: int) -> bool:
    """Whether a recorded 4-D mask keeps queries before ``offset`` from keys at ``offset`` and later."""
    if not isinstance(mask, torch.Tensor):
        return mask is None  # no mask: transformers runs the causal kernel
    if mask.ndim != 4:
        return False
    corner = mask[..., :offset, offset:]
    blocked = ~corner if mask.dtype == torch.bool else corner <= torch.finfo(mask.dtype).min / 2
    return bool(blocked.all())
