"""Chefer et al.'s decoder relevancy, carried through autograd by an attention core that keeps no probabilities.

The relevancy rule for a decoder (Chefer et al., 2021) is
``R = (I + A_bar_L) ... (I + A_bar_1)`` with
``A_bar_l = mean_heads((dA_l * A_l)^+)``, ``A_l`` layer ``l``'s attention
probabilities and ``dA_l`` the gradient of the target score with respect to
them; the explanation is the target's row ``e_t^T R``. Keeping every layer's
``(heads, N, N)`` probabilities for the backward pass costs ``L x H x N x N``
floats (gigabytes at a few thousand tokens).

:class:`_RelevanceCore` instead runs SDPA forward and saves only Q, K and V.
Its backward recomputes the probabilities a chunk of query rows at a time,
forms ``dA = dO V^T``, the ordinary ``dQ, dK, dV`` and the chunk's part of
``A_bar``, and updates the row vector ``r <- r + r A_bar_l``. Autograd reaches
layer ``l``'s attention only after every later layer (its output feeds them),
so the updates come in the order ``L, ..., 1`` that the product needs, and no
``N x N`` matrix exists beyond one chunk of rows. Everything is fp32 (the row fp64),
whatever the model's dtype.

Example:
    >>> row = RelevanceRow()
    >>> row.start(batch=1, seq=4, position=3, device=torch.device("cpu"))
    >>> row.value[0].tolist()
    [0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import torch

_CHUNK_ELEMENTS = 1 << 22  # at most this many fp32 scores per chunk of query rows (16 MB; a few such live at once)


class RelevanceRow:
    """The row ``e_t^T (I + A_bar_L) ... (I + A_bar_l)`` as a backward pass reaches layer ``l``, ``(batch, seq)`` fp64.

    :meth:`start` it before each backward pass (one per target); every
    attention core that carries it updates it as the pass goes through.

    Example:
        >>> row = RelevanceRow()
        >>> row.start(batch=2, seq=3, position=1, device=torch.device("cpu"))
        >>> row.value.shape
        torch.Size([2, 3])
    """

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.layers = 0  # attention cores that updated the row since :meth:`start`

    def start(self, batch: int, seq: int, position: int, device: torch.device) -> None:
        """Reset to ``e_position`` for every row of the batch."""
        self.value = torch.zeros(batch, seq, dtype=torch.float64, device=device)
        self.value[:, position] = 1.0
        self.layers = 0


def relevance_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        mask: torch.Tensor | None, causal: bool, scale: float, row: RelevanceRow,
                        **kwargs: Any) -> torch.Tensor:
    """transformers' SDPA attention output ``(batch, seq, heads, dim)``, whose backward also updates ``row``.

    ``mask`` and ``causal`` are as the ``"mmlens"`` attention function
    received them (``causal``: the kernel's causal flag, used when ``mask`` is None).

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 4, requires_grad=True)
        >>> row = RelevanceRow(); row.start(1, 5, 4, q.device)
        >>> out = relevance_attention(torch.nn.Module(), q, k, v, None, True, 0.5, row)
        >>> out[0, -1].sum().backward()
        >>> float(row.value[0, -1]) >= 1.0
        True
    """
    return _RelevanceCore.apply(query, key, value, mask, causal, scale, module, row, kwargs)


class _RelevanceCore(torch.autograd.Function):
    """SDPA forward that saves Q, K, V only; the backward recomputes probabilities in chunks of rows."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                causal: bool, scale: float, module: torch.nn.Module, row: RelevanceRow,
                kwargs: dict) -> torch.Tensor:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=scale,
                                           is_causal=causal, **kwargs)
        ctx.save_for_backward(query, key, value, mask)
        ctx.causal, ctx.scale, ctx.row = causal and mask is None, scale, row
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        query, key, value, mask = ctx.saved_tensors
        grads = core_backward(query, key, value, mask, ctx.causal, ctx.scale, grad_output.transpose(1, 2), ctx.row)
        return (*grads, None, None, None, None, None, None)


def core_backward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                  causal: bool, scale: float, grad_out: torch.Tensor,
                  row: RelevanceRow | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dQ, dK, dV`` of ``softmax(Q K^T * scale + mask) V`` for ``grad_out`` ``(batch, heads, seq, dim)``.

    Only query rows whose output gradient is not zero are visited (the
    others contribute exactly nothing), a chunk at a time; ``row`` (when
    given) becomes ``row + row A_bar``. K and V may have fewer heads (GQA).

    Example:
        >>> q = k = v = torch.randn(1, 2, 3, 4)
        >>> [g.shape for g in core_backward(q, k, v, None, True, 0.5, torch.ones(1, 2, 3, 4), None)][0]
        torch.Size([1, 2, 3, 4])
    """
    from mmlens.models.runtime.attention import masked_scores

    batch, heads = query.shape[:2]
    groups = heads // key.shape[1]
    keys = _repeat(key, groups).float()
    values = _repeat(value, groups).float()
    d_query = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    d_keys, d_values = torch.zeros_like(keys), torch.zeros_like(values)
    live = (grad_out != 0).any(-1).any(1).any(0).nonzero()[:, 0]  # query rows with a gradient
    step = max(1, _CHUNK_ELEMENTS // max(1, batch * heads * keys.shape[2]))
    carried = None if row is None else row.value.to(query.device)  # layers may sit on different devices
    delta = None if row is None else torch.zeros_like(carried)
    keys_t = keys.transpose(2, 3)
    for start in range(0, len(live), step):
        part = live[start:start + step]
        q_part, g_part = query[:, :, part].float(), grad_out[:, :, part].float()
        probs = torch.softmax(masked_scores(q_part, keys_t, mask, causal, part, scale), dim=-1)  # (b, h, c, keys)
        d_probs = torch.matmul(g_part, values.transpose(2, 3))
        weighted = d_probs * probs
        if delta is not None:  # Chefer's A_bar for these rows: mean over heads of (dA * A)^+
            delta += torch.einsum("bc,bck->bk", carried[:, part], weighted.clamp(min=0).mean(1).double())
        d_values += torch.matmul(probs.transpose(2, 3), g_part)
        d_scores = d_probs.sub_(weighted.sum(-1, keepdim=True)).mul_(probs)  # softmax backward, in place
        del weighted, probs
        d_query[:, :, part] = torch.matmul(d_scores, keys) * scale
        d_keys += torch.matmul(d_scores.transpose(2, 3), q_part) * scale
    if row is not None:
        row.value, row.layers = (carried + delta).to(row.value.device), row.layers + 1
    d_keys, d_values = _sum_groups(d_keys, groups).to(key.dtype), _sum_groups(d_values, groups).to(value.dtype)
    return d_query.to(query.dtype), d_keys, d_values


def _repeat(states: torch.Tensor, groups: int) -> torch.Tensor:
    """``(batch, kv_heads, seq, dim)`` to ``(batch, kv_heads * groups, seq, dim)``, each head repeated in place."""
    if groups == 1:
        return states
    batch, kv_heads, seq, dim = states.shape
    return states[:, :, None].expand(batch, kv_heads, groups, seq, dim).reshape(batch, kv_heads * groups, seq, dim)


def _sum_groups(grads: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`_repeat` for gradients: the repeated heads' gradients summed."""
    if groups == 1:
        return grads
    batch, heads, seq, dim = grads.shape
    return grads.view(batch, heads // groups, groups, seq, dim).sum(2)
