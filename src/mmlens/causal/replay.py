"""Resume a recorded language-model call at any decoder layer, for stacks of batch copies.

A patch at layer ``L`` leaves every layer below ``L`` as it was, so a patched
run only needs layers ``L`` and above. :func:`record_layers` runs the model
once and keeps what each decoder layer received: its
input hidden state and its other arguments (attention mask, rotary position
embeddings, ...), exactly as the family's own decoder built them.
:meth:`LayerReplay.logits` then calls the real layer modules from ``start`` on
(hooks and ``intervene`` edits fire as usual), followed by the final norm and
the unembedding. Nothing about an architecture is re-implemented: the decoder's
loop is ``hidden = layer(hidden, **same_arguments)``, then the final norm.

Example:
    >>> import mmlens, torch
    >>> model = mmlens.load("tiny-llama")
    >>> batch = model.prepare("a red circle")
    >>> replay = record_layers(model, batch)
    >>> full = model.forward(batch).logits[:, -1:]
    >>> torch.allclose(replay.logits(1, replay.inputs[1]), full, atol=1e-5)
    True
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from mmlens.hooks import Edit, intervene
from mmlens.model import Batch, Model
from mmlens.models.decoder import stack_copies


@dataclass
class LayerReplay:
    """Per decoder layer: its input hidden state ``inputs[i]`` and other arguments; ``inputs[n]`` is the last output."""

    model: Model
    inputs: list[torch.Tensor]  # n_layers + 1 tensors of (batch, seq, hidden)
    args: list[tuple]  # positional arguments after the hidden state
    kwargs: list[dict[str, Any]]
    positional: list[bool]  # whether the hidden state came as the first positional argument
    _kv: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    def logits(
        self, start: int, hidden: torch.Tensor, positions: Sequence[int] = (-1,), offset: int = 0
    ) -> torch.Tensor:
        """Run layers ``start ..`` on ``hidden`` (``copies x batch`` rows), then norm and unembedding at ``positions``.

        ``start`` may equal the number of layers: only the norm and unembedding
        run. With ``offset`` > 0, ``hidden`` holds positions ``offset ..`` only:
        the earlier positions are taken as recorded (their keys and values come
        from the recorded run), which is exact when nothing before ``offset``
        changes and :meth:`suffix_allowed` says the mask is causal (call
        :meth:`keys_values` once outside any edits first).
        """
        copies, remainder = divmod(hidden.shape[0], self.batch_size)
        if remainder:
            raise ValueError(f"{hidden.shape[0]} rows is not a multiple of the batch size {self.batch_size}")
        layers = self.model.decoder_layers
        cache = _PrefixCache(self.keys_values(), offset, copies) if offset else None
        for index in range(start, len(layers)):
            args = stack_copies(self.args[index], self.batch_size, copies)
            kwargs = self.kwargs[index] if not offset else self._suffix_kwargs(index, offset, hidden.dtype)
            kwargs = stack_copies(kwargs, self.batch_size, copies)
            if cache is not None:
                kwargs["past_key_values"] = cache
            if self.positional[index]:
                output = layers[index](hidden, *args, **kwargs)
            else:
                output = layers[index](*args, **{**kwargs, "hidden_states": hidden})
            hidden = output[0] if isinstance(output, tuple) else output
        picked = hidden[:, torch.as_tensor(list(positions), device=hidden.device)]
        norm = self.model.module(self.model.adapter.final_norm)
        return self.model.module(self.model.adapter.unembed)(norm(picked))

    def suffix_allowed(self, offset: int) -> bool:
        """Whether positions before ``offset`` never see later ones (a causal mask) and every argument can be cut."""
        seq = self.inputs[0].shape[1]
        if not 0 < offset < seq:
            return False
        for index, kwargs in enumerate(self.kwargs):
            if self.args[index] or any(k not in _CUTTABLE and _has_sequence_axis(v, seq) for k, v in kwargs.items()):
                return False
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor):
                if mask.ndim != 4:
                    return False
                corner = mask[..., :offset, offset:]  # earlier queries, later keys: must all be blocked
                blocked = ~corner if mask.dtype == torch.bool else corner <= torch.finfo(mask.dtype).min / 2
                if not bool(blocked.all()):
                    return False  # a bidirectional prefix (PaliGemma): earlier positions see later ones
        return True

    def _suffix_kwargs(self, index: int, offset: int, dtype: torch.dtype) -> dict[str, Any]:
        """A layer's recorded arguments for queries ``offset ..`` against all keys."""
        seq = self.inputs[0].shape[1]
        out = {}
        for key, value in self.kwargs[index].items():
            if key == "attention_mask":
                device = self.inputs[0].device
                value = _causal_mask(seq, offset, dtype, device) if value is None else value[..., offset:, :]
            elif key == "position_embeddings" and value is not None:
                value = tuple(v[..., offset:, :] for v in value)
            elif key in ("position_ids", "cache_position") and isinstance(value, torch.Tensor):
                value = value[..., offset:]
            elif key in ("past_key_values", "use_cache"):
                continue
            out[key] = value
        return out

    def keys_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's attention keys and values of the recorded run (computed once, by re-running each layer).

        The first call runs the layers: make it outside any ``intervene`` block,
        whose edits would otherwise land in the recorded keys and values.
        """
        if self._kv is None:
            recorder = _KeyValueRecorder()
            layers = self.model.decoder_layers
            with torch.no_grad():
                for index, layer in enumerate(layers):
                    kwargs = {**self.kwargs[index], "past_key_values": recorder}
                    if self.positional[index]:
                        layer(self.inputs[index], *self.args[index], **kwargs)
                    else:
                        layer(*self.args[index], **{**kwargs, "hidden_states": self.inputs[index]})
            self._kv = [recorder.seen[i] for i in range(len(layers))]
        return self._kv


_CUTTABLE = frozenset({"attention_mask", "position_embeddings", "position_ids", "cache_position", "past_key_values"})


class _KeyValueRecorder:
    """Stands in for a transformers cache: keeps each layer's keys and values, returns them unchanged."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        self.seen[layer_idx] = (keys.detach(), values.detach())
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class _PrefixCache:
    """Stands in for a transformers cache: puts the recorded keys and values of positions ``< offset`` first."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], offset: int, copies: int) -> None:
        self.kv, self.offset, self.copies = kv, offset, copies

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        old_keys, old_values = (t[:, :, :self.offset].repeat(self.copies, 1, 1, 1) for t in self.kv[layer_idx])
        return torch.cat([old_keys.to(keys.dtype), keys], 2), torch.cat([old_values.to(values.dtype), values], 2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.offset


def _causal_mask(seq: int, offset: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``(1, 1, seq - offset, seq)`` mask: query ``offset + i`` sees keys ``<= offset + i``."""
    queries = torch.arange(offset, seq, device=device)[:, None]
    keys = torch.arange(seq, device=device)[None]
    mask = torch.zeros(seq - offset, seq, dtype=dtype, device=device)
    return mask.masked_fill(keys > queries, torch.finfo(dtype).min)[None, None]


def _has_sequence_axis(value: Any, seq: int) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_has_sequence_axis(v, seq) for v in value)
    return isinstance(value, torch.Tensor) and seq in value.shape


def record_layers(model: Model, batch: Batch, edits: Mapping[str, Edit] | None = None) -> LayerReplay:
    """Run ``batch`` once (under ``edits``, if any) and keep every decoder layer's inputs and the last output.

    Example:
        >>> replay = record_layers(model, model.prepare("a red circle"))
        >>> len(replay.inputs) == model.n_layers + 1
        True
    """
    layers = model.decoder_layers
    n = len(layers)
    inputs: list[Any] = [None] * (n + 1)
    args: list[tuple] = [()] * n
    kwargs: list[dict[str, Any]] = [{}] * n
    positional = [True] * n

    recorder = _KeyValueRecorder()

    def keep_input(index: int):
        def hook(module: torch.nn.Module, a: tuple, k: dict) -> tuple | None:
            if a:
                inputs[index], args[index], positional[index] = a[0].detach(), a[1:], True
                kwargs[index] = dict(k)
            else:
                inputs[index], positional[index] = k["hidden_states"].detach(), False
                kwargs[index] = {key: v for key, v in k.items() if key != "hidden_states"}
            if "past_key_values" in k and k["past_key_values"] is None:
                # The layer's keys and values come for free: the recorder returns them unchanged.
                return a, {**k, "past_key_values": recorder}
            return None
        return hook

    def keep_output(module: torch.nn.Module, a: tuple, output: Any) -> None:
        inputs[n] = (output[0] if isinstance(output, tuple) else output).detach()

    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(intervene(model, edits or {}))
        # Registered after the edits, so a layer's recorded input is the edited one.
        for index, layer in enumerate(layers):
            stack.callback(layer.register_forward_pre_hook(keep_input(index), with_kwargs=True).remove)
        stack.callback(layers[n - 1].register_forward_hook(keep_output).remove)
        model.forward(batch, use_cache=False)
    kv = [recorder.seen[i] for i in range(n)] if len(recorder.seen) == n else None
    return LayerReplay(model, inputs, args, kwargs, positional, kv)
