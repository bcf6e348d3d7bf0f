"""Run the language model again from chosen input embeddings, without the vision tower.

Many methods (integrated gradients, occlusion, RISE, patching) evaluate the
same prompt under many variants of its input embeddings. Re-running the vision
tower for each variant is wasted work: :func:`record_decoder_call` runs the
model once and keeps exactly what its language model was called with (input
embeddings, masks, M-RoPE positions, ...), and :meth:`DecoderCall.logits`
replays that call for a whole stack of embedding variants at once.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llama")
    >>> batch = model.prepare("a red circle")
    >>> call = record_decoder_call(model, batch)
    >>> variants = torch.cat([call.embeds, torch.zeros_like(call.embeds)])  # 2 variants of 1 row
    >>> call.logits(variants, positions=[-1]).shape[:2]
    torch.Size([2, 1])
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.hooks import OnlyAt, attach_call, intervene
from mmlens.model import Batch, Model
from mmlens.models import runtime


@dataclass
class DecoderCall:
    """One recorded call of the language model: its input embeddings and its other arguments."""

    model: Model
    embeds: torch.Tensor  # (batch, seq, hidden)
    kwargs: dict[str, Any]

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def model_mask(self) -> torch.Tensor:
        """``(batch, seq)`` True at real (non-padding) positions."""
        mask = self.kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return mask.bool()
        return torch.ones(self.embeds.shape[:2], dtype=torch.bool, device=self.embeds.device)

    def hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        """Final hidden states (after the final norm) for ``embeds``, a stack of ``k x batch`` rows."""
        copies, remainder = divmod(embeds.shape[0], self.batch_size)
        if remainder:
            raise ValueError(f"{embeds.shape[0]} rows is not a multiple of the batch size {self.batch_size}")
        kwargs = stack_copies(self.kwargs, self.batch_size, copies)
        output = self.model.module(language_model_path(self.model))(inputs_embeds=embeds, **kwargs)
        return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def row(self, index: int) -> "DecoderCall":
        """The recorded call restricted to one batch row."""
        kwargs = {key: _take(key, value, self.batch_size, index) for key, value in self.kwargs.items()}
        return DecoderCall(self.model, self.embeds[index : index + 1], kwargs)

    def logits(self, embeds: torch.Tensor, positions: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Logits at ``positions`` (all when None) for each row of ``embeds``: ``(rows, len(positions), vocab)``.

        With ``positions`` given, the last decoder layer's MLP runs only there
        (see :func:`last_mlp_only_at`): the logits are the same, the pass is
        cheaper, and hooks on that MLP see zeros elsewhere.
        """
        if positions is None:
            hidden = self.hidden(embeds)
        else:
            index = _position_index(positions, embeds)
            with last_mlp_only_at(self.model, index):
                hidden = self.hidden(embeds)[:, index]
        unembed = self.model.module(self.model.adapter.unembed)
        return unembed(runtime.on_device_of(unembed, hidden))


def _position_index(positions: Sequence[int] | torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    """``positions`` as an index on ``embeds``' device, made there (no blocking host copy) when they are a range."""
    if isinstance(positions, torch.Tensor) and (positions.device == embeds.device or positions.ndim != 1):
        return positions.to(embeds.device)
    if isinstance(positions, int):
        return torch.as_tensor(positions, device=embeds.device)
    seq = embeds.shape[1]
    wanted = positions.tolist() if isinstance(positions, torch.Tensor) else list(positions)
    return runtime.attention.row_index([int(p) % seq for p in wanted], seq, embeds.device)


def last_mlp_only_at(model: Model, positions: torch.Tensor) -> AbstractContextManager[None]:
    """Inside the block the last decoder layer's MLP computes only at ``positions`` (zeros elsewhere).

    Exact for the outputs at ``positions``: the last layer's MLP is applied
    per position and nothing after it mixes positions. It skips about half of
    the last layer's work. The :class:`~mmlens.hooks.OnlyAt` site option.

    Example:
        >>> import mmlens
        >>> model = mmlens.load("tiny-llama")
        >>> with last_mlp_only_at(model, torch.tensor([-1])):
        ...     logits = model.forward(model.prepare("a red circle")).logits
    """
    return intervene(model, {f"lm.L{model.n_layers - 1}.mlp": OnlyAt(positions)})


def decoder_in_float32(model: Model) -> AbstractContextManager[None]:
    """Inside the block a half-precision decoder computes in float32, one module at a time.

    The decoder layers, the language model's other modules (its final norm)
    and the unembedding are upcast as each is called (see
    :func:`mmlens.models.runtime.compute_in_float32`): the extra memory is one
    layer's float32 weights. Feed it float32 embeddings.

    Example:
        >>> import mmlens
        >>> model = mmlens.load("tiny-llama", dtype=torch.bfloat16)
        >>> call = record_decoder_call(model, model.prepare("a red circle"))
        >>> with decoder_in_float32(model):
        ...     call.logits(call.embeds.float()).dtype
        torch.float32
    """
    layers = list(model.decoder_layers)
    inside = {id(m) for layer in layers for m in layer.modules()}
    rest = [child for path in language_model_path(model).split("|") for child in model.module(path).children()
            if id(child) not in inside and not isinstance(child, torch.nn.ModuleList)
            and any(True for _ in child.parameters())]
    return runtime.compute_in_float32([*layers, *rest, model.module(model.adapter.unembed)])


def language_model_path(model: Model) -> str:
    """The decoder stack's parent module (the part that takes ``inputs_embeds``)."""
    return "|".join(path.rsplit(".", 1)[0] for path in model.adapter.decoder_layers.split("|"))


class _Recorded(Exception):
    """Raised by the recording hook to skip the language model's run (``run_decoder=False``)."""


def record_decoder_call(model: Model, batch: Batch, *, run_decoder: bool = True) -> DecoderCall:
    """Run ``batch`` once and keep what the language model was called with.

    ``run_decoder=False`` stops the run as soon as the language model's
    arguments are known: the vision tower and the embedding merge run, the
    decoder layers do not (for methods that replay the call anyway).

    Example:
        >>> import mmlens
        >>> model = mmlens.load("tiny-llama")
        >>> call = record_decoder_call(model, model.prepare("a red circle"), run_decoder=False)
        >>> call.embeds.shape[0]
        1
    """
    decoder = model.module(language_model_path(model))
    seen: dict[str, Any] = {}

    def keep(args: tuple, kwargs: dict) -> None:
        if not seen:
            seen.update(kwargs)
            if args:
                # A positional first argument is ids (GPT-2's decoder) or embeddings: its dtype says which.
                seen["inputs_embeds" if args[0].is_floating_point() else "input_ids"] = args[0]
            if not run_decoder:
                raise _Recorded

    try:
        with attach_call(decoder, keep), torch.no_grad():
            model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf))
    except _Recorded:
        pass
    embeds = seen.pop("inputs_embeds", None)
    if embeds is None:  # text-only models embed inside the decoder
        input_ids = seen.pop("input_ids", None)
        if input_ids is None:
            raise MmlensError(f"{type(model.hf).__name__}: could not record the language model's inputs")
        embeds = decoder.get_input_embeddings()(input_ids).detach()
    seen.pop("input_ids", None)
    return DecoderCall(model=model, embeds=embeds.detach(), kwargs=runtime.replayable_kwargs(decoder, seen))


def _take(key: str, value: Any, batch: int, index: int) -> Any:
    """One row of a recorded argument (the inverse of stacking rows)."""
    if isinstance(value, dict):
        return {k: _take(k, v, batch, index) for k, v in value.items()}
    if not isinstance(value, torch.Tensor) or value.ndim < 2:
        return value
    if key == "position_ids" and value.ndim == 3:
        return value[:, index : index + 1]
    return value[index : index + 1] if value.shape[0] == batch else value


def stack_copies(value: Any, batch: int, copies: int, key: str = "") -> Any:
    """A recorded argument for ``copies`` stacked copies of the batch: tensors with a batch axis repeat along it.

    Containers (tuples, lists, dicts) are walked; M-RoPE ``position_ids``
    (sections, batch, seq) repeat along their second axis.

    Example:
        >>> stack_copies({"mask": torch.ones(2, 5)}, batch=2, copies=3)["mask"].shape
        torch.Size([6, 5])
    """
    if copies == 1:
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(stack_copies(v, batch, copies) for v in value)
    if isinstance(value, dict):
        return {k: stack_copies(v, batch, copies, k) for k, v in value.items()}
    if not isinstance(value, torch.Tensor) or value.ndim < 2:
        return value
    if key == "position_ids" and value.ndim == 3:  # M-RoPE: (sections, batch, seq)
        return value.repeat(1, copies, 1)
    if value.shape[0] == batch:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    return value
