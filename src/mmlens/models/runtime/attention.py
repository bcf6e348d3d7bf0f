"""Attention: the mmlens attention function (rows of probabilities only where asked), probabilities, mask edits.

The implementation switch is :mod:`mmlens.models.runtime.implementation`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from mmlens.errors import MmlensError
from mmlens.models.runtime.implementation import attention_implementation

# -- Attention rows: probabilities for the rows and layers asked for, nothing else ------------------------

ATTENTION = "mmlens"  # the name under which :func:`_attention` is registered with transformers
_SLOT = "_mmlens_attention"
_CHUNK_ELEMENTS = 1 << 22  # at most this many fp32 scores at once (16 MB) while rows are computed


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
    rows: list = field(default_factory=list)  # RelevanceRow carriers (relevancy), at most one is used
    given: Any = None  # rows of the last call's probabilities (None: all), their means over heads or not
    given_mean: bool = False
    q_len: int = 0
    taps: list = field(default_factory=list)  # readers of the attention function's inputs (see attention_inputs)


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


@contextmanager
def _entry(hf: torch.nn.Module, module: torch.nn.Module, kind: str, entry: Any) -> Iterator[None]:
    """Put ``entry`` in ``module``'s ``reads`` or ``blocks`` while the model runs the mmlens attention function."""
    _register()
    entries = getattr(_state(module), kind)
    entries.append(entry)
    try:
        with attention_implementation(hf, ATTENTION):
            yield
    finally:
        entries.remove(entry)
        state = module.__dict__.get(_SLOT)
        if state is not None and not state.reads and not state.blocks and not state.rows and not state.taps:
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
    with _entry(hf, module, "reads", request):
        yield


@contextmanager
def blocked_keys(hf: torch.nn.Module, module: torch.nn.Module, keys: torch.Tensor, query: int) -> Iterator[None]:
    """Inside the block, query row ``query`` of ``module`` cannot attend to ``keys`` (see :func:`block_keys`).

    The edit is applied by the ``"mmlens"`` attention function, which knows
    the query and key lengths, so a mask that transformers left out (the
    causal kernel) or made boolean is materialised first.
    """
    with _entry(hf, module, "blocks", (keys, query)):
        yield


@contextmanager
def relevance_rows(hf: torch.nn.Module, module: torch.nn.Module, row: Any) -> Iterator[None]:
    """Inside the block, ``module``'s backward pass also updates ``row`` (a :class:`~mmlens.models.runtime.relevance.RelevanceRow`).

    The module's attention runs through an autograd function that saves Q, K
    and V only (not the probabilities) and, in its backward pass, recomputes
    them a chunk of query rows at a time (see :mod:`mmlens.models.runtime.relevance`).

    Example:
        >>> row = RelevanceRow()
        >>> with relevance_rows(model.hf, model.decoder_layers[0].self_attn, row):
        ...     score = model.forward(batch).logits[0, -1, 7]
        ...     row.start(1, seq, seq - 1, score.device); torch.autograd.grad(score, leaf)
    """
    with _entry(hf, module, "rows", row):
        yield


@contextmanager
def attention_inputs(hf: torch.nn.Module, module: torch.nn.Module, read: Any) -> Iterator[None]:
    """Inside the block, ``read(query, key, value, mask, scale)`` sees each call of ``module``'s attention function.

    Query and key come after any rotary embedding, ``(batch, heads, len, head_dim)``
    and in the graph; towers that split their sequence (Qwen2-VL, one call per
    image) call it once per piece. Nothing is computed that the module would not compute.

    Example:
        >>> seen = []
        >>> with attention_inputs(model.hf, model.vision_layers[0].self_attn, lambda *a: seen.append(a[0].shape)):
        ...     _ = model.forward(batch)
    """
    with _entry(hf, module, "taps", read):
        yield


def requested_rows(module: torch.nn.Module, probs: torch.Tensor, request: RowRequest) -> torch.Tensor:
    """The rows ``request`` asked for out of the probabilities ``module`` returned: ``(batch, heads, rows, keys)``.

    An int ``rows`` drops the row axis: ``(batch, heads, keys)``; ``mean_heads`` drops the head axis.
    """
    state = module.__dict__.get(_SLOT)
    given, given_mean = (state.given, state.given_mean) if state is not None else (None, False)
    if given is None or request.rows is None:  # every query row came back
        return rows_of(probs, request, heads_averaged=given_mean)
    where = {r: i for i, r in enumerate(given)}  # the module computed only the rows ``given``: find the asked ones
    index = [where[r] for r in _normalise(_row_list(request.rows), state.q_len)]
    return _pick(probs, index, request, heads_averaged=given_mean)


def rows_of(probs: torch.Tensor, request: RowRequest, heads_averaged: bool = False) -> torch.Tensor:
    """The rows ``request`` asks for out of whole ``(batch, heads, queries, keys)`` probabilities (or their gradient);
    ``heads_averaged``: the head axis already holds their mean.

    Example:
        >>> rows_of(torch.rand(1, 2, 5, 5), RowRequest(rows=-1)).shape
        torch.Size([1, 2, 5])
    """
    index = None if request.rows is None else _normalise(_row_list(request.rows), probs.shape[-2])
    return _pick(probs, index, request, heads_averaged)


def _pick(probs: torch.Tensor, index: list[int] | None, request: RowRequest,
          heads_averaged: bool = False) -> torch.Tensor:
    """Rows ``index`` of ``probs``, heads averaged if asked; an int row drops the row axis."""
    if index is not None:
        probs = probs[:, :, index]
    if request.mean_heads:
        probs = probs[:, 0] if heads_averaged else probs.mean(1)  # (batch, rows, keys)
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
    for tap in state.taps:
        tap(query, key, value, attention_mask, scaling if scaling is not None else query.shape[-1] ** -0.5)
    q_len, k_len = query.shape[2], key.shape[2]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = causal and attention_mask is None and q_len > 1
    if state.blocks:
        mask = additive_mask(attention_mask, causal, q_len, k_len, query.dtype, query.device)
        for keys, row in state.blocks:
            mask = block_keys(mask, keys, row, type(module).__name__)
        attention_mask, causal, is_causal = mask, False, False
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if state.rows and torch.is_grad_enabled() and not (module.training and dropout > 0):
        from mmlens.models.runtime.relevance import relevance_attention

        output = relevance_attention(module, query, key, value, attention_mask, causal, scale, state.rows[-1],
                                     **kwargs)
        return output, _reads_only(module, state, query, key, attention_mask, causal, scale)
    if not state.reads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
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
    return output, _reads_only(module, state, query, key, attention_mask, causal, scale)


def _reads_only(module: torch.nn.Module, state: _State, query: torch.Tensor, key: torch.Tensor,
                mask: torch.Tensor | None, causal: bool, scale: float) -> torch.Tensor | None:
    """The probability rows the module's reads ask for, outside the graph (None without reads)."""
    if not state.reads:
        return None
    from transformers.integrations.sdpa_attention import repeat_kv

    q_len = state.q_len = query.shape[2]
    wanted = [_row_list(r.rows) for r in state.reads]
    rows = None if any(w is None for w in wanted) else sorted({i for w in wanted for i in _normalise(w, q_len)})
    mean = all(r.mean_heads for r in state.reads)
    with torch.no_grad():
        probs = _probability_rows(query, repeat_kv(key, query.shape[1] // key.shape[1]), mask, causal, scale, rows,
                                  mean)
    state.given, state.given_mean = rows, mean
    return probs


def _probability_rows(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float,
                      rows: list[int] | None, mean_heads: bool) -> torch.Tensor:
    """fp32 ``softmax(q[rows] k^T * scale + mask[rows])``, ``(batch, heads or 1, rows, keys)``, a chunk of rows at a time."""
    q_len, k_len = query.shape[2], key.shape[2]
    index = row_index(rows, q_len, query.device)
    per_row = query.shape[0] * query.shape[1] * k_len
    step = max(1, _CHUNK_ELEMENTS // max(1, per_row)) if mean_heads else len(index)
    keys_t = key.float().transpose(2, 3)
    parts = []
    for start in range(0, len(index), step):
        part = index[start:start + step]
        probs = torch.softmax(masked_scores(query[:, :, part].float(), keys_t, mask, causal, part, scale), dim=-1)
        parts.append(probs.mean(1, keepdim=True) if mean_heads else probs)
    return torch.cat(parts, dim=2)


def row_index(rows: list[int] | None, q_len: int, device: torch.device) -> torch.Tensor:
    """``rows`` (every row when None) as an index tensor on ``device``, made there when they are a range.

    A range is ``arange`` on the device; a list copied from the host would wait for the device's
    queued work at every layer (a blocking copy), which on a launch-bound GPU pass serialises it.

    Example:
        >>> row_index([3, 4, 5], 8, torch.device("cpu")).tolist(), row_index(None, 2, torch.device("cpu")).tolist()
        ([3, 4, 5], [0, 1])
    """
    if rows is None:
        return torch.arange(q_len, device=device)
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return torch.arange(rows[0], rows[0] + len(rows), device=device)
    return torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)


def masked_scores(query: torch.Tensor, keys_t: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                  rows: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 ``query keys_t * scale + mask`` for the query ``rows`` (``query`` holds those rows only).

    ``mask`` is what transformers passed the attention (bool, additive or None); None with ``causal``
    hides keys after each row.

    Example:
        >>> q, k_t = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 2, 3)
        >>> masked_scores(q, k_t, None, True, torch.tensor([0]), 1.0)[0, 0, 0, 1] < -1e30
        tensor(True)
    """
    scores = torch.matmul(query.float(), keys_t.float()) * scale
    if mask is not None:
        rows_mask = mask[..., rows, :] if mask.shape[-2] > 1 else mask
        if rows_mask.dtype == torch.bool:
            return scores.masked_fill_(~rows_mask, torch.finfo(torch.float32).min)
        return scores.add_(rows_mask.float())
    if causal:
        later = torch.arange(keys_t.shape[-1], device=query.device)[None] > rows[:, None]
        return scores.masked_fill_(later, torch.finfo(torch.float32).min)
    return scores


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
