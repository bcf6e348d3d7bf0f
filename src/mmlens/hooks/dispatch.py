"""The one dispatcher through which mmlens edits a forward pass.

Each module gets at most one forward pre-hook and one forward hook from
mmlens, installed on first use and removed with the last callback; every
reader and editor (sites, neuron reads, layer-call recording, mask edits) is
a callback in those two lists. Methods never register raw hooks.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> site = Site("gate", model.decoder_layers[0].mlp.gate_proj, "output")
    >>> with attach(site, lambda x: x * 0):
    ...     _ = model.forward(model.prepare("hi"))
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from mmlens.errors import MmlensError
from mmlens.hooks.sites import Site
from mmlens.models import runtime

Edit = Callable[[torch.Tensor], "torch.Tensor | None"]
CallEdit = Callable[[tuple, dict], "tuple[tuple, dict] | None"]


@contextmanager
def attach(site: Site, edit: Edit) -> Iterator[None]:
    """Apply ``edit`` to the site's value while the block runs; always removed.

    The low-level form of :func:`intervene`: ``site`` may name any module
    (``Site("gate", layer.mlp.gate_proj, "output")``), not only a named site.

    mmlens callbacks on a module run in registration order and *before* any
    other hook, because transformers records hidden states (which vision
    features are read from) with hooks of its own: an edit must land before
    that record is taken.
    """
    if site.transform is not None:
        edit = _read_through(site.transform, edit)
    if site.columns is not None:
        edit = _columns_edit(site.columns, edit)
    if site.reads == "input":
        with attach_call(site.module, _input_hook(edit)):
            yield
    else:
        with attach_output(site.module, _element_edit(site, edit)):
            yield


@contextmanager
def attach_call(module: torch.nn.Module, callback: CallEdit) -> Iterator[None]:
    """Call ``callback(args, kwargs)`` before each call of ``module``; it may return new ``(args, kwargs)``.

    Example:
        >>> seen = []
        >>> with attach_call(model.decoder_layers[0], lambda args, kwargs: seen.append(sorted(kwargs))):
        ...     _ = model.forward(batch)
    """
    with _registered(module, "input", callback):
        yield


@contextmanager
def attach_output(module: torch.nn.Module, callback: Callable[[object], object]) -> Iterator[None]:
    """Call ``callback(output)`` after each call of ``module``; it may return a replacement output.

    Example:
        >>> with attach_output(model.decoder_layers[0], lambda output: None):
        ...     _ = model.forward(batch)
    """
    with _registered(module, "output", callback):
        yield


@contextmanager
def _registered(module: torch.nn.Module, kind: str, callback: Callable) -> Iterator[None]:
    callbacks = _callbacks(module, kind)
    callbacks.append(callback)
    try:
        yield
    finally:
        callbacks.remove(callback)
        if not callbacks:
            module.__dict__["_mmlens_handles"].pop(kind).remove()


def _callbacks(module: torch.nn.Module, kind: str) -> list[Callable]:
    """The module's list of mmlens callbacks of ``kind``, installing its one dispatching hook if needed."""
    lists = module.__dict__.setdefault("_mmlens_callbacks", {"input": [], "output": []})
    handles = module.__dict__.setdefault("_mmlens_handles", {})
    if kind not in handles:
        callbacks = lists[kind]
        if kind == "input":
            handles[kind] = module.register_forward_pre_hook(_input_dispatch(callbacks), with_kwargs=True, prepend=True)
        else:
            handles[kind] = module.register_forward_hook(_output_dispatch(callbacks), prepend=True)
    return lists[kind]


def _input_dispatch(callbacks: list[CallEdit]) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        changed = False
        if hasattr(module, "_hf_hook"):  # accelerate moves inputs after torch's pre-hooks: move them first
            args, kwargs, changed = _to_execution_device(module, args, kwargs)
        for callback in list(callbacks):
            result = callback(args, kwargs)
            if result is not None:
                args, kwargs = result
                changed = True
        return (args, kwargs) if changed else None

    return hook


def _to_execution_device(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict, bool]:
    """Tensor arguments of an accelerate-dispatched ``module`` on its execution device, so that edits see them there."""
    def move(value: object) -> object:
        return runtime.on_device_of(module, value) if isinstance(value, torch.Tensor) else value

    new_args = tuple(move(a) for a in args)
    new_kwargs = {k: move(v) for k, v in kwargs.items()}
    changed = any(a is not b for a, b in zip(new_args, args)) or any(new_kwargs[k] is not v for k, v in kwargs.items())
    return new_args, new_kwargs, changed


def _output_dispatch(callbacks: list[Callable]) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
        changed = False
        for callback in list(callbacks):
            result = callback(output)
            if result is not None:
                output = result
                changed = True
        return output if changed else None

    return hook


def _read_through(transform: Callable[[torch.Tensor], torch.Tensor], edit: Edit) -> Edit:
    """A read-only edit of ``transform(value)``: what it returns is ignored."""

    def read(value: torch.Tensor) -> None:
        edit(transform(value))
        return None

    return read


def _columns_edit(columns: slice, edit: Edit) -> Edit:
    """An edit of ``value[..., columns]`` (one head) lifted to the whole value; the other columns pass through."""

    def apply(value: torch.Tensor) -> torch.Tensor | None:
        part = value[..., columns]  # a view: in-place edits land in ``value``
        new = edit(part)
        if new is None and not part.requires_grad:
            return None
        # Rebuilt around the head's tensor, so that a gradient recorded on it flows through the projection.
        return torch.cat([value[..., :columns.start], part if new is None else new, value[..., columns.stop:]], -1)

    return apply


def _input_hook(edit: Edit) -> CallEdit:
    def hook(args: tuple, kwargs: dict) -> tuple | None:
        if args:
            new = edit(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        new = edit(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return hook


def _element_edit(site: Site, edit: Edit) -> Callable[[object], object]:
    """Lift an edit of one tensor to a module output (a tensor, a tuple, or a ModelOutput)."""
    if site.reads == "probs":
        def probs(output: object) -> object:
            new = edit(runtime.attention_probabilities(output, site.name))
            return None if new is None else runtime.with_probabilities(output, new)

        return probs

    def apply(output: object) -> object:
        if isinstance(output, torch.Tensor):
            return edit(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            new = edit(output[0])
            return None if new is None else (new, *output[1:])
        if isinstance(getattr(output, site.field, None), torch.Tensor):  # a ModelOutput
            new = edit(getattr(output, site.field))
            if new is not None:
                output[site.field] = new  # ModelOutput keeps attribute and key in step
                return output
            return None
        raise MmlensError(f"{site.name}: cannot read a tensor from a {type(output).__name__}")

    return apply
