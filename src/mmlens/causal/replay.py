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
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from mmlens.hooks import Edit, intervene
from mmlens.model import Batch, Model


@dataclass
class LayerReplay:
    """Per decoder layer: its input hidden state ``inputs[i]`` and other arguments; ``inputs[n]`` is the last output."""

    model: Model
    inputs: list[torch.Tensor]  # n_layers + 1 tensors of (batch, seq, hidden)
    args: list[tuple]  # positional arguments after the hidden state
    kwargs: list[dict[str, Any]]
    positional: list[bool]  # whether the hidden state came as the first positional argument

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    def logits(self, start: int, hidden: torch.Tensor, positions: Sequence[int] = (-1,)) -> torch.Tensor:
        """Run layers ``start ..`` on ``hidden`` (``copies x batch`` rows), then norm and unembedding at ``positions``.

        ``start`` may equal the number of layers: only the norm and unembedding run.
        """
        copies, remainder = divmod(hidden.shape[0], self.batch_size)
        if remainder:
            raise ValueError(f"{hidden.shape[0]} rows is not a multiple of the batch size {self.batch_size}")
        layers = self.model.decoder_layers
        for index in range(start, len(layers)):
            args = tuple(_stack(value, self.batch_size, copies) for value in self.args[index])
            kwargs = {key: _stack(value, self.batch_size, copies) for key, value in self.kwargs[index].items()}
            if self.positional[index]:
                output = layers[index](hidden, *args, **kwargs)
            else:
                output = layers[index](*args, **{**kwargs, "hidden_states": hidden})
            hidden = output[0] if isinstance(output, tuple) else output
        picked = hidden[:, torch.as_tensor(list(positions), device=hidden.device)]
        norm = self.model.module(self.model.adapter.final_norm)
        return self.model.module(self.model.adapter.unembed)(norm(picked))


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

    def keep_input(index: int):
        def hook(module: torch.nn.Module, a: tuple, k: dict) -> None:
            if a:
                inputs[index], args[index], positional[index] = a[0].detach(), a[1:], True
                kwargs[index] = dict(k)
            else:
                inputs[index], positional[index] = k["hidden_states"].detach(), False
                kwargs[index] = {key: v for key, v in k.items() if key != "hidden_states"}
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
    return LayerReplay(model, inputs, args, kwargs, positional)


def _stack(value: Any, batch: int, copies: int) -> Any:
    """A layer argument for ``copies`` stacked copies of the batch: tensors with a batch axis repeat along it."""
    if copies == 1:
        return value
    if isinstance(value, tuple):
        return tuple(_stack(v, batch, copies) for v in value)
    if isinstance(value, list):
        return [_stack(v, batch, copies) for v in value]
    if isinstance(value, dict):
        return {k: _stack(v, batch, copies) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    return value
