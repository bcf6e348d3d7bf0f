"""What mmlens knows about transformers' runtime conventions, in one place.

transformers renames its internals often (5.24 renamed the decoder layers'
``past_key_values`` keyword to ``cache``). Everything mmlens relies on at run
time lives here, and nothing outside this module touches it:

- the keyword under which a module takes its key/value cache, *read from the
  module's signature* (:func:`cache_keyword`), never assumed;
- cache stand-ins that record or prepend keys and values
  (:class:`KeyValueRecorder`, :class:`PrefixCache`);
- switching the attention implementation through the public
  ``set_attn_implementation`` (:func:`attention_implementation`);
- where attention probabilities come out of an attention module
  (:func:`attention_probabilities`), and the ``"mmlens"`` attention function
  registered with transformers' ``AttentionInterface`` that computes them only
  for the layers and query rows asked for (:func:`attention_rows`);
- edits of the additive attention mask (:func:`block_keys`);
- a decoder layer's recorded call and how to make it again (:class:`LayerCall`).

The contract test (``tests/models/test_runtime.py``) checks every convention
on every tiny family, and on a stand-in layer whose cache keyword is a random
name, so a rename in transformers fails there first.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> cache_keyword(model.decoder_layers[0]) in ("cache", "past_key_values")
    True
"""

from __future__ import annotations

import inspect
import re
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

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
    return str(getattr(hf.config, "_attn_implementation", None) or "eager")


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


# -- Attention rows: probabilities for the rows and layers asked for, nothing else ------------------------

ATTENTION = "mmlens"  # the name under which :func:`_attention` is registered with transformers
_SLOT = "_mmlens_attention"
_CHUNK_ELEMENTS = 1 << 24  # at most this many fp32 scores at once (64 MB) while rows are computed


@dataclass
class RowRequest:
    """What a reader wants from one attention module: ``rows`` (None: all), heads averaged or not, in the graph or not."""

    rows: Any = None  # None, an int or a sequence of ints (negative ones count from the end)
    mean_heads: bool = False
    on_path: bool = False  # the probabilities feed the output (gradients with respect to them)


@dataclass
class _State:
    reads: list  # RowRequest
    blocks: list  # (keys, query) pairs of BlockKeys edits
    given: Any = None  # rows of the last call's probabilities (None: all), their means over heads or not
    given_mean: bool = False
    q_len: int = 0


def _register() -> None:
    """Register :func:`_attention` (and the SDPA mask it expects) with transformers' public interfaces, once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, _attention)
    if ATTENTION not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _state(module: torch.nn.Module) -> _State:
    return module.__dict__.setdefault(_SLOT, _State([], []))


def _release(module: torch.nn.Module) -> None:
    state = module.__dict__.get(_SLOT)
    if state is not None and not state.reads and not state.blocks:
        del module.__dict__[_SLOT]


@contextmanager
def attention_rows(hf: torch.nn.Module, module: torch.nn.Module, request: RowRequest) -> Iterator[None]:
    """Inside the block, ``module`` (an attention module of ``hf``) also returns the probabilities ``request`` asks for.

    Every attention of ``hf`` runs through the ``"mmlens"`` attention
    function: the SDPA kernel computes the output as usual; only modules with
    a request also compute fp32 softmax probabilities, and only for the
    requested query rows (in chunks of rows, so no ``(heads, N, N)`` tensor
    exists unless all rows are asked for per head). A request ``on_path``
    runs that module eagerly, its probabilities in the autograd graph.

    Example:
        >>> with attention_rows(model.hf, model.decoder_layers[1].self_attn, RowRequest(rows=-1)):
        ...     out = model.forward(batch)  # layer 1's attention returns (batch, heads, 1, keys) probabilities
    """
    _register()
    state = _state(module)
    state.reads.append(request)
    try:
        with attention_implementation(hf, ATTENTION):
            yield
    finally:
        state.reads.remove(request)
        _release(module)


@contextmanager
def blocked_keys(hf: torch.nn.Module, module: torch.nn.Module, keys: torch.Tensor, query: int) -> Iterator[None]:
    """Inside the block, query row ``query`` of ``module`` cannot attend to ``keys`` (see :func:`block_keys`).

    The edit is applied by the ``"mmlens"`` attention function, which knows
    the query and key lengths, so a mask that transformers left out (the
    causal kernel) or made boolean is materialised first.
    """
    _register()
    state = _state(module)
    entry = (keys, query)
    state.blocks.append(entry)
    try:
        with attention_implementation(hf, ATTENTION):
            yield
    finally:
        state.blocks.remove(entry)
        _release(module)


def requested_rows(module: torch.nn.Module, probs: torch.Tensor, request: RowRequest) -> torch.Tensor:
    """The rows ``request`` asked for out of the probabilities ``module`` returned: ``(batch, heads, rows, keys)``.

    An int ``rows`` drops the row axis: ``(batch, heads, keys)``; ``mean_heads`` drops the head axis.
    """
    state = module.__dict__.get(_SLOT)
    given, given_mean = (state.given, state.given_mean) if state is not None else (None, False)
    if request.rows is not None:
        if given is None:
            probs = probs[:, :, _normalise(_row_list(request.rows), probs.shape[-2])]
        else:
            where = {r: i for i, r in enumerate(given)}
            probs = probs[:, :, [where[r] for r in _normalise(_row_list(request.rows), state.q_len)]]
    if request.mean_heads:
        probs = probs[:, 0] if given_mean else probs.mean(1)  # (batch, rows, keys)
        return probs[:, 0] if isinstance(request.rows, int) else probs
    return probs[:, :, 0] if isinstance(request.rows, int) else probs


def _row_list(rows: Any) -> list[int] | None:
    if rows is None:
        return None
    if isinstance(rows, int):
        return [rows]
    if isinstance(rows, torch.Tensor):
        return [int(r) for r in rows.flatten()]
    return [int(r) for r in rows]


def _normalise(rows: list[int], q_len: int) -> list[int]:
    out = [r % q_len if -q_len <= r < q_len else None for r in rows]
    if any(r is None for r in out):
        raise MmlensError(f"attention rows {rows} are out of range for {q_len} queries")
    return out


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' SDPA attention, plus the probability rows a reader asked for on this module (see :func:`attention_rows`)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    state = module.__dict__.get(_SLOT)
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q_len, k_len = query.shape[2], key.shape[2]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = causal and attention_mask is None and q_len > 1
    if state.blocks:
        mask = additive_mask(attention_mask, causal, q_len, k_len, query.dtype, query.device)
        for keys, row in state.blocks:
            mask = block_keys(mask, keys, row, type(module).__name__)
        attention_mask, causal, is_causal = mask, False, False
    if not state.reads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    state.q_len = q_len
    if any(r.on_path for r in state.reads):  # eager: the probabilities are in the graph
        probs = _probability_rows(query, repeat_kv(key, groups), attention_mask, causal, scale, None, False)
        probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
        output = torch.matmul(probs.to(value.dtype), repeat_kv(value, groups)).transpose(1, 2).contiguous()
        state.given, state.given_mean = None, False
        return output, probs
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       is_causal=is_causal, **kwargs)
    wanted = [_row_list(r.rows) for r in state.reads]
    rows = None if any(w is None for w in wanted) else sorted({i for w in wanted for i in _normalise(w, q_len)})
    mean = all(r.mean_heads for r in state.reads)
    with torch.no_grad():
        probs = _probability_rows(query, repeat_kv(key, groups), attention_mask, causal, scale, rows, mean)
    state.given, state.given_mean = rows, mean
    return output, probs


def _probability_rows(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float,
                      rows: list[int] | None, mean_heads: bool) -> torch.Tensor:
    """fp32 ``softmax(q[rows] k^T * scale + mask[rows])``, ``(batch, heads or 1, rows, keys)``, a chunk of rows at a time."""
    q_len, k_len = query.shape[2], key.shape[2]
    index = torch.arange(q_len, device=query.device) if rows is None else torch.tensor(rows, device=query.device)
    per_row = query.shape[0] * query.shape[1] * k_len
    step = max(1, _CHUNK_ELEMENTS // max(1, per_row)) if mean_heads else len(index)
    keys_t = key.float().transpose(2, 3)
    parts = []
    for start in range(0, len(index), step):
        part = index[start:start + step]
        scores = torch.matmul(query[:, :, part].float(), keys_t) * scale
        if mask is not None:
            rows_mask = mask[..., part, :] if mask.shape[-2] > 1 else mask
            if rows_mask.dtype == torch.bool:
                scores = scores.masked_fill(~rows_mask, torch.finfo(torch.float32).min)
            else:
                scores = scores + rows_mask.float()
        elif causal:
            later = torch.arange(k_len, device=query.device)[None] > part[:, None]
            scores = scores.masked_fill(later, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1)
        parts.append(probs.mean(1, keepdim=True) if mean_heads else probs)
    return torch.cat(parts, dim=2)


def additive_mask(mask: torch.Tensor | None, causal: bool, q_len: int, k_len: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """A 4-D additive float mask ``(batch or 1, 1, q_len, k_len)`` from what transformers passed an attention module.

    ``None`` means the causal kernel (``causal``, query ``i`` sees keys ``<= i``) or no mask; a bool mask
    marks the keys each query may see.

    Example:
        >>> additive_mask(None, True, 2, 2, torch.float32, torch.device("cpu"))[0, 0, 0, 1] < -1e30
        tensor(True)
    """
    low = torch.finfo(dtype).min
    if mask is None:
        out = torch.zeros(1, 1, q_len, k_len, dtype=dtype, device=device)
        if causal:
            later = torch.arange(k_len, device=device)[None] > torch.arange(q_len, device=device)[:, None]
            out = out.masked_fill(later, low)
        return out
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, low)
    return mask


def attention_probabilities(output: Any, where: str = "attention") -> torch.Tensor:
    """The probabilities ``(batch, heads, query, key)`` in an attention module's output (eager kernels).

    Example:
        >>> attention_probabilities((torch.zeros(1, 3, 8), torch.ones(1, 2, 3, 3))).shape
        torch.Size([1, 2, 3, 3])
    """
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1]
    raise MmlensError(f"{where}: this attention module returns no probabilities, even in eager mode")


def with_probabilities(output: Any, probs: torch.Tensor) -> tuple:
    """``output`` with its probabilities replaced (the inverse of :func:`attention_probabilities`)."""
    return (output[0], probs, *output[2:])


def block_keys(mask: Any, keys: torch.Tensor, query: int, where: str = "attention") -> torch.Tensor:
    """A copy of the additive 4-D ``mask`` in which query row ``query`` cannot see ``keys`` (``(rows, key_len)`` bool).

    The blocked entries get the dtype's minimum, so their probability after
    the softmax is exactly zero. Rows of ``keys`` may be 1 (broadcast) or the
    mask's batch; a shorter key axis (generation with a cache) is padded.

    Example:
        >>> mask = torch.zeros(1, 1, 3, 3)
        >>> block_keys(mask, torch.tensor([[True, False, False]]), -1)[0, 0, -1, 0] < -1e30
        tensor(True)
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or not mask.is_floating_point():
        raise MmlensError(f"{where}: expected a 4-D float attention mask under eager attention, got "
                          f"{type(mask).__name__}")
    key_len = mask.shape[-1]
    block = keys.to(mask.device).bool()
    rows = block.shape[0] if mask.shape[0] == 1 else mask.shape[0]  # a broadcast mask takes the block's rows
    if block.shape[-1] != key_len:
        block = torch.nn.functional.pad(block, (0, key_len - block.shape[-1]))
    block = block.expand(rows, key_len) if block.shape[0] == 1 else block
    if block.shape[0] != rows:
        raise MmlensError(f"{where}: a block mask for {block.shape[0]} rows, the pass has {rows}")
    # A copy: transformers shares one mask tensor between all layers.
    edited = mask.expand(rows, *mask.shape[1:]).clone()
    edited[:, :, query, :].masked_fill_(block[:, None, :], torch.finfo(edited.dtype).min)
    return edited


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device when it dispatched the module.

    A module that accelerate offloads (to the CPU, to disk) holds meta tensors
    between calls, so its parameters do not say where it runs; its
    ``_hf_hook.execution_device`` does. Otherwise the first parameter (or
    buffer) that is not on meta decides, and a module without any runs on the CPU.

    Example:
        >>> execution_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    hook = getattr(module, "_hf_hook", None)
    for candidate in (hook, *getattr(hook, "hooks", ())):  # a SequentialHook holds several
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def on_device_of(module: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the device ``module`` computes on (itself when it is there already).

    The one helper through which hooks and replays move what they feed a
    module: a recorded hidden state, a replacement, a mask, a baseline.

    Example:
        >>> on_device_of(torch.nn.Linear(2, 2), torch.zeros(2)).device
        device(type='cpu')
    """
    device = execution_device(module)
    return tensor if tensor.device == device else tensor.to(device)


def last_logits_only(hf: torch.nn.Module) -> dict[str, Any]:
    """Keyword arguments that make ``hf`` unembed only the last position (``logits_to_keep=1``), where it takes them.

    A run that only records what the language model received needs no
    ``(seq, vocab)`` logits: at 3,000 tokens and a 32k vocabulary they are 384 MB in fp32.

    Example:
        >>> last_logits_only(torch.nn.Linear(2, 2))
        {}
    """
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}
