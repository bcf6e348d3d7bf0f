"""Devices: where a (possibly accelerate-dispatched) module computes, and asking a model for the last logits only."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import torch


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
    # Lazily: listing every parameter first cost ~10 ms per call on a 1 M-parameter model.
    for tensor in itertools.chain(module.parameters(), module.buffers()):
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


def last_logits_only(hf: torch.nn.Module, count: int = 1) -> dict[str, Any]:
    """Keyword arguments that make ``hf`` unembed only its last ``count`` positions (``logits_to_keep``), where it
    takes them; a model that does not returns every position's logits (``mmlens.readout.logits_at`` reads
    chosen positions either way).

    A run that reads a few positions' logits, or none, needs no ``(seq, vocab)`` logits: at 3,000 tokens they
    are 384 MB of fp32 for a 32k vocabulary, 1.8 GB for Qwen2-VL's 152k.

    Example:
        >>> last_logits_only(torch.nn.Linear(2, 2))
        {}
    """
    return {"logits_to_keep": count} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}
