"""Where an attention module's heads can be told apart: the input of its output projection.

Every family mmlens serves computes each head's output, concatenates them
head-major along the last axis and multiplies by one output projection
(``o_proj``, ``out_proj``, ``proj``, GPT-2's ``c_proj``). That projection's
input, split into ``n_heads`` slices of ``head_dim``, is each head's output
before it is mixed: :class:`HeadLayout` says which module and how wide.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llava")
    >>> layout = head_layout(model.decoder_layers[0].self_attn, "o_proj", "llava")
    >>> layout.n_heads, layout.head_dim
    (4, 16)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmlens.errors import MmlensError


@dataclass(frozen=True)
class HeadLayout:
    """The output projection of one attention module, and how its input splits into heads."""

    out_proj: torch.nn.Module
    n_heads: int
    head_dim: int

    def columns(self, head: int) -> slice:
        """The slice of the projection's input that is head ``head``'s output.

        Example:
            >>> HeadLayout(torch.nn.Linear(8, 8), 2, 4).columns(1)
            slice(4, 8, None)
        """
        return slice(head * self.head_dim, (head + 1) * self.head_dim)


def head_layout(attention: torch.nn.Module, out_name: str | None, family: str) -> HeadLayout:
    """The output projection ``out_name`` of ``attention`` and its head split; one clear error where heads are fused.

    The head count comes from the module (``num_heads``) or its config
    (``num_attention_heads``), the width from ``head_dim``; their product must
    be the projection's input width, else the heads are not laid out the way
    mmlens splits them.

    Example:
        >>> head_layout(model.decoder_layers[0].self_attn, None, "x")  # doctest: +SKIP
        MmlensError: x: its attention fuses heads in a way mmlens cannot split (no per-head output projection known)
    """
    fused = f"{family}: its attention fuses heads in a way mmlens cannot split"
    if out_name is None:
        raise MmlensError(f"{fused} (no per-head output projection known)")
    try:
        out_proj = attention.get_submodule(out_name)
    except AttributeError:
        raise MmlensError(f"{fused} (no {out_name!r} in {type(attention).__name__})") from None
    n_heads = getattr(attention, "num_heads", None) or getattr(getattr(attention, "config", None),
                                                               "num_attention_heads", None)
    head_dim = getattr(attention, "head_dim", None)
    width = _input_width(out_proj)
    if not n_heads or not head_dim or width != n_heads * head_dim:
        raise MmlensError(f"{fused} ({type(attention).__name__}: {n_heads} heads of {head_dim} for a "
                          f"{width}-wide output projection)")
    return HeadLayout(out_proj, int(n_heads), int(head_dim))


def _input_width(module: torch.nn.Module) -> int | None:
    """Input width of a linear map: ``nn.Linear`` keeps ``(out, in)`` weights, GPT-2's ``Conv1D`` ``(in, out)``."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2 and hasattr(module, "nf"):
        return int(weight.shape[0])
    return None
