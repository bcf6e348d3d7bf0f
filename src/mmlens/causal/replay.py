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

from mmlens.hooks import Edit, attach_call, attach_output, intervene
from mmlens.model import Batch, Model
from mmlens.models.decoder import stack_copies
from mmlens.models.runtime import KeyValueRecorder, LayerCall, PrefixCache, blocks_later_keys, last_logits_only, on_device_of


@dataclass
class LayerReplay:
    """Per decoder layer its recorded call (``calls[i]``); ``inputs[n]`` is the last layer's output."""

    model: Model
    calls: list[LayerCall]
    output: torch.Tensor  # the last layer's output hidden state
    _kv: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """Every layer's input hidden state, then the last output: ``n_layers + 1`` tensors ``(batch, seq, hidden)``."""
        return [call.hidden for call in self.calls] + [self.output]

    @property
    def batch_size(self) -> int:
        return self.output.shape[0]

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
        cache = PrefixCache(self.keys_values(), offset, copies) if offset else None
        for index in range(start, len(layers)):
            call = self.calls[index]
            kwargs = call.kwargs if not offset else call.suffix_kwargs(offset, hidden.dtype)
            hidden = call.run(layers[index], on_device_of(layers[index], hidden),
                              stack_copies(kwargs, self.batch_size, copies), cache)
        picked = hidden[:, torch.as_tensor(list(positions), device=hidden.device)]
        norm = self.model.module(self.model.adapter.final_norm)
        unembed = self.model.module(self.model.adapter.unembed)
        return unembed(on_device_of(unembed, norm(on_device_of(norm, picked))))

    def suffix_allowed(self, offset: int) -> bool:
        """Whether positions before ``offset`` never see later ones (a causal mask) and every argument can be cut."""
        seq = self.output.shape[1]
        if not 0 < offset < seq:
            return False
        for call in self.calls:
            if any(not call.cuttable(k) and _has_sequence_axis(v, seq) for k, v in call.kwargs.items()):
                return False
            if not blocks_later_keys(call.kwargs.get("attention_mask"), offset):
                return False  # a bidirectional prefix (PaliGemma): earlier positions see later ones
        return True

    def keys_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's attention keys and values of the recorded run (computed once, by re-running each layer).

        The first call runs the layers: make it outside any ``intervene`` block,
        whose edits would otherwise land in the recorded keys and values.
        """
        if self._kv is None:
            recorder = KeyValueRecorder()
            with torch.no_grad():
                for layer, call in zip(self.model.decoder_layers, self.calls):
                    call.run(layer, cache=recorder)
            self._kv = [recorder.seen[i] for i in range(len(self.calls))]
        return self._kv


def _has_sequence_axis(value: Any, seq: int) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_has_sequence_axis(v, seq) for v in value)
    return isinstance(value, torch.Tensor) and seq in value.shape


def record_layers(model: Model, batch: Batch, edits: Mapping[str, Edit] | None = None) -> LayerReplay:
    """Run ``batch`` once (under ``edits``, if any) and keep every decoder layer's call and the last output.

    Example:
        >>> replay = record_layers(model, model.prepare("a red circle"))
        >>> len(replay.inputs) == model.n_layers + 1
        True
    """
    layers = model.decoder_layers
    n = len(layers)
    calls: list[LayerCall | None] = [None] * n
    output: list[torch.Tensor] = []
    recorder = KeyValueRecorder()

    def keep_call(index: int):
        def hook(args: tuple, kwargs: dict) -> tuple | None:
            call = calls[index] = LayerCall.split(layers[index], args, kwargs)
            if call.cache_key is None or call.cache_given:
                return None
            # The layer's keys and values come for free: the recorder returns them unchanged.
            hidden = args[0] if args else kwargs.get("hidden_states", call.hidden)
            return call.arguments(hidden, cache=recorder)
        return hook

    def keep_output(out: Any) -> None:
        output.append((out[0] if isinstance(out, tuple) else out).detach())

    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(intervene(model, edits or {}))
        # Attached after the edits, so a layer's recorded input is the edited one.
        for index, layer in enumerate(layers):
            stack.enter_context(attach_call(layer, keep_call(index)))
        stack.enter_context(attach_output(layers[n - 1], keep_output))
        model.forward(batch, use_cache=False, **last_logits_only(model.hf))
    kv = [recorder.seen[i] for i in range(n)] if len(recorder.seen) == n else None
    return LayerReplay(model, calls, output[-1], kv)
